"""`foveal extract` in server and in-process (--local) modes: identical outputs, the manifest,
corrupt inputs, resuming after a run killed mid-way, progress, and usage errors."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clients_helpers import corrupt_video, foveal_cli, load_output
from foveal.clients.cli import main
from foveal.clients.outputs import MANIFEST, OutputStore
from foveal.service.models.base import VIDEO, InputSpec
from foveal.service.models.motion_energy import MotionEnergyModel
from foveal.service.repository import BatchPolicy
from foveal.service.runner import ServerThread
from foveal.service.server import ServerSettings


def manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def outputs_by_input(out) -> dict[str, dict[str, np.ndarray]]:
    return {os.path.basename(e["input"]): load_output(type(out)(e["output"]))
            for e in manifest(out) if e["status"] == "ok"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, videos):
    """The session's three videos and a corrupt one, in a folder."""
    folder = tmp_path_factory.mktemp("inputs")
    for video in videos:
        shutil.copy(video, folder / video.name)
    corrupt_video(folder / "broken.mkv")
    return folder


def test_server_and_local_modes_write_identical_features(inputs, server, models_file,
                                                          tmp_path, capsys, caplog):
    by_server, local = tmp_path / "server", tmp_path / "local"
    code = main(["extract", str(inputs), "--model", "motion", "--server", server.address,
                 "--out", str(by_server), "--stride", "4", "--jobs", "2"])
    printed = capsys.readouterr()
    assert code == 1  # one input failed
    assert "motion (server 127.0.0.1:" in printed.out
    assert "4 inputs: 3 extracted, 0 already done, 1 failed" in printed.out
    assert "failed: " in printed.out and "broken.mkv: VideoReadError" in printed.out
    assert any(r.levelname == "WARNING" and "skipped" in r.getMessage()
               and "broken.mkv" in r.getMessage() for r in caplog.records)
    code = main(["extract", str(inputs), "--model", "motion", "--local", "--models",
                 str(models_file), "--backend", "torch", "--out", str(local), "--stride", "4"])
    assert code == 1 and "(local, torch on cpu)" in capsys.readouterr().out

    served, computed = outputs_by_input(by_server), outputs_by_input(local)
    assert sorted(served) == sorted(computed) == ["grating.mp4", "index.mp4", "square.mkv"]
    clip_counts = {"grating.mp4": 6, "square.mkv": 9, "index.mp4": 5}  # (frames - 8) // 4 + 1
    for name, layers in served.items():
        assert layers["energy"].shape == (clip_counts[name], 16, 2, 4, 4)
        assert layers["timestamps"].shape == (clip_counts[name], 8)
        np.testing.assert_allclose(layers["timestamps"][1], np.arange(4, 12) / 25)
        for layer in ("energy", "timestamps"):
            np.testing.assert_array_equal(layers[layer], computed[name][layer])
    entries = {os.path.basename(e["input"]): e for e in manifest(by_server)}
    assert entries["square.mkv"]["clips"] == 9
    assert entries["square.mkv"]["shapes"] == {"energy": [9, 16, 2, 4, 4]}
    assert entries["square.mkv"]["model"] == "motion" and entries["square.mkv"]["seconds"] > 0
    broken = entries["broken.mkv"]
    assert broken["status"] == "error" and broken["output"] is None
    assert "truncated or corrupt" in broken["error"] and broken["clips"] > 0
    assert not [p for p in by_server.iterdir() if p.name.startswith("broken")]


