"""`foveal serve`: run the feature service until SIGTERM/SIGINT.

Every knob is a flag and an environment variable (FOVEAL_<FLAG>, dashes as underscores); a
flag given on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .devices import parse_devices

ENV_PREFIX = "FOVEAL_"


@dataclass(frozen=True)
class Knob:
    flag: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    env: str | None = None          # default: FOVEAL_<FLAG>

    @property
    def env_name(self) -> str:
        return self.env or ENV_PREFIX + self.flag.upper().replace("-", "_")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free port), got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _devices(text: str) -> tuple[str, ...]:
    try:
        return parse_devices(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


KNOBS = (
    Knob("host", "127.0.0.1", "address to listen on; 0.0.0.0 exposes the service to the network"),
    Knob("port", 8001, "gRPC port for every service (0: any free port)", _port),
    Knob("metrics-port", 8002, "HTTP port for Prometheus metrics at /metrics (0: any free "
         "port)", _port),
    Knob("no-metrics", False, "serve no metrics endpoint", _flag),
    Knob("models", None, "TOML model repository (default: the built-in gabor and "
         "motion-energy models); see docs/service.md"),
    Knob("backend", "auto", "what runs the convolutions: auto (Triton on CUDA, PyTorch's ops "
         "on a CPU-only host), triton or torch", choices=("auto", "triton", "torch"),
         env="FOVEAL_BACKEND"),
    Knob("device", "auto", "device for models whose entry says auto: auto, cpu, cuda, cuda:N"),
    Knob("devices", None, "instead of --device, several devices (comma-separated, e.g. "
         "cuda:0,cuda:1) for models whose entry names none: their instances are spread over "
         "them (unset: --device)", _devices),
    Knob("instances", None, "instances of each model whose entry says none (unset: one per "
         "device), spread over its devices, each taking batches from the model's queue",
         _positive_int),
    Knob("max-batch-size", 8, "default most items per model execution", _positive_int),
    Knob("max-queue-delay-ms", 2.0, "default time the oldest queued item waits for its batch "
         "to fill", _non_negative),
    Knob("max-queue-size", 256, "default most items waiting per model; beyond it requests "
         "fail at once with RESOURCE_EXHAUSTED", _positive_int),
    Knob("timeout-ms", 30000.0, "default longest a request may spend in the server (a "
         "client's shorter deadline wins)", _positive),
    Knob("max-message-mb", 64.0, "largest gRPC message received or sent, in MiB (video "
         "longer than this streams in chunks)", _positive),
    Knob("tls-cert", None, "PEM certificate chain: serve TLS"),
    Knob("tls-key", None, "PEM private key of --tls-cert"),
    Knob("tls-client-ca", None, "PEM CA: require client certificates it signed (mutual TLS)"),
    Knob("auth-token-file", None, "file holding a bearer token every call but health checks "
         "must send as 'authorization: Bearer <token>' (or set FOVEAL_AUTH_TOKEN)"),
    Knob("grace-s", 30.0, "on SIGTERM/SIGINT, how long in-flight requests may take to "
         "finish", _non_negative),
    Knob("no-reflection", False, "do not serve gRPC server reflection", _flag),
    Knob("preprocess-threads", min(4, os.cpu_count() or 1), "threads decoding and resizing "
         "inputs", _positive_int),
    Knob("warmup", "auto", "before serving, run each model once per power-of-two batch size so "
         "the kernels are compiled and tuned: auto (when Triton runs on a GPU), on or off",
         choices=("auto", "on", "off")),
    Knob("log-format", "json", "log lines as json or text", choices=("json", "text")),
    Knob("log-level", "info", "debug logs every request and batch",
         choices=("debug", "info", "warning", "error")),
)
TOKEN_ENV = "FOVEAL_AUTH_TOKEN"


def _env_default(knob: Knob) -> Any:
    raw = os.environ.get(knob.env_name)
    if raw is None:
        return knob.default
    try:
        value = knob.type(raw)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise SystemExit(f"foveal serve: {knob.env_name}={raw!r}: {err}") from None
    if knob.choices and value not in knob.choices:
        raise SystemExit(f"foveal serve: {knob.env_name} must be one of {knob.choices}, "
                         f"got {raw!r}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run the gRPC feature service",
        description="Serve feature extraction over gRPC: foveal.v1.FeatureService and Triton's "
                    "KServe v2 protocol (inference.GRPCInferenceService) on one port, with "
                    "grpc.health.v1 health, server reflection and Prometheus metrics. Every "
                    "flag can also be set by the environment variable named in its help; "
                    f"the bearer token by {TOKEN_ENV}. Stops gracefully on SIGTERM/SIGINT.",
    )
    for knob in KNOBS:
        name = "--" + knob.flag
        env = f" [env {knob.env_name}]"
        if knob.type is _flag:
            p.add_argument(name, action="store_true", default=None, help=knob.help + env)
        else:
            p.add_argument(name, type=knob.type, choices=knob.choices, default=None,
                           metavar=None if knob.choices else knob.flag.split("-")[-1].upper(),
                           help=f"{knob.help} (default: {knob.default}){env}")
    p.set_defaults(func=run)


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Each knob's value: the flag if given, else its environment variable, else the default."""
    values = {}
    for knob in KNOBS:
        given = getattr(args, knob.flag.replace("-", "_"))
        values[knob.flag] = given if given is not None else _env_default(knob)
    return values


def settings_from(values: dict[str, Any]):
    from .repository import BatchPolicy
    from .server import MIB, ServerSettings

    token = os.environ.get(TOKEN_ENV)
    if values["auth-token-file"]:
        try:
            with open(values["auth-token-file"]) as f:
                token = f.read().strip()
        except OSError as err:
            raise SystemExit(f"foveal serve: cannot read --auth-token-file: {err}") from None
        if not token:
            raise SystemExit("foveal serve: --auth-token-file is empty")
    return ServerSettings(
        host=values["host"], port=values["port"],
        metrics_port=None if values["no-metrics"] else values["metrics-port"],
        models_file=values["models"], backend=values["backend"], device=values["device"],
        devices=values["devices"] or (), instances=values["instances"],
        batching=BatchPolicy(max_batch_size=values["max-batch-size"],
                             max_queue_delay_ms=values["max-queue-delay-ms"],
                             max_queue_size=values["max-queue-size"],
                             timeout_ms=values["timeout-ms"]),
        max_message_bytes=int(values["max-message-mb"] * MIB),
        tls_cert=values["tls-cert"], tls_key=values["tls-key"],
        tls_client_ca=values["tls-client-ca"], auth_token=token or None,
        grace_seconds=values["grace-s"], reflection=not values["no-reflection"],
        preprocess_threads=values["preprocess-threads"], warmup=values["warmup"])


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys

    values = resolve(args)
    from .logs import configure_logging

    configure_logging(values["log-format"], values["log-level"])
    from foveal.kernels import BackendUnavailable

    from .runner import serve_until_signalled
    from .server import FeatureServer

    try:
        settings = settings_from(values)
        asyncio.run(serve_until_signalled(FeatureServer(settings)))
    except (ValueError, OSError, BackendUnavailable) as err:
        logging.getLogger("foveal.service").error("cannot serve", extra={"fields": {
            "error": str(err)}})
        print(f"foveal serve: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
