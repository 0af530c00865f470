"""`digitserve predict FILE...`: ask a running server what digit each file holds (digitserve.client).

    digitserve predict docs/img/seven.png              a table: file, answer, confidence, model and version
    digitserve predict a.png b.jpg --model both --top-k 3
    digitserve predict - < digit.png                   one image from stdin
    digitserve predict *.png --json                    one JSON line per file and model

A refusal is one `error: ...` line on stderr with the server's message and code, and exit status 1;
a refusal of one file (not an image, too large) does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client (httpx, numpy, Pillow) is imported when the command runs
    from digitserve.client import Client, Prediction, PredictResult

MAX_TOP_K = 10  # the server's limit (PredictRequest.top_k)
STDIN = "-"


def add_predict_command(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="ask a running server what digits image files hold",
        description="Send each file to a running server (`digitserve serve`) and print its answer. The models "
        "read MNIST-style digits (white on black); the server crops, centres and inverts a dark digit on light "
        "paper itself, so photos and drawings work as they are.",
    )
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="PNG, JPEG, WebP, BMP, GIF or a 28x28 CSV; - reads one from stdin"
    )
    p.add_argument("--model", default="cnn", help="the model to ask: cnn, vit, or both (default cnn)")
    p.add_argument("--url", help="the server (default: $DIGITSERVE_URL or http://127.0.0.1:8000)")
    p.add_argument("--top-k", type=_top_k, metavar="K", help=f"also list the K likeliest digits (1-{MAX_TOP_K})")
    p.add_argument("--json", action="store_true", help="one JSON line per file and model, instead of a table")
    p.set_defaults(func=cmd_predict)


def _top_k(text: str) -> int:
    k = int(text) if text.isdigit() else 0
    if not 1 <= k <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"K is a whole number from 1 to {MAX_TOP_K}, not {text!r}")
    return k


def cmd_predict(args: argparse.Namespace) -> int:
    from digitserve.client import Client, DigitserveError

    if args.files.count(STDIN) > 1:
        print(f"error: {STDIN} (stdin) can be read once", file=sys.stderr)
        return 1
    rows: list[list[str]] = []
    try:
        with Client(args.url) as client:
            ok = all([_predict_file(client, name, args, rows) for name in args.files])  # each file, come what may
    except DigitserveError as exc:  # not about one file: the server, the model, the connection
        print(f"error: {exc}", file=sys.stderr)
        ok = False
    finally:
        if rows:
            print(_table(_header(args.top_k), rows))
    return 0 if ok else 1


def _predict_file(client: Client, name: str, args: argparse.Namespace, rows: list[list[str]]) -> bool:
    """Ask each model about one file: a JSON line each, or a table row; False when it was refused."""
    from digitserve.client import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError

    try:
        image = sys.stdin.buffer.read() if name == STDIN else Path(name).read_bytes()
    except OSError as exc:
        print(f"error: {name}: {exc.strerror or exc}", file=sys.stderr)
        return False
    for model in ("cnn", "vit") if args.model == "both" else (args.model,):
        try:
            result = client.predict(image, model, top_k=args.top_k)
        except (InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError) as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return False
        prediction = result.predictions[0]
        if args.json:
            print(json.dumps(_json_line(name, result, prediction)), flush=True)
        else:
            rows.append(_row(name, result, prediction, args.top_k))
    return True


def _json_line(name: str, result: PredictResult, prediction: Prediction) -> dict[str, Any]:
    return {"file": name, "model": result.model, "version": result.version, "alias": result.alias, **asdict(prediction)}


def _header(top_k: int | None) -> list[str]:
    return ["file", "answer", "confidence", "model"] + ([f"top {top_k}"] if top_k else [])


def _row(name: str, result: PredictResult, prediction: Prediction, top_k: int | None) -> list[str]:
    answer = str(prediction.label) if prediction.is_digit else f"not a digit (closest {prediction.best_guess})"
    served = f"{result.model} v{result.version}" + (f" ({result.alias})" if result.alias else "")
    row = [name, answer, f"{prediction.confidence:.2%}", served]
    if top_k:
        row.append(", ".join(f"{s.label} {s.probability:.2%}" for s in prediction.top_k))
    return row


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
