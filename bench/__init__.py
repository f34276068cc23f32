"""foveal.bench: benchmark workloads and the profiling harness (timings only on a GPU).

- `workloads` / workloads.toml: named real layer shapes, and tiny "smoke" ones for a CPU;
- `ops`: one adapter per op (inputs, FLOPs and bytes, foveal / PyTorch / reference calls);
- `harness`: check every output against float64 PyTorch, then time what is right;
- `device`, `environment`: timers, measured ceilings, peak memory; what ran where;
- `report`, `table`, `plot`, `results_page`: the JSON and everything rendered from it;
- `profile`: the autotuner's candidates and the compiled kernels' resources.
"""
