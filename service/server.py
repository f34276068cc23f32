"""The server: pick the backend, load the models, start one gRPC port with every service.

Services on the one port: foveal.v1.FeatureService, inference.GRPCInferenceService (Triton's
KServe v2), grpc.health.v1.Health and server reflection. Prometheus metrics go to a separate
HTTP port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import torch

import foveal.kernels as fk
from foveal.proto import rpc
from foveal.proto.pool import POOL

from . import __version__
from .batcher import DynamicBatcher
from .devices import check_device, check_devices, check_instances
from .feature_service import FeatureServicer
from .health import SERVING, HealthServicer
from .inference_service import InferenceServicer
from .instances import devices_of
from .metrics import Metrics, ModelStats, serve_metrics
from .models.base import ServedModel
from .models.registry import build_model
from .repository import BatchPolicy, ModelConfig, builtin_models, load_repository
from .security import BearerTokenInterceptor, server_credentials
from .state import Served, ServingState

log = logging.getLogger("foveal.service")
MIB = 1024 * 1024
BACKENDS = ("auto", "triton", "torch")
WARMUP_CHOICES = ("auto", "on", "off")
# float8: FP8 convolutions (weights, quantized activations) between float16 activations.
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float8": torch.float16}


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8001
    metrics_port: int | None = 8002            # None: no metrics endpoint
    models_file: str | None = None             # None: the built-in models
    backend: str = "auto"                      # auto | triton | torch
    device: str = "auto"                       # for models whose entry says "auto"
    devices: tuple[str, ...] = ()              # instead of device: instances spread over them
    instances: int | None = None               # per model whose entry says none (None: one
                                               # per device)
    batching: BatchPolicy = field(default_factory=BatchPolicy)
    max_message_bytes: int = 64 * MIB
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token: str | None = None
    grace_seconds: float = 30.0
    reflection: bool = True
    preprocess_threads: int = 4
    warmup: str = "auto"                       # auto (Triton on a GPU) | on | off

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("a client CA (mutual TLS) needs TLS: give a certificate and key")
        if self.warmup not in WARMUP_CHOICES:
            raise ValueError(f"warmup must be one of {WARMUP_CHOICES}, got {self.warmup!r}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, "
                             f"got {self.max_message_bytes}")
        check_device(self.device)
        if self.devices:
            check_devices(self.devices)
            if self.device != "auto":
                raise ValueError("give device or devices, not both")
        if self.instances is not None:
            check_instances(self.instances)

    @property
    def default_devices(self) -> tuple[str, ...]:
        """Where a model whose entry names no device runs its instances."""
        return self.devices or (self.device,)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but this host has no CUDA device")
    return device


def choose_backend(requested: str, device: torch.device) -> tuple[str, str, str]:
    """(kernel preference, what will run, why): Triton on CUDA, PyTorch's ops on CPU."""
    if requested == "auto":
        if device.type == "cuda":
            preference, why = "triton", "CUDA device present"
        else:
            preference, why = "torch", "no CUDA device: PyTorch's ops run the convolutions"
    else:
        preference, why = requested, "--backend"
    with fk.use_backend(preference):
        running = fk.backend_for(device)  # raises BackendUnavailable with advice
    return preference, running, why


def check_precision(config: ModelConfig, device: torch.device, preference: str) -> None:
    """Refuse float8 where foveal's FP8 kernels cannot run: a CPU host or PyTorch's ops
    (--backend torch), or a GPU without FP8 tensor cores (compute capability below 8.9)."""
    if config.precision != "float8":
        return
    refusal = f"model {config.name!r}: precision float8 is refused on {device}"
    if device.type != "cuda" or preference == "torch":
        raise ValueError(f"{refusal}: FP8 convolutions run on foveal's Triton kernels on a CUDA "
                         "GPU with compute capability 8.9 or newer (Ada, Hopper), and this "
                         "server runs PyTorch's ops (--backend torch); use float32, float16 or "
                         "bfloat16 here")
    reason = fk.fp8_unavailable(device)
    if reason is not None:
        raise ValueError(f"{refusal}: {reason}; use float16 or bfloat16 on this GPU")


def load_model(config: ModelConfig, device: str, preference: str) -> ServedModel:
    """Build one repository entry on `device`.

    Also used by the clients' in-process mode, so both run exactly the same model.
    """
    device = resolve_device(device)
    check_precision(config, device, preference)
    with fk.use_backend(preference):
        model = build_model(config.name, config.kind, config.input, device,
                            _DTYPES[config.precision], config.weights,
                            architecture=config.architecture, factory=config.factory,
                            options=config.options, fp8=config.precision == "float8")
    model.select_outputs(config.outputs, config.default_outputs)
    return model


def _device_key(device: torch.device) -> torch.device:
    """"cuda" and "cuda:0" are one device (when 0 is the current one)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def load_instances(config: ModelConfig, settings: ServerSettings,
                   preference: str) -> list[ServedModel]:
    """Each instance's model: one loaded per device, shared by the instances placed on it."""
    names = config.instance_devices(settings.default_devices, settings.instances)
    kinds = {resolve_device(d).type if d == "auto" else torch.device(d).type for d in names}
    if len(kinds) > 1:
        raise ValueError(f"model {config.name!r}: its devices mix {sorted(kinds)}; a model's "
                         "instances all run on one kind of device")
    placed = [resolve_device(d) for d in names]
    loaded: dict[torch.device, ServedModel] = {}
    for device in placed:
        key = _device_key(device)
        if key not in loaded:
            loaded[key] = load_model(config, str(key), preference)
    return [loaded[_device_key(d)] for d in placed]


