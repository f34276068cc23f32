"""Run with Triton's real compiler (no TRITON_INTERPRET), by test_kernel_compare.py: compile one
launch of a smoke workload for sm_90 as a GPU run would, through the JIT function's own cache,
and print as JSON what `loaded_kernels()` reads of it beside the compile check's jobs for the
same launch (one per config its autotuner keeps)."""

from __future__ import annotations

import importlib
import json

from foveal.bench import compilecheck
from foveal.bench import offline_compiler as oc
from foveal.bench.loaded_kernels import loaded_kernels, record_compiles
from foveal.bench.workloads import load_workloads, select


def main() -> None:
    [workload] = select(load_workloads(), names=["smoke.conv2d.bottleneck"])
    arch = oc.ARCHS["sm_90"]
    case = compilecheck.Case(workload, "float16", "inference", arch.name)
    launch = compilecheck.plan_case(case)[0]
    jobs = [{"kernel": launch.kernel, "config": compilecheck.config_dict(config),
             "constexprs": launch.constexprs, "dtypes": ["float16"],
             "specialization": job.specialization} for config, job in launch.candidates]
    first = launch.candidates[0][1]
    kernel = getattr(importlib.import_module(first.module), first.name)
    record_compiles()
    with oc.targeting(arch):
        oc.jit_function(kernel).preload(first.specialization)
    print(json.dumps({"jobs": jobs, "loaded": loaded_kernels()}))


if __name__ == "__main__":
    main()
