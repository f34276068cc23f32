"""Keep a `make gpu-check` run (the folder its $OUT came back in) under bench/results/:

    python -m foveal.bench.gpu_check keep DIR

Each benchmark result file becomes bench/results/DATE_DEVICE_PHASE.json and the run record
bench/results/gpu-check/DATE_DEVICE.json (naming them, so a later run can resume from it),
then the results page is regenerated. Runs whose timings mean nothing (no GPU) are not kept.
"""

from __future__ import annotations

import re
from pathlib import Path

from .gpu_record import RECORD_NAME, load_previous
from .report import write_json
from .results_page import RECORDS_DIR, RESULTS_DIR
from .results_page import main as regenerate_page


def stem(record: dict) -> str:
    """DATE_DEVICE of a run: its start to the minute and the device name as a file name."""
    env = record["environment"]
    when = env.get("date", "unknown")[:16].replace(":", "")
    device = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("device", "unknown"))).strip("-")
    return f"{when}_{device}"


def keep(directory: Path, results_dir: Path = RESULTS_DIR, page: Path | None = None) -> int:
    path = directory / RECORD_NAME if directory.is_dir() else directory
    previous = load_previous(path)
    record = previous.record
    if not record.get("meaningful"):
        print(f"gpu_check keep: {path} was not measured on a GPU (timings not meaningful): "
              "not kept")
        return 1
    name = stem(record)
    files = {}
    for phase in record.get("files", {}):
        document = previous.document(phase)
        if document is None:
            continue
        target = write_json(document, results_dir / f"{name}_{phase}.json")
        files[phase] = f"../{target.name}"
        print(f"kept {target}")
    kept = write_json({**record, "files": files}, results_dir / RECORDS_DIR / f"{name}.json")
    print(f"kept {kept}")
    return regenerate_page(["--results-dir", str(results_dir)]
                           + (["--readme", str(page)] if page else []))
