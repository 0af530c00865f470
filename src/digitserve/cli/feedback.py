"""`digitserve feedback ...`: review people's corrections before any training uses them.

    digitserve feedback list [--state pending]      one line per sample, newest first
    digitserve feedback show ID                     the sample, its decisions, and the digit in text
    digitserve feedback accept ID [--reason TEXT]   training may use it
    digitserve feedback reject ID [--reason TEXT]   it is never used
    digitserve feedback export DIR [--state all]    a PNG per sample and samples.csv, to look at

An ID is a sample's id or its first 8 or more hex digits. Decisions are events (who, when,
why) kept beside the sample, like alias moves; the latest one is the sample's state.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from digitserve.config import actor
from digitserve.imaging.encode import png_bytes
from digitserve.registry import ModelRegistry
from digitserve.registry.feedback import FeedbackError, FeedbackSample, FeedbackStore, label_token

SHADES = " .:-=+*#%@"


def open_feedback(args: argparse.Namespace) -> FeedbackStore:
    return FeedbackStore(ModelRegistry.open(args.registry).store)


def _samples(store: FeedbackStore, state: str, limit: int | None = None) -> list[tuple[FeedbackSample, str]]:
    """(sample, state) for the samples in `state` ("all": every one), newest first (by when the
    registry stored them), at most `limit`: only those are read. A damaged sample is named on
    stderr and left out (`reject ID` still works on it)."""
    states = store.states()
    ids = [sid for sid in store.ids_newest_first() if state in ("all", states.get(sid, "pending"))]
    found: list[tuple[FeedbackSample, str]] = []
    for start in range(0, len(ids), limit or len(ids) or 1):
        samples, damaged = store.readable(ids[start : start + (limit or len(ids))])
        for sid in damaged:
            print(f"warning: feedback sample {sid[:12]} is damaged and left out", file=sys.stderr)
        found += [(s, states.get(s.id, "pending")) for s in samples]
        if limit is not None and len(found) >= limit:
            break
    return found[:limit]


def _line(sample: FeedbackSample, state: str) -> str:
    verdict = "right" if sample.right else "wrong"
    return (
        f"{sample.id[:12]}  {state:<8}  {sample.received_at:<24}  {sample.model} v{sample.version}  "
        f"answered {label_token(sample.predicted)}, label {label_token(sample.label)} ({verdict})"
    )


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise FeedbackError("--limit must be at least 1")
    store = open_feedback(args)
    samples = _samples(store, args.state, args.limit)
    if not samples:
        print(f"no {'' if args.state == 'all' else args.state + ' '}feedback in {store.store.uri}")
        return 0
    for sample, state in samples:
        print(_line(sample, state))
    return 0


def ascii_digit(pixels: np.ndarray) -> str:
    """The 28x28 input as text, so a reviewer can judge the label in a terminal."""
    levels = (pixels.astype(np.int32) * len(SHADES) // 256).clip(0, len(SHADES) - 1)
    return "\n".join("".join(SHADES[v] * 2 for v in row).rstrip() for row in levels)


def cmd_show(args: argparse.Namespace) -> int:
    store = open_feedback(args)
    sample = store.sample(store.resolve(args.id))
    doc: dict[str, Any] = {k: v for k, v in sample.to_dict().items() if k != "pixels_uint8_b64"}
    doc["state"] = store.state(sample.id)
    doc["split"] = sample.split
    doc["reviews"] = [vars(r) for r in store.reviews(sample.id)]
    print(json.dumps(doc, indent=2))
    print(ascii_digit(sample.pixels))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    store = open_feedback(args)
    sid = store.resolve(args.id)
    review = store.review(sid, args.decision, actor(), args.reason or "")
    print(f"{sid[:12]} {review.state} by {review.actor} at {review.at}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = open_feedback(args)
    samples = _samples(store, args.state)
    try:
        _export(Path(args.dir), samples)
    except OSError as exc:
        raise FeedbackError(f"cannot write to {args.dir}: {exc.strerror or exc}") from None
    print(f"exported {len(samples)} samples to {args.dir} (samples.csv and a PNG each)")
    return 0


def _export(folder: Path, samples: list[tuple[FeedbackSample, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["id", "file", "state", "label", "model", "version", "predicted", "right", "split", "received_at"]
    with open(folder / "samples.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for sample, state in samples:
            name = f"{sample.id[:16]}-{label_token(sample.label)}.png"
            (folder / name).write_bytes(png_bytes(sample.pixels))
            writer.writerow(
                [
                    sample.id,
                    name,
                    state,
                    label_token(sample.label),
                    sample.model,
                    sample.version,
                    label_token(sample.predicted),
                    sample.right,
                    sample.split,
                    sample.received_at,
                ]
            )


def add_feedback_commands(subparsers: Any) -> None:
    """Add `feedback {list,show,accept,reject,export}` to the `digitserve` parser."""
    feedback = subparsers.add_parser("feedback", help="review people's corrections (feedback)")
    sub = feedback.add_subparsers(dest="feedback_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry", metavar="URI", help="path, file://... or s3://... (default: $DIGITSERVE_REGISTRY)"
    )
    states = ["pending", "accepted", "rejected", "all"]
    p = sub.add_parser("list", parents=[common], help="one line per sample, newest first")
    p.add_argument("--state", choices=states, default="all", help="only samples in this state (default: all)")
    p.add_argument("--limit", type=int, default=None, help="at most this many lines")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("show", parents=[common], help="one sample: what it corrects, its decisions, the digit")
    p.add_argument("id")
    p.set_defaults(func=cmd_show)
    for decision, help_text in (("accept", "training may use it"), ("reject", "it is never used")):
        p = sub.add_parser(decision, parents=[common], help=f"{decision} a sample: {help_text}")
        p.add_argument("id")
        p.add_argument("--reason", help="why; recorded with the decision")
        p.set_defaults(func=cmd_review, decision=decision)
    p = sub.add_parser("export", parents=[common], help="write a PNG per sample and samples.csv to a folder")
    p.add_argument("dir")
    p.add_argument("--state", choices=states, default="accepted", help="which samples (default: accepted)")
    p.set_defaults(func=cmd_export)
