"""`foveal extract --ray` on a local Ray instance with 2 CPUs: the same
features as the server and in-process modes, errors recorded, finished inputs skipped."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from clients_helpers import corrupt_video, load_output
from foveal.clients.client import FoveaClient
from foveal.clients.extract import ExtractSettings, run_extraction
from foveal.clients.inputs import collect_inputs
from foveal.clients.local import LocalModel
from foveal.clients.outputs import OutputStore
from foveal.clients.video import read_clips

ray = pytest.importorskip("ray", reason="Ray mode is the `ray` extra")

from foveal.clients.ray_pipeline import RayOptions, ray_init, run_ray  # noqa: E402


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance with 2 CPUs (starting Ray takes seconds).

    Two local Ray instances starting at once on one machine can fail to start, so processes
    that need one take turns (a lock file)."""
    with open(os.path.join(tempfile.gettempdir(), "foveal-ray-tests.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert ray_init(RayOptions(num_cpus=2))  # started here, so stopped here
        try:
            yield
        finally:
            ray.shutdown()


def _outputs(store: OutputStore, sources) -> dict[str, dict[str, np.ndarray]]:
    return {os.path.basename(s): load_output(store.output_path(s)) for s in sources}


def _extract_all_ways(model, inputs, server, models_file, tmp_path, settings):
    """Outputs by server, local and Ray modes, with each run's summary."""
    results = {}
    with FoveaClient(server.address) as client:
        spec = client.describe(model)
        sources = collect_inputs([inputs], spec.kind)
        store = OutputStore(tmp_path / "server", "safetensors")
        results["server"] = run_extraction(sources, client, model, store, settings), store
    local = LocalModel(model, models_file, backend="torch")
    store = OutputStore(tmp_path / "local", "safetensors")
    results["local"] = run_extraction(sources, local, model, store, settings), store
    store = OutputStore(tmp_path / "ray", "safetensors")
    results["ray"] = run_ray([inputs], model, store, settings, RayOptions(
        models_file=str(models_file), backend="torch")), store
    return sources, results


def test_ray_mode(ray_instance, videos, server, models_file, tmp_path, capsys):
    """One test, so that pytest-xdist runs all of Ray mode in one worker on one Ray."""
    _check_videos(videos, server, models_file, tmp_path / "videos")
    _check_images(server, models_file, tmp_path / "images")
    _check_command_line(videos, models_file, tmp_path / "cli", capsys)


def _check_videos(videos, server, models_file, tmp_path):
    """Ray mode gives the features of the server and in-process modes."""
    folder = tmp_path / "videos"
    folder.mkdir(parents=True)
    for video in videos:
        shutil.copy(video, folder / video.name)
    corrupt_video(folder / "broken.mkv")
    settings = ExtractSettings(stride=4, outputs=("energy", "opponent"))
    sources, results = _extract_all_ways("motion", folder, server, models_file, tmp_path,
                                         settings)
    good = [s for s in sources if s.name != "broken.mkv"]
    reference = _outputs(results["server"][1], good)
    for mode in ("local", "ray"):
        summary, store = results[mode]
        assert (summary.ok, summary.total, summary.clips) == (3, 4, 20), mode
        assert [os.path.basename(f) for f, _ in summary.failures] == ["broken.mkv"]
        assert "truncated or corrupt" in summary.failures[0][1]
        for name, layers in _outputs(store, good).items():
            assert set(layers) == {"energy", "opponent", "timestamps"}
            for layer, array in layers.items():
                np.testing.assert_array_equal(array, reference[name][layer],
                                              err_msg=f"{mode} {name} {layer}")
    ray_summary, ray_store = results["ray"]
    assert ray_summary.mode == "ray, 1 CPU actor(s)" and ray_summary.exit_code == 1
    assert ray_summary.times.decode_s > 0 and ray_summary.times.compute_s > 0
    assert not (ray_store.directory / "broken-").exists()

    again = run_ray([folder], "motion", ray_store, settings,
                    RayOptions(models_file=str(models_file), backend="torch"))
    assert (again.skipped, again.ok, len(again.failures)) == (3, 0, 1)  # the broken one again


def _check_images(server, models_file, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir(parents=True)
    for i, size in enumerate([(32, 32), (40, 36), (32, 32)]):
        pixels = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        (folder / f"{i}.png").write_bytes(buffer.getvalue())
    (folder / "bad.png").write_bytes(b"nope")
    sources, results = _extract_all_ways("gabor", folder, server, models_file, tmp_path,
                                         ExtractSettings())
    good = [s for s in sources if s.name != "bad.png"]
    reference = _outputs(results["server"][1], good)
    summary, store = results["ray"]
    assert summary.ok == 3 and [os.path.basename(f) for f, _ in summary.failures] == ["bad.png"]
    for name, layers in _outputs(store, good).items():
        np.testing.assert_array_equal(layers["simple"], reference[name]["simple"])


def _check_command_line(videos, models_file, tmp_path, capsys):
    from foveal.clients.cli import main

    out = tmp_path / "out"
    code = main(["extract", str(videos[2]), "--model", "motion", "--ray", "--models",
                 str(models_file), "--backend", "torch", "--ray-actors", "1", "--out",
                 str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "motion (ray, 1 CPU actor(s)): 1 inputs: 1 extracted" in printed
    local = LocalModel("motion", models_file, backend="torch")
    clips = (c.frames for c in read_clips(videos[2], 8, 8, size=(24, 24)))
    expected = [f["energy"] for _, f in local.stream_clips(clips, "motion")]
    written = load_output(OutputStore(out).output_path(videos[2]))
    np.testing.assert_array_equal(written["energy"], np.stack(expected))
    assert ray.is_initialized()  # a Ray it did not start is left running
