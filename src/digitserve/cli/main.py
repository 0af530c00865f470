"""The `digitserve` command: data, serve, predict, registry and feedback subcommands.

Importing this module imports no torch and no server: each subcommand imports what it needs
when it runs, so `digitserve --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from digitserve.cli.feedback import add_feedback_commands
from digitserve.cli.predict import add_predict_command
from digitserve.cli.registry import add_registry_commands
from digitserve.cli.serve import cmd_serve
from digitserve.config import data_dir
from digitserve.data import fetch
from digitserve.reporting import run_reporting_errors


def cmd_data_fetch(args: argparse.Namespace) -> int:
    path = fetch(args.data_dir)
    print(f"MNIST (60000 train / 10000 test, verified) is in {path}")
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
    add_predict_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
