"""`digitserve registry ...` for rollouts: the live evidence, waiting for it, retiring a canary, and the
inputs a candidate answered differently from production (docs/rollouts.md).

    digitserve registry promote MODEL --from canary     (in cli_registry: the gate, after the evidence)
    digitserve registry watch MODEL [--alias canary] [--timeout S]     wait for enough evidence
    digitserve registry retire MODEL [--alias canary] --reason TEXT    stop a canary by hand
    digitserve registry disagreements MODEL [--export DIR]             the disagreeing inputs kept
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from digitserve.gate import EvidenceLimits, GateRefusedError, judge_evidence
from digitserve.imaging.encode import png_bytes
from digitserve.registry import ModelRegistry, RegistryError
from digitserve.registry.records import check_model_name


def add_evidence_arguments(p: argparse.ArgumentParser) -> None:
    defaults = EvidenceLimits()
    p.add_argument(
        "--from",
        dest="from_alias",
        metavar="ALIAS",
        help="promote the version ALIAS (a canary) names, once its live evidence holds (then the gate runs as usual)",
    )
    p.add_argument(
        "--min-compared",
        type=int,
        default=defaults.min_compared,
        help=f"with --from/watch: compared inputs needed (default {defaults.min_compared})",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=defaults.min_agreement,
        help=f"with --from/watch: agreement with production needed (default {defaults.min_agreement})",
    )
    p.add_argument(
        "--min-clients",
        type=int,
        default=defaults.min_clients,
        help=f"with --from/watch: client networks among the compared inputs (default {defaults.min_clients})",
    )
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=defaults.max_error_rate,
        help=f"with --from/watch: largest canary error rate (default {defaults.max_error_rate})",
    )


def evidence_limits(args: argparse.Namespace) -> EvidenceLimits:
    if args.min_compared < 1 or args.min_clients < 1:
        raise RegistryError("--min-compared and --min-clients must be at least 1")
    if not 0 <= args.min_agreement <= 1 or not 0 <= args.max_error_rate <= 1:
        raise RegistryError("--min-agreement and --max-error-rate are fractions")
    return EvidenceLimits(args.min_compared, args.min_agreement, args.max_error_rate, args.min_clients)


def cmd_watch(args: argparse.Namespace) -> int:
    """Wait until the canary has enough evidence (exit 0), or it is rolled back or time runs out (exit 1)."""
    registry = ModelRegistry.open(args.registry)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            verdict = judge_evidence(registry, args.model, args.alias, args.production, evidence_limits(args))
        except GateRefusedError as exc:  # retired (rolled back), or production's version, or older than it
            raise RegistryError(f"{exc}; nothing to watch") from None
        print(verdict.summary(), flush=True)
        if verdict.ready:
            return 0
        if verdict.rolled_back:
            raise RegistryError(f"{args.model}/{args.alias} v{verdict.version} was rolled back by a server")
        if time.monotonic() >= deadline:
            raise RegistryError(f"not enough evidence after {args.timeout:g} s: {'; '.join(verdict.refusals)}")
        time.sleep(min(args.interval, max(deadline - time.monotonic(), 0)))


def cmd_retire(args: argparse.Namespace) -> int:
    """Move a rollout alias to production's version: every server stops routing to it at its next poll."""
    registry = ModelRegistry.open(args.registry)
    state = registry.get_alias(args.model, args.alias)
    production = registry.resolve_alias(args.model, args.production)
    if state is None or state.retired:
        print(f"{args.model}/{args.alias} is not routing anything; nothing to retire")
        return 0
    registry.move_alias(
        args.model, args.alias, production, reason=args.reason, expected=state, action="retire", retire=True
    )
    print(f"{args.model}/{args.alias} -> v{production} ({args.production}'s version; retired v{state.version})")
    return 0


def cmd_disagreements(args: argparse.Namespace) -> int:
    registry = ModelRegistry.open(args.registry)
    prefix = f"disagreements/{check_model_name(args.model)}/"
    keys = registry.store.list(prefix)
    if not keys:
        print(f"no disagreements kept for {args.model} in {registry.uri}")
        return 0
    docs = [json.loads(registry.store.read(key)[0]) for key in keys]
    pairs: dict[str, list[dict[str, Any]]] = {}
    for key, doc in zip(keys, docs, strict=True):
        pairs.setdefault(key.removeprefix(prefix).split("/")[0], []).append(doc)
    for pair, found in sorted(pairs.items()):
        kinds = ", ".join(sorted({str(d.get("kind")) for d in found}))
        print(f"{pair}: {len(found)} inputs ({kinds})")
    if args.export:
        _export(Path(args.export), docs)
        print(f"exported {len(docs)} inputs to {args.export} (disagreements.csv and a PNG each)")
    return 0


def _export(folder: Path, docs: list[dict[str, Any]]) -> None:

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "disagreements.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "kind", "production_version", "candidate_version", "production", "candidate", "at"])
        for i, doc in enumerate(docs):
            pixels = np.frombuffer(base64.b64decode(doc["pixels_uint8_b64"]), np.uint8).reshape(28, 28)
            sides = f"v{doc['production_version']}-{doc['production']}-v{doc['candidate_version']}-{doc['candidate']}"
            name = f"{i:04d}-{sides}.png"
            (folder / name).write_bytes(png_bytes(pixels))
            writer.writerow(
                [
                    name,
                    doc["kind"],
                    doc["production_version"],
                    doc["candidate_version"],
                    doc["production"],
                    doc["candidate"],
                    doc["at"],
                ]
            )


def add_rollout_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `registry {watch,retire,disagreements}`; `common` has --registry."""
    rollout = argparse.ArgumentParser(add_help=False, parents=[common])
    rollout.add_argument("--alias", default="canary", help="the rollout alias (default: canary)")
    rollout.add_argument("--production", default="production", help="the alias the canary is compared with")
    p = sub.add_parser("watch", parents=[rollout], help="wait until a canary has enough live evidence")
    p.add_argument("model")
    add_evidence_arguments(p)
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait at most (default 1800)")
    p.add_argument("--interval", type=float, default=15, help="seconds between looks (default 15)")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("retire", parents=[rollout], help="move a canary alias to production's version")
    p.add_argument("model")
    p.add_argument("--reason", required=True, help="why; recorded in the event log")
    p.set_defaults(func=cmd_retire)
    p = sub.add_parser("disagreements", parents=[common], help="inputs a shadow or canary answered differently")
    p.add_argument("model")
    p.add_argument("--export", metavar="DIR", help="also write a PNG per input and disagreements.csv here")
    p.set_defaults(func=cmd_disagreements)
