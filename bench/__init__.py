"""foveal.bench: benchmark workloads and the profiling harness (timings only on a GPU)."""
