"""The gRPC server of one worker process: `GRPCInferenceService` and the standard health service
(`grpc.health.v1.Health`) on `DIGITSERVE_GRPC_PORT`, in the worker's own event loop, so a gRPC
call reaches the same batcher as a REST one.

Every worker listens on the port (SO_REUSEPORT, as the HTTP workers do: serving/workers.py) and
the kernel spreads connections over them. Limits: a message over the REST body limit is refused
by gRPC itself (RESOURCE_EXHAUSTED); 64 streams per connection; calls whose message has arrived
are admitted as REST's are (503: UNAVAILABLE), so a client that opens streams and sends nothing
holds streams, not the server's slots. A connection is closed (GOAWAY, its calls let finish)
after `MAX_CONNECTION_AGE_MS`, so clients spread over new replicas and a stalled stream ends.
The health service says SERVING while every model has a verified version and the server is not
draining. On SIGTERM, as REST's drain does for `SHUTDOWN_GRACE_S`, it says NOT_SERVING and new
inferences are refused UNAVAILABLE (retry elsewhere); then the server stops -- GOAWAY on every
connection -- and lets the calls in flight finish within the graceful-shutdown budget. (Stopping
at the signal itself cancelled calls that had arrived but not yet reached a handler: CANCELLED,
which clients do not retry.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from digitserve.config import Settings
from digitserve.serving.api.v2.oip import server_not_ready
from digitserve.serving.grpc.calls import SERVICE
from digitserve.serving.grpc.service import InferenceService
from digitserve.serving.http.admission import Admission
from digitserve.serving.http.shutdown import Drain
from digitserve.serving.observability.requests import HttpObserver
from digitserve.serving.services import Services

log = logging.getLogger(__name__)
HEALTH_INTERVAL_S = 0.25
STREAMS_PER_CONNECTION = 64
IDLE_CONNECTION_MS = 300_000  # a connection without calls for 5 minutes is closed (GOAWAY)
MAX_CONNECTION_AGE_MS = 120_000  # then GOAWAY: clients reconnect, and spread over new replicas


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """OIP v2 over gRPC for one worker; `start` once the services run, `stop` before they close."""

    def __init__(
        self, settings: Settings, services: Services, admission: Admission, drain: Drain, observer: HttpObserver
    ) -> None:
        assert settings.grpc_port is not None
        self.settings, self.services, self.drain = settings, services, drain
        limits = settings.requests
        grace_ms = int((limits.request_timeout_s + 1) * 1000)  # a call admitted just before it is answered
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", limits.max_body_bytes),
                ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
                ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", grace_ms),
            ],
        )
        self.server.add_generic_rpc_handlers((InferenceService(services, admission, drain, observer).handlers(),))
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(address(settings.host, settings.grpc_port))
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._set_health()
        await self.server.start()
        self._watch = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        log.info("gRPC (Open Inference Protocol) on %s", address(self.settings.host, self.port))

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (GOAWAY) and let those in flight finish within `grace_s`."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def _set_health(self) -> None:
        ready = server_not_ready(self.services.versions, self.drain) is None
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def _follow_readiness(self) -> None:
        while True:  # after SIGTERM: NOT_SERVING, as /readyz turns 503, until the lifespan stops us
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._set_health()
