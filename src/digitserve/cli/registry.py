"""`digitserve registry ...`: list, show, promote (through the gate), rollback, history.

Every command takes `--registry URI` (default: `$DIGITSERVE_REGISTRY`, else the repo's
`registry/`). Failures raise `RegistryError`; `digitserve.cli.main` prints them as one line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from digitserve.cli.rollout import add_evidence_arguments, add_rollout_commands, evidence_limits
from digitserve.config import GATE_THRESHOLD_PREFIX
from digitserve.gate import (
    DEFAULT_THRESHOLDS,
    MAX_REGRESSION,
    Promotion,
    TrustLimits,
    promote,
    promote_from,
    promote_newest_passing,
)
from digitserve.registry import ModelRegistry, NotFoundError, RegistryError


def open_registry(args: argparse.Namespace) -> ModelRegistry:
    return ModelRegistry.open(args.registry)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cmd_list(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    if args.model is None:
        rows = [["model", "versions", "latest", "aliases"]]
        for model in registry.list_models():
            versions = registry.list_versions(model)
            aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(registry.list_aliases(model).items()))
            rows.append([model, str(len(versions)), f"v{versions[-1]}" if versions else "-", aliases])
        print(_table(rows) if len(rows) > 1 else f"no models in {registry.uri}")
        return 0
    versions = registry.list_versions(args.model)
    if not versions:
        raise NotFoundError(f"model {args.model!r} has no versions in {registry.uri}")
    by_version = registry.aliases_by_version(args.model)
    rows = [["version", "accuracy", "split", "architecture", "artifacts", "created_at", "aliases"]]
    for version in versions:
        manifest = registry.manifest(args.model, version)
        accuracy = f"{manifest.accuracy:.4f}" if manifest.accuracy is not None else "-"
        rows.append(
            [
                f"v{version}",
                accuracy,
                str(manifest.metrics.get("split", "-")),
                manifest.architecture,
                "onnx" if manifest.onnx else "weights only",
                manifest.created_at or "-",
                ", ".join(by_version.get(version, [])),
            ]
        )
    print(_table(rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    manifest = registry.manifest(args.model, args.version).to_dict()
    golden = manifest.get("golden")
    if isinstance(golden, dict) and "images_uint8_b64" in golden:
        size = len(golden["images_uint8_b64"])
        manifest["golden"] = {**golden, "images_uint8_b64": f"<{size} base64 characters omitted>"}
    manifest["report"] = registry.list_report(args.model, args.version)
    manifest["aliases"] = registry.aliases_by_version(args.model).get(args.version, [])
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def _describe(promotion: Promotion) -> str:
    where = f"{promotion.model}/{promotion.alias}"
    if not promotion.changed:
        return f"{where} already points to v{promotion.version}; nothing changed"
    was = f"v{promotion.previous}" if promotion.previous is not None else "unset"
    line = f"{where} -> v{promotion.version} (was {was})"
    if promotion.forced:
        return f"{line}: gate bypassed with --force"
    return f"{line}: {promotion.gate.summary()}" if promotion.gate else line


def cmd_promote(args: argparse.Namespace) -> int:
    if sum([args.version is not None, args.best, args.from_alias is not None]) != 1:
        raise RegistryError("promote needs one of VERSION, --best or --from ALIAS")
    if args.best and args.force:
        raise RegistryError("--best lets the gate choose; it cannot be combined with --force")
    registry = open_registry(args)
    limits = TrustLimits.resolve(
        max_ece=args.max_ece,
        max_digits_not_a_digit=args.max_digits_not_a_digit,
        min_negatives_not_a_digit=args.min_negatives_not_a_digit,
    )
    gate: dict[str, Any] = {"threshold": args.threshold, "limits": limits, "max_regression": args.max_regression}
    reason = args.reason or ""
    if args.from_alias is not None:
        promotion, verdict = promote_from(
            registry,
            args.model,
            args.from_alias,
            alias=args.alias,
            evidence_limits=evidence_limits(args),
            force=args.force,
            reason=reason,
            **gate,
        )
        print(verdict.summary())
    elif args.best:
        promotion = promote_newest_passing(registry, args.model, alias=args.alias, reason=reason, **gate)
    else:
        promotion = promote(
            registry, args.model, args.version, alias=args.alias, force=args.force, reason=reason, **gate
        )
    print(_describe(promotion))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    before = registry.get_alias(args.model, args.alias)
    state = registry.rollback(args.model, args.alias, reason=args.reason)
    was = before.version if before else "?"
    print(f"{args.model}/{args.alias} -> v{state.version} (rolled back from v{was})")
    return 0


def _gate_text(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "-"
    if gate.get("forced"):
        return "forced"
    candidate = gate.get("candidate") or {}
    text = f"passed (accuracy {candidate.get('accuracy', 0):.4f}, threshold {gate.get('threshold', 0):.4f}"
    holdout = gate.get("feedback_holdout") or {}
    if holdout.get("samples") and isinstance(holdout.get("candidate"), dict):
        text += f", feedback holdout {holdout['candidate'].get('correct')}/{holdout['samples']}"
    return text + ")"


def cmd_history(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    events = registry.events(args.model, args.alias)
    if not events:
        print(f"alias {args.model}/{args.alias} has not been moved yet")
        return 0
    rows = [["at", "action", "from", "to", "actor", "gate", "reason"]]
    for e in events:
        before = f"v{e['from']}" if e.get("from") is not None else "-"
        rows.append(
            [
                e.get("at", "-"),
                e.get("action", "-"),
                before,
                f"v{e['to']}",
                e.get("actor", "-"),
                _gate_text(e.get("gate")),
                e.get("reason") or "-",
            ]
        )
    print(_table(rows))
    return 0


def _threshold_help() -> str:
    defaults = ", ".join(f"{arch} {value}" for arch, value in DEFAULT_THRESHOLDS.items())
    return f"minimum test accuracy (default: ${GATE_THRESHOLD_PREFIX}<MODEL>, else by architecture: {defaults})"


def add_registry_commands(subparsers: Any) -> None:
    """Add `registry {list,show,promote,rollback,history}` to the `digitserve` parser."""
    registry = subparsers.add_parser("registry", help="list, inspect, promote and roll back model versions")
    sub = registry.add_subparsers(dest="registry_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        metavar="URI",
        default=None,
        help="path, file://... or s3://bucket/prefix (default: $DIGITSERVE_REGISTRY)",
    )
    aliased = argparse.ArgumentParser(add_help=False, parents=[common])
    aliased.add_argument("--alias", default="production", help="alias to move (default: production)")
    _add_read_commands(sub, common)
    _add_promote_command(sub, aliased)
    _add_rollback_history_commands(sub, aliased)
    add_rollout_commands(sub, common)


def _add_read_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("list", parents=[common], help="models, or one model's versions with metrics")
    p.add_argument("model", nargs="?")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("show", parents=[common], help="a version's manifest and report files")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_show)


def _add_promote_command(sub: Any, aliased: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "promote",
        parents=[aliased],
        help="move an alias to a version the gate passes",
        description="Re-evaluates the candidate and the alias's current version on the "
        "MNIST test set; refuses a candidate below the threshold or more than "
        f"{MAX_REGRESSION} below the current version.",
    )
    p.add_argument("model")
    p.add_argument("version", type=int, nargs="?")
    p.add_argument(
        "--best",
        "--newest-passing",
        dest="best",
        action="store_true",
        help="promote the newest version (newer than the alias's) that passes the gate",
    )
    p.add_argument("--threshold", type=float, help=_threshold_help())
    limits = TrustLimits()
    p.add_argument(
        "--max-ece",
        type=float,
        help=f"largest test-set ECE allowed, a fraction (default {limits.max_ece}, or $DIGITSERVE_GATE_MAX_ECE)",
    )
    p.add_argument(
        "--max-digits-not-a-digit",
        type=float,
        help="largest share of MNIST test digits answered 'not a digit' "
        f"(default {limits.max_digits_not_a_digit}, or $DIGITSERVE_GATE_MAX_DIGITS_NOT_A_DIGIT)",
    )
    p.add_argument(
        "--min-negatives-not-a-digit",
        type=float,
        help="smallest share of held-out negatives answered 'not a digit' "
        f"(default {limits.min_negatives_not_a_digit}, or $DIGITSERVE_GATE_MIN_NEGATIVES_NOT_A_DIGIT)",
    )
    p.add_argument(
        "--max-regression",
        type=float,
        help=f"how far below the alias's version the test accuracy may be (default {MAX_REGRESSION}, "
        "or $DIGITSERVE_GATE_MAX_REGRESSION)",
    )
    add_evidence_arguments(p)
    p.add_argument("--force", action="store_true", help="bypass the gate (needs --reason; logged)")
    p.add_argument("--reason", help="why; recorded in the alias and its event log")
    p.set_defaults(func=cmd_promote)


def _add_rollback_history_commands(sub: Any, aliased: argparse.ArgumentParser) -> None:
    p = sub.add_parser("rollback", parents=[aliased], help="move an alias back to its previous version")
    p.add_argument("model")
    p.add_argument("--reason", default="rollback", help="recorded in the event log")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("history", parents=[aliased], help="the alias's moves: who, when, why, gate results")
    p.add_argument("model")
    p.set_defaults(func=cmd_history)
