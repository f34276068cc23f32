"""`foveal serve` as a real process: graceful shutdown on signals, --help, configuration."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2 as std_health
from grpc_health.v1 import health_pb2_grpc as std_health_grpc

from foveal.clients.cli import build_parser
from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service import cmd_serve
from service_helpers import raw_image, wait_until

MODELS = """
[[models]]
name = "tiny"
kind = "gabor"
[models.input]
size = [16, 16]
[models.batching]
max_batch_size = 8
max_queue_delay_ms = 1500
"""


def _json_lines(lines) -> list[dict]:
    """The JSON log events among `lines` (anything else on stderr, e.g. a library's warning,
    is not ours to parse)."""
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def _start(tmp_path, *extra: str) -> tuple[subprocess.Popen, int, list[dict]]:
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOVEAL_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "foveal.clients.cli", "serve", "--port", "0", "--metrics-port",
         "0", "--models", str(models), "--backend", "torch", "--grace-s", "20", *extra],
        stderr=subprocess.PIPE, text=True, env=env)
    events = []
    for line in process.stderr:
        events += _json_lines([line])
        if events and events[-1]["event"] == "serving":
            return process, events[-1]["port"], events
    raise AssertionError(f"server exited ({process.wait()}) before serving: {events}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_requests_and_exits_zero(tmp_path, sig):
    process, port, events = _start(tmp_path)
    try:
        assert {e["event"] for e in events} >= {"backend", "model", "serving"}
        assert next(e for e in events if e["event"] == "backend")["backend"] == "torch"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = std_health_grpc.HealthStub(channel).Watch(std_health.HealthCheckRequest(),
                                                              timeout=30)
            statuses = []
            watcher = threading.Thread(target=lambda: statuses.extend(r.status for r in watch))
            watcher.start()
            # waits in the queue for 1.5 s (max_queue_delay_ms) while the signal arrives
            pending = rpc.FeatureServiceStub(channel).ExtractImage.future(pb.ExtractImageRequest(
                model="tiny", images=[raw_image(np.zeros((16, 16, 3), np.uint8))]), timeout=30)
            wait_until(lambda: statuses, timeout=20)
            process.send_signal(sig)
            reply = pending.result()
            assert list(reply.images[0].features[0].tensor.shape) == [96, 2, 2]
            watcher.join(30)
        assert process.wait(30) == 0
        assert statuses == [std_health.HealthCheckResponse.SERVING,
                            std_health.HealthCheckResponse.NOT_SERVING]
        rest = _json_lines(process.stderr)
        assert [e["event"] for e in rest if e["event"] in ("signal", "draining", "stopped")] == [
            "signal", "draining", "stopped"]
    finally:
        process.kill()
        process.wait()


def test_help_documents_every_knob_and_its_environment_variable():
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    text = " ".join(serve.format_help().split())
    for knob in cmd_serve.KNOBS:
        assert f"--{knob.flag}" in text and f"[env {knob.env_name}]" in text, knob.flag
    assert cmd_serve.TOKEN_ENV in text
    for default in ("127.0.0.1", "8001", "8002"):
        assert default in text


def test_flags_win_over_environment_which_wins_over_defaults(monkeypatch):
    monkeypatch.setenv("FOVEAL_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("FOVEAL_PORT", "9001")
    monkeypatch.setenv("FOVEAL_AUTH_TOKEN", "from-env")
    args = build_parser().parse_args(["serve", "--port", "9100"])
    values = cmd_serve.resolve(args)
    assert (values["port"], values["max-batch-size"], values["metrics-port"]) == (9100, 3, 8002)
    settings = cmd_serve.settings_from(values)
    assert settings.batching.max_batch_size == 3 and settings.auth_token == "from-env"
    assert settings.host == "127.0.0.1" and settings.max_message_bytes == 64 * 1024 * 1024


def test_bad_environment_values_are_named(monkeypatch):
    monkeypatch.setenv("FOVEAL_MAX_QUEUE_SIZE", "lots")
    with pytest.raises(SystemExit, match="FOVEAL_MAX_QUEUE_SIZE='lots'"):
        cmd_serve.resolve(build_parser().parse_args(["serve"]))


def test_a_bad_repository_stops_the_server_with_a_message(tmp_path):
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nname = "x"\nkind = "gabor"\nbatch = 3\n')
    result = subprocess.run([sys.executable, "-m", "foveal.clients.cli", "serve", "--port", "0",
                             "--no-metrics", "--models", str(models), "--log-format", "text"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key(s) ['batch']" in result.stderr
