"""The `digitserve` command: data, registry, serve and feedback subcommands.

Importing this module imports no torch and no server: each subcommand imports what it needs
when it runs, so `digitserve --help` is instant.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from digitserve.cli_feedback import add_feedback_commands
from digitserve.cli_registry import add_registry_commands
from digitserve.config import Settings, data_dir
from digitserve.data import DataError, fetch
from digitserve.registry import RegistryError


def cmd_data_fetch(args: argparse.Namespace) -> int:
    path = fetch(args.data_dir)
    print(f"MNIST (60000 train / 10000 test, verified) is in {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server with uvicorn; settings come from DIGITSERVE_* variables, flags override."""
    import uvicorn

    from digitserve.serving.app import create_app
    from digitserve.serving.connections import ConnectionLimits, LimitedHttpProtocol
    from digitserve.serving.workers import prepare_workers, worker_count

    settings = Settings()
    # uvicorn re-raises the SIGTERM/SIGINT it handled once it has shut down cleanly; with this
    # no-op as the "original" handler, that re-raise is a no-op and a clean stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    host, port = args.host or settings.host, args.port if args.port is not None else settings.port
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "timeout_keep_alive": settings.keep_alive_s,
        "http": LimitedHttpProtocol,
    }
    LimitedHttpProtocol.limits = ConnectionLimits.from_settings(settings)
    workers = worker_count(args.workers or settings.workers)
    if workers > 1:
        with prepare_workers(settings, workers):  # shared metrics folder and reload requests
            uvicorn.run("digitserve.serving.app:app_from_env", factory=True, workers=workers, **common)
        return 0
    uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitserve", description="Handwritten-digit recognition service")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="MNIST data").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("fetch", help="fetch and verify MNIST into the cache")
    p.add_argument(
        "--data-dir", type=Path, default=None, help=f"cache folder (default: $DIGITSERVE_DATA_DIR or {data_dir()})"
    )
    p.set_defaults(func=cmd_data_fetch)

    p = sub.add_parser("serve", help="serve the models (uvicorn)")
    p.add_argument("--host", help="bind address (default: $DIGITSERVE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $DIGITSERVE_PORT or 8000)")
    p.add_argument(
        "--workers",
        help="worker processes: a number, or auto (default: $DIGITSERVE_WORKERS or 1; README -> Performance)",
    )
    p.set_defaults(func=cmd_serve)

    add_registry_commands(sub)
    add_feedback_commands(sub)
    return parser


def run_reporting_errors(command: Callable[[], int]) -> int:
    """Run a command; an expected failure (data, registry) is one 'error: ...' line and exit code 1."""
    try:
        return int(command())
    except (DataError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
