"""Output files and the manifest: formats readable by their own libraries, atomic writes,
resume after an interrupted run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from foveal.clients.outputs import ManifestEntry, OutputStore, write_safetensors


def _layers():
    rng = np.random.default_rng(0)
    return {"conv1": rng.standard_normal((2, 3, 4)).astype(np.float32),
            "energy": rng.standard_normal((5,)).astype(np.float16)}


def test_safetensors_is_readable_by_the_safetensors_library(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    layers = _layers()
    write_safetensors(tmp_path / "a.safetensors", layers, {"model": "gabor"})
    loaded = safetensors_numpy.load_file(str(tmp_path / "a.safetensors"))
    assert set(loaded) == set(layers)
    for name, array in layers.items():
        assert loaded[name].dtype == array.dtype
        assert np.array_equal(loaded[name], array)


@pytest.mark.parametrize("fmt", ["npy", "safetensors"])
def test_write_one_output_per_input(tmp_path, fmt):
    store = OutputStore(tmp_path / "out", fmt)
    source = tmp_path / "clip one.mp4"
    path = store.write(source, _layers(), timestamps=np.array([0.0, 0.5]))
    assert path == store.output_path(source) and path.exists()
    if fmt == "npy":
        assert np.array_equal(np.load(path / "conv1.npy"), _layers()["conv1"])
        assert np.array_equal(np.load(path / "timestamps.npy"), [0.0, 0.5])
    else:
        loaded = pytest.importorskip("safetensors.numpy").load_file(str(path))
        assert np.array_equal(loaded["energy"], _layers()["energy"])
    assert not [p for p in path.parent.iterdir() if "partial" in p.name]


def test_same_stem_in_two_folders_does_not_collide(tmp_path):
    store = OutputStore(tmp_path / "out")
    first, second = (store.output_path(tmp_path / folder / "x.mp4") for folder in "ab")
    assert first != second


def test_resume_skips_only_finished_inputs(tmp_path):
    store = OutputStore(tmp_path / "out")
    done, failed, lost = (tmp_path / f"{n}.mp4" for n in ("done", "failed", "lost"))
    store.record(ManifestEntry(str(done), str(store.write(done, _layers())), "ok", "gabor", 0.1))
    store.record(ManifestEntry(str(failed), None, "error", "gabor", 0.1, error="corrupt"))
    lost_output = store.write(lost, _layers())
    store.record(ManifestEntry(str(lost), str(lost_output), "ok", "gabor", 0.1))
    lost_output.joinpath("conv1.npy").unlink()
    lost_output.joinpath("energy.npy").unlink()
    lost_output.rmdir()  # its output vanished since: must be redone
    with open(store.manifest_path, "a") as f:
        f.write('{"input": "/cut/short')  # an interrupted run's last line
    assert OutputStore(tmp_path / "out").finished() == {OutputStore.key(done)}


def test_manifest_lines_are_complete_json(tmp_path):
    store = OutputStore(tmp_path / "out")
    store.record(ManifestEntry("x.png", "y", "ok", "gabor", 1.5, clips=0,
                               shapes={"conv1": [96, 55, 55]}))
    entry = json.loads(store.manifest_path.read_text().splitlines()[0])
    assert entry["shapes"] == {"conv1": [96, 55, 55]} and entry["status"] == "ok"
    assert entry["input"].endswith("x.png")


def test_bad_format_and_reserved_layer_name(tmp_path):
    with pytest.raises(ValueError, match=r"format must be one of \('npy', 'safetensors'\)"):
        OutputStore(tmp_path, "hdf5")
    with pytest.raises(ValueError, match="a layer may not be called 'timestamps'"):
        OutputStore(tmp_path).write(tmp_path / "a.mp4", {"timestamps": np.zeros(1)},
                                    timestamps=np.zeros(1))