def _png(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_images_from_a_list_file_to_safetensors(server, models_file, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.png").write_bytes(_png(1, (32, 32)))
    (folder / "nested" / "b.png").write_bytes(_png(2, (40, 36)))  # resized by the model
    (folder / "notes.md").write_text("not an input")
    (folder / "c.png").write_bytes(b"\x89PNG but not really")
    listing = tmp_path / "inputs.txt"
    listing.write_text("# inputs\nimages/a.png\n\nimages/nested\nimages/c.png\n")
    runs = {}
    for mode in (["--server", server.address], ["--local", "--models", str(models_file)]):
        out = tmp_path / mode[0].strip("-")
        code = main(["extract", str(listing), "--model", "gabor", *mode, "--out", str(out),
                     "--format", "safetensors", "--outputs", "simple,energy"])
        assert code == 1
        runs[mode[0]] = outputs_by_input(out)
        errors = [e for e in manifest(out) if e["status"] == "error"]
        assert [os.path.basename(e["input"]) for e in errors] == ["c.png"]
        assert "corrupt image data" in errors[0]["error"] or "not a decodable" in \
            errors[0]["error"]
    capsys.readouterr()
    assert sorted(runs["--server"]) == ["a.png", "b.png"]
    for name, layers in runs["--server"].items():
        assert set(layers) == {"simple", "energy"} and layers["simple"].shape == (96, 6, 6)
        for layer, array in layers.items():
            np.testing.assert_array_equal(array, runs["--local"][name][layer])


class SlowMotionEnergy(MotionEnergyModel):
    """Motion energy that takes a while per batch, so a run can be killed half-way."""

    def forward(self, batch, outputs):
        time.sleep(0.15)
        return super().forward(batch, outputs)


@pytest.fixture
def slow_server():
    spec = InputSpec(kind=VIDEO, height=24, width=24, frames=8)
    model = SlowMotionEnergy("slow", spec, torch.device("cpu"), torch.float32)
    server = ServerThread(ServerSettings(port=0, metrics_port=None, backend="torch"),
                          [(model, BatchPolicy(max_batch_size=4, max_queue_delay_ms=1))])
    server.start()
    yield server
    server.stop(grace=0.5)


def test_resume_after_a_run_killed_half_way(slow_server, videos, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(8):
        shutil.copy(videos[i % 3], folder / f"v{i}{videos[i % 3].suffix}")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "foveal.clients.cli", "extract", str(folder), "--model",
               "slow", "--server", slow_server.address, "--out", str(out), "--jobs", "1",
               "--format", "safetensors"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / MANIFEST).exists() or len(manifest(out)) < 3:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    before = manifest(out)
    assert 3 <= len(before) < 8 and all(e["status"] == "ok" for e in before)
    finished_at = {e["input"]: os.stat(e["output"]).st_mtime_ns for e in before}
    for output in out.glob("[!.]*.safetensors"):  # whatever looks finished is complete
        assert load_output(output)["energy"].shape[1:] == (16, 2, 4, 4)

    result = foveal_cli("extract", folder, "--model", "slow", "--server", slow_server.address,
                        "--out", out, "--jobs", "2", "--format", "safetensors")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"8 inputs: {8 - len(before)} extracted, {len(before)} already done, 0 failed" \
        in result.stdout
    after = manifest(out)
    assert len(after) == 8 and len({e["input"] for e in after}) == 8  # nothing redone
    for source, mtime in finished_at.items():
        assert os.stat(OutputStore(out, "safetensors").output_path(source)).st_mtime_ns == mtime
    assert not [p.name for p in out.iterdir() if "partial" in p.name]
    assert len(list(out.glob("*.safetensors"))) == 8


def test_progress_line_on_request_and_quiet_in_pipes(server, videos, tmp_path):
    common = ["extract", videos[0], "--model", "motion", "--server", server.address]
    quiet = foveal_cli(*common, "--out", tmp_path / "a")
    assert quiet.returncode == 0, quiet.stderr
    assert "clips/s" not in quiet.stderr and "\r" not in quiet.stderr
    assert "1 inputs: 1 extracted" in quiet.stdout and "per clip or image: decode" in quiet.stdout
    shown = foveal_cli(*common, "--out", tmp_path / "b", "--progress")
    assert shown.returncode == 0
    assert "[####" in shown.stderr and "1/1 inputs" in shown.stderr and "ETA" in shown.stderr
    again = foveal_cli(*common, "--out", tmp_path / "b")
    assert again.returncode == 0 and "0 extracted, 1 already done" in again.stdout


@pytest.mark.parametrize("arguments,message", [
    (["--ray-address", "auto"], "--ray-address and --ray-actors need --ray"),
    (["--local", "--tls"], "--tls apply to --server mode only"),
    (["--batch-size", "2"], "--models and --batch-size apply to --local and --ray modes"),
    (["--local", "--ray"], "not allowed with argument"),
    (["--stride", "0"], "must be a positive integer"),
    (["--format", "hdf5"], "invalid choice: 'hdf5'"),
])
def test_usage_errors(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["extract", str(tmp_path), "--model", "motion", "--out", str(tmp_path / "o"),
              *arguments])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("arguments,message", [
    (["--local", "--model", "nope"], "model 'nope' not found among the built-in models"),
    (["--server", "127.0.0.1:1", "--model", "motion"], "UNAVAILABLE"),
    (["--local", "--model", "motion", "--clip-len", "4"], "clip_len must be 8"),
])
def test_set_up_errors_exit_2(arguments, message, models_file, tmp_path, capsys):
    if "--local" in arguments and "nope" not in arguments:
        arguments = [*arguments, "--models", str(models_file)]
    code = main(["extract", str(tmp_path), "--out", str(tmp_path / "o"), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_video_shorter_than_one_clip_is_reported(server, tmp_path, capsys):
    from synthetic_video import drifting_grating, write_video

    short = write_video(tmp_path / "short.mp4", drifting_grating(5, 32, 48), fps=25)
    out = tmp_path / "out"
    assert main(["extract", str(short), "--model", "motion", "--server", server.address,
                 "--out", str(out)]) == 1
    (entry,) = manifest(out)
    assert entry["error"] == ("ValueError: no whole clip: the video is shorter than one clip "
                              "of 8 frames")
    capsys.readouterr()


def test_settings_are_checked_against_the_model(server):
    from foveal.clients.client import FoveaClient
    from foveal.clients.extract import ExtractSettings

    spec = FoveaClient(server.address).describe("motion")
    with pytest.raises(ValueError, match=r"unknown output\(s\) \['x'\]"):
        ExtractSettings(outputs=("x",)).resolved(spec)
    assert ExtractSettings().resolved(spec) == dataclasses.replace(
        ExtractSettings(), clip_len=8, stride=8)


def test_local_mode_runs_torchvision_models(tmp_path, capsys):
    """`--local` builds repository models with the server's code: a torchvision kind here."""
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    reference = torchvision.models.resnet18(num_classes=4).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    (tmp_path / "models.toml").write_text(
        '[[models]]\nname = "r18"\nkind = "torchvision"\narchitecture = "resnet18"\n'
        'weights = "w.pt"\noutputs = ["layer2", "fc"]\ninput = { size = [32, 32] }\n')
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    code = main(["extract", str(tmp_path / "a.png"), "--model", "r18", "--local", "--models",
                 str(tmp_path / "models.toml"), "--backend", "torch", "--out",
                 str(tmp_path / "out"), "--outputs", "layer2,fc"])
    assert code == 0, capsys.readouterr().out
    got = outputs_by_input(tmp_path / "out")["a.png"]
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    x = ((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std).unsqueeze(0)
    with torch.no_grad():
        expected = create_feature_extractor(reference, ["layer2", "fc"])(x)
    for layer in ("layer2", "fc"):
        np.testing.assert_allclose(got[layer], expected[layer][0].numpy(), rtol=1e-4, atol=1e-4)
