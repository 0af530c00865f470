"""The `digitserve` command: data, registry and serve subcommands."""

from __future__ import annotations

import argparse
import sys

from digitserve.data import DataError, default_data_dir, fetch


def cmd_data_fetch(args: argparse.Namespace) -> int:
    path = fetch(args.data_dir)
    print(f"MNIST (60000 train / 10000 test, verified) is in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitserve", description="Handwritten-digit recognition service")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="MNIST data").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("fetch", help="fetch and verify MNIST into the cache")
    p.add_argument("--data-dir", type=lambda s: __import__("pathlib").Path(s), default=None,
                   help=f"cache folder (default: $DIGITSERVE_DATA_DIR or {default_data_dir()})")
    p.set_defaults(func=cmd_data_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
