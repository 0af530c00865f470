"""64 phone uploads at once: how many the server refuses, and how long the answers take.

A burst of ordinary traffic: 64 clients each upload one phone photo of a digit at the same
moment (`make_phone_upload` in tests/support/photolike.py: 90-260 px JPEGs with 16-40 KB of
EXIF, as phones write them), each on a new connection, through `/v1/models/cnn/predict/upload`.
The default layout (2 workers) of this checkout and, with `--baseline REF`, of an older commit's
`src/`, each started `--rounds` times, interleaved; every start takes `--bursts` bursts, 2 s
apart. Figures per tree: the share refused (503) over all bursts and the 200s' p50 / p99 (client).

    .venv/bin/python bench/photo_burst.py [--rounds 3] [--bursts 5] [--baseline REF]
                                                        # writes bench/photo_burst_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness as h
import httpx
import numpy as np
import report
from support.photolike import make_phone_upload

from digitserve.data import load_mnist

HERE = Path(__file__).resolve().parent
CLIENTS = 64


def uploads(n: int = CLIENTS) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [make_phone_upload(digit, rng) for digit in load_mnist("test").images[:n]]


async def burst(url: str, photos: list[bytes]) -> list[tuple[int, float]]:
    """Every photo at once, each from its own client on a new connection: (status, seconds). The
    clients are made first (an httpx client costs milliseconds of CPU to make: not the server's)."""
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for _ in photos]

    async def one(client: httpx.AsyncClient, photo: bytes) -> tuple[int, float]:
        started = time.perf_counter()
        r = await client.post("/v1/models/cnn/predict/upload", files={"files": ("photo.jpg", photo)})
        return r.status_code, time.perf_counter() - started

    try:
        return await asyncio.gather(*(one(c, p) for c, p in zip(clients, photos, strict=True)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def measure(rounds: int, bursts: int, baseline: str | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="photo-burst-"))
    registry, _ = h.make_registry(work / "registry")
    trees: dict[str, Path | None] = {"this checkout": None}
    if baseline:
        trees[f"@{baseline}"] = report.checkout_src(baseline, work / "baseline")
    photos = uploads()
    answers: dict[str, list[tuple[int, float]]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, src in trees.items():
            env = h.server_env(registry, "cnn", src)
            with h.start("photo-burst", h.digitserve_cmd(src, workers=2), env, work) as server:
                # decode processes started (a worker these four miss starts its own in the first burst)
                asyncio.run(burst(server.url, photos[:4]))
                time.sleep(2)
                for _ in range(bursts):
                    answers[name] += asyncio.run(burst(server.url, photos))
                    time.sleep(2)
    figures: dict[str, Any] = {}
    for name, got in answers.items():
        ok = sorted(s for status, s in got if status == 200)
        figures[name] = {
            "requests": len(got),
            "statuses": {str(k): v for k, v in Counter(status for status, _ in got).items()},
            "refused_share": round(sum(status == 503 for status, _ in got) / len(got), 4),
            "p50_s": round(statistics.median(ok), 3) if ok else None,
            "p99_s": round(ok[min(len(ok) - 1, int(0.99 * len(ok)))], 3) if ok else None,
        }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--baseline", help="a commit whose src/ is measured alongside, interleaved")
    parser.add_argument("--out", type=Path, default=HERE / "photo_burst_results.json")
    args = parser.parse_args()
    figures = {
        "results": measure(args.rounds, args.bursts, args.baseline),
        "clients": CLIENTS,
        "rounds": args.rounds,
        "bursts": args.bursts,
        "machine": report.machine(os.getloadavg()[0]),
    }
    return h.write_results(args.out, figures)


if __name__ == "__main__":
    sys.exit(main())
