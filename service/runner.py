"""Running a FeatureServer: in the foreground until a signal, or in a background thread."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from .models.base import ServedModel
from .repository import BatchPolicy
from .server import FeatureServer, ServerSettings

log = logging.getLogger("foveal.service")


async def serve_until_signalled(server: FeatureServer) -> None:
    """Start; on SIGTERM or SIGINT drain gracefully; a second signal stops without grace."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("signal", extra={"fields": {"signal": sig.name}})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await server.start()
    await stop.wait()
    stop.clear()
    drain = asyncio.ensure_future(server.stop())
    second = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([drain, second], return_when=asyncio.FIRST_COMPLETED)
    if second in done and not drain.done():
        log.warning("second signal: cancelling in-flight requests")
        await server.abort_in_flight()
    second.cancel()
    await drain


class ServerThread:
    """A FeatureServer on its own event loop in a daemon thread (tests, benchmarks).

        with ServerThread(ServerSettings(port=0, metrics_port=0)) as running:
            channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    """

    def __init__(self, settings: ServerSettings,
                 models: list[tuple[ServedModel, BatchPolicy]] | None = None):
        self.server = FeatureServer(settings, models)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="foveal-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def address(self) -> str:
        return f"{self.server.settings.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as err:  # reported by start()
            self._error = err
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def call(self, coroutine, timeout: float | None = None):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, grace: float = 0.0) -> None:
        if not self._thread.is_alive():
            return
        self.call(self.server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
