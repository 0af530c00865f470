"""`digitserve serve`: the server under uvicorn, with the HTTP protocol that enforces the
connection limits (serving/http/protocol.py), one process or a group of workers."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from digitserve.config import SettingError, export_setting, forwarded_allow_ips, load_settings


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server with uvicorn; settings come from DIGITSERVE_* variables, flags override."""
    import uvicorn

    from digitserve.serving.app import create_app
    from digitserve.serving.http.protocol import LimitedHttpProtocol
    from digitserve.serving.observability.logs import logging_config
    from digitserve.serving.workers import DrainingMultiprocess, prepare_workers, worker_count, workers_socket

    if args.host:  # the workers read their settings from the environment (the gRPC server's host too)
        export_setting("host", args.host)
    settings = load_settings()
    workers = worker_count(args.workers or settings.workers)
    # uvicorn re-raises the SIGTERM/SIGINT it handled once it has shut down cleanly; with this
    # no-op as the "original" handler, that re-raise is a no-op and a clean stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    host, port = args.host or settings.host, args.port if args.port is not None else settings.port
    if settings.grpc_port and settings.grpc_port == port:
        raise SettingError(f"DIGITSERVE_GRPC_PORT is {port}, the HTTP port too; give gRPC a port of its own")
    log_config = logging_config(settings.observability, settings.log_level)  # JSON lines, or text on a terminal
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": settings.log_level,
        "log_config": log_config,
        "access_log": False,
        "timeout_graceful_shutdown": settings.http.graceful_shutdown_s,
        "timeout_keep_alive": settings.http.keep_alive_s,
        "http": LimitedHttpProtocol,  # its limits come from each worker's app (its lifespan state)
        # X-Forwarded-For only from the proxies FORWARDED_ALLOW_IPS names (the ALB's subnets on ECS);
        # unset, from none: a client on loopback could otherwise say it is anyone
        "proxy_headers": forwarded_allow_ips() is not None,
        "forwarded_allow_ips": forwarded_allow_ips(),
    }
    if workers > 1:
        with prepare_workers(settings, workers):  # shared metrics folder and reload requests
            config = uvicorn.Config("digitserve.serving.app:app_from_env", factory=True, workers=workers, **common)
            grpc_socket = None
            if settings.grpc_port == 0:  # one free port for every worker: held here, each worker joins it
                grpc_socket = workers_socket(host, 0, "gRPC")
                export_setting("grpc_port", str(grpc_socket.getsockname()[1]))
            # uvicorn.run's, for workers > 1, with a listening socket per worker (SO_REUSEPORT)
            DrainingMultiprocess(config, sockets=[workers_socket(host, port)]).run()
            if grpc_socket is not None:
                grpc_socket.close()
        return 0
    uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()
    return 0