# A model to serve: its instances' models (one model for one instance) and its batching.
GivenModel = tuple[ServedModel | Sequence[ServedModel], BatchPolicy]


class FeatureServer:
    """One gRPC server (both protocols, health, reflection) plus the metrics endpoint.

    `models` lets a caller serve ready-made models (tests), each a model or a list with one
    model per instance; otherwise the repository file or the built-in models are loaded at
    start.
    """

    def __init__(self, settings: ServerSettings, models: list[GivenModel] | None = None):
        self.settings = settings
        self._given_models = models
        self.metrics = Metrics()
        self.state: ServingState | None = None
        self.health: HealthServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_server: asyncio.Server | None = None
        self.port = 0
        self.metrics_port: int | None = None

    def _load_models(self, preference: str) -> list[GivenModel]:
        configs: list[ModelConfig] = (load_repository(self.settings.models_file)
                                      if self.settings.models_file else builtin_models())
        return [(load_instances(config, self.settings, preference),
                 config.batch_policy(self.settings.batching)) for config in configs]

    async def start(self) -> None:
        settings = self.settings
        device = resolve_device(settings.default_devices[0])
        preference, running, why = choose_backend(settings.backend, device)
        log.info("backend", extra={"fields": {"backend": running, "device": str(device),
                                              "reason": why}})
        models = self._given_models or self._load_models(preference)
        served = {}
        for given, policy in models:
            instances = [given] if isinstance(given, ServedModel) else list(given)
            stats = ModelStats()
            batcher = DynamicBatcher(instances, policy, preference, self.metrics, stats)
            model = batcher.model
            served[model.name] = Served(model, batcher, stats)
            for instance in batcher.instances:
                self.metrics.instances.labels(model.name, instance.label,
                                              str(instance.model.device)).set(1)
            log.info("model", extra={"fields": {
                "model": model.name, "kind": model.kind,
                "devices": {str(d): n for d, n in devices_of(instances)},
                "precision": model.precision, "weights": model.weights,
                "outputs": list(model.outputs), **dataclasses.asdict(policy)}})
        self.state = ServingState(served, running, self.metrics, settings.preprocess_threads,
                                  settings.max_message_bytes)
        self.health = HealthServicer([*served, rpc.FEATURE_SERVICE.full_name,
                                      rpc.INFERENCE_SERVICE.full_name])

        interceptors = [BearerTokenInterceptor(settings.auth_token)] if settings.auth_token else []
        options = [("grpc.max_receive_message_length", settings.max_message_bytes),
                   ("grpc.max_send_message_length", settings.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        rpc.add_servicer(server, rpc.FEATURE_SERVICE, FeatureServicer(self.state))
        rpc.add_servicer(server, rpc.INFERENCE_SERVICE, InferenceServicer(self.state))
        rpc.add_servicer(server, rpc.HEALTH_SERVICE, self.health)
        if settings.reflection:
            self._enable_reflection(server)
        address = f"{settings.host}:{settings.port}"
        if settings.tls_cert:
            credentials = server_credentials(settings.tls_cert, settings.tls_key,
                                             settings.tls_client_ca)
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        self._server = server
        for s in served.values():
            s.batcher.start()
        await server.start()
        if settings.warmup == "on" or (settings.warmup == "auto" and running == "triton"):
            await self._warm_up(served)
        if settings.metrics_port is not None:
            self._metrics_server = await serve_metrics(self.metrics, settings.host,
                                                       settings.metrics_port)
            self.metrics_port = self._metrics_server.sockets[0].getsockname()[1]
        self.state.ready = True
        self.health.set_all(SERVING)
        log.info("serving", extra={"fields": {
            "host": settings.host, "port": self.port, "metrics_port": self.metrics_port,
            "tls": bool(settings.tls_cert), "mutual_tls": bool(settings.tls_client_ca),
            "auth_token": bool(settings.auth_token), "models": list(served),
            "version": __version__}})

    async def _warm_up(self, served: dict[str, Served]) -> None:
        """Compile and tune every model's kernels while health still says NOT_SERVING, so no
        request pays Triton's first-launch cost (seconds per layer and batch-size bucket)."""
        loop = asyncio.get_running_loop()
        for name, s in served.items():
            start = loop.time()
            sizes = await s.batcher.warm_up()
            log.info("warm-up", extra={"fields": {"model": name, "batch_sizes": sizes,
                                                  "seconds": round(loop.time() - start, 3)}})

    def _enable_reflection(self, server: grpc.aio.Server) -> None:
        try:
            from grpc_reflection.v1alpha import reflection
        except ImportError:
            log.warning("reflection unavailable: install grpcio-reflection to enable it")
            return
        names = [rpc.FEATURE_SERVICE.full_name, rpc.INFERENCE_SERVICE.full_name,
                 rpc.HEALTH_SERVICE.full_name]
        reflection.enable_server_reflection(names, server, pool=POOL)

    async def abort_in_flight(self) -> None:
        """Cancel every call still running (a second signal during the drain)."""
        if self._server is not None:
            await self._server.stop(0)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within `grace` s."""
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("draining", extra={"fields": {"grace_seconds": grace}})
        if self.state is not None:
            self.state.ready = False
        if self.health is not None:
            self.health.shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self.state is not None:
            for served in self.state.served.values():
                await served.batcher.close()
            self.state.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
        log.info("stopped")
