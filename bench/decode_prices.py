"""What decoding one image costs, against the price the server charges for it before decoding.

The server prices a request's decoding from headers alone (`serving/inference/decoding.py`:
`PER_IMAGE_S`, `PER_PIXEL_S`, `PER_CSV_S`, `PER_FILE_BYTE_S`) and decides from that price whether
it is decoded on the event loop or in a decode process, and whether it is admitted at all. This
measures `prepare` (open, find the ink, fit it into 28x28: what a decode is) on one core for
each kind of input the docs name, the median of `--repeats` runs of each sample, next to its price.

    .venv/bin/python bench/decode_prices.py [--repeats 30]   # writes bench/decode_prices_results.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness as h
import numpy as np
from PIL import Image, ImageOps
from support.photolike import make_phone_upload

from digitserve.data import load_mnist
from digitserve.imaging.decode import ImageError, header_size, large_header_size
from digitserve.imaging.mnist import prepare
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64
from digitserve.serving.inference.decoding import (
    HEADER_BYTES,
    PER_CSV_S,
    PER_FILE_BYTE_S,
    PER_IMAGE_S,
    PER_PIXEL_S,
)

HERE = Path(__file__).resolve().parent


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def canvas_drawing() -> bytes:
    """What the web page sends: its 400x400 canvas as an RGBA PNG, a dark digit on white."""
    seven = Image.open(io.BytesIO(base64.b64decode(EXAMPLE_PNG_B64))).convert("L")
    canvas = Image.new("L", (400, 400), 255)
    canvas.paste(ImageOps.invert(seven.resize((280, 280), Image.Resampling.BICUBIC)), (60, 60))
    return png(canvas.convert("RGBA"))


def samples() -> dict[str, list[bytes]]:
    digits = load_mnist("test").images[:64]
    rng = np.random.default_rng(0)
    return {
        "8x8 PNG": [png(Image.fromarray(d).resize((8, 8), Image.Resampling.BILINEAR)) for d in digits[:16]],
        "28x28 PNG": [png(Image.fromarray(d)) for d in digits[:16]],
        "400x400 canvas PNG": [canvas_drawing()],
        "28x28 pixel CSV": [",".join(map(str, d.ravel())).encode() for d in digits[:16]],
        "phone photo JPEG, 90-260 px": [make_phone_upload(d, rng) for d in digits],
    }


def price(blob: bytes, kind: str) -> float:
    """The seconds the server charges for `blob` before decoding it (DecodeAdmission's rule)."""
    if kind.endswith("CSV"):
        return PER_CSV_S
    if len(blob) > HEADER_BYTES:
        width, height = large_header_size(blob)
        extra = len(blob) * PER_FILE_BYTE_S
    else:
        (width, height), extra = header_size(blob), 0.0
    return extra + PER_IMAGE_S + width * height * PER_PIXEL_S


def decode(blob: bytes) -> None:
    """What a decode process does with one image: `prepare` it, or find why it cannot (a blurred
    8x8 digit may hold no ink that stands out: the server answers that as a 422 after the same work)."""
    with contextlib.suppress(ImageError):
        prepare(blob)


def median_seconds(work: Callable[[], Any], repeats: int) -> float:
    work()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(repeats: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for kind, blobs in samples().items():
        spent = [median_seconds(lambda b=blob: decode(b), repeats) for blob in blobs]
        priced = [price(blob, kind) for blob in blobs]
        figures[kind] = {
            "samples": len(blobs),
            "bytes_mean": round(statistics.mean(len(b) for b in blobs)),
            "measured_ms_mean": round(1000 * statistics.mean(spent), 2),
            "priced_ms_mean": round(1000 * statistics.mean(priced), 2),
            "measured_over_priced": round(statistics.mean(spent) / statistics.mean(priced), 2),
        }
        print(f"{kind}: {figures[kind]}", file=sys.stderr)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "decode_prices_results.json")
    args = parser.parse_args()
    return h.write_results(args.out, {"results": measure(args.repeats), "repeats": args.repeats})


if __name__ == "__main__":
    sys.exit(main())
