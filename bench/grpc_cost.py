"""gRPC against REST for the same Open Inference Protocol request, in the same run, on one server.

One `digitserve serve` in the default layout (a worker per core) with `DIGITSERVE_GRPC_PORT` set
answers both: `/v2/models/cnn/infer` with the binary tensor data extension (raw UINT8 pixels in,
raw outputs back: what tritonclient's HTTP client sends) driven by wrk, and `ModelInfer` with
`raw_input_contents` (what tritonclient's gRPC client sends) driven by h2load (nghttp2's load
generator; a C client as wrk is, one thread each). Requests of 1 image and of 64 images, rounds
alternating the two transports so drift on the machine hits both alike.

h2load sees HTTP/2 statuses, not gRPC's: every gRPC answer is checked in the server's own counts
(`digitserve_requests_total{method="GRPC"}`): at least as many 200s as h2load finished, no refusal,
and at most one call per connection cut (499) when h2load stops at the end of its run.

    .venv/bin/python bench/grpc_cost.py [--rounds 3] [--seconds 8]    # -> bench/grpc_results.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness as h
import numpy as np

sys.path.insert(0, str(h.ROOT / "tests"))
from support.net import free_port

from digitserve.serving.grpc.proto import open_inference_pb2 as pb

HERE = Path(__file__).resolve().parent
GRPC_ROUTE = "/inference.GRPCInferenceService/ModelInfer"
BINARY = "application/octet-stream"
# (images per request, concurrent connections): one image alone (latency) and under load, 64 images
CELLS = [(1, 1), (1, 64), (64, 16)]


def pixels(n: int) -> np.ndarray:
    return np.ascontiguousarray(h.load_mnist("test").images[:n])


def rest_body(images: np.ndarray, path: Path) -> str:
    """The /v2 request with binary tensor data; returns its Inference-Header-Content-Length header."""
    head = {
        "inputs": [
            {
                "name": "pixels",
                "shape": list(images.shape),
                "datatype": "UINT8",
                "parameters": {"binary_data_size": images.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(head, separators=(",", ":")).encode()
    path.write_bytes(header + images.tobytes())
    return f"Inference-Header-Content-Length: {len(header)}"


def grpc_body(images: np.ndarray, path: Path) -> None:
    """A gRPC message as it travels: a 5-byte prefix (not compressed, big-endian length) and the
    serialized `ModelInferRequest`."""
    request = pb.ModelInferRequest(model_name="cnn")
    request.inputs.add(name="pixels", datatype="UINT8", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    message = request.SerializeToString()
    path.write_bytes(struct.pack(">BI", 0, len(message)) + message)


def h2load(url: str, body: Path, connections: int, seconds: float, images: int, log: Path) -> dict[str, Any]:
    """One h2load run (one thread, one stream per connection at a time, as wrk keeps one request
    per connection); latencies from its per-request log."""
    cmd = ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{max(seconds, 1):.0f}", "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers", f"--log-file={log}", url]
    log.unlink(missing_ok=True)  # h2load appends
    ran = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if ran.returncode != 0:
        raise RuntimeError(f"h2load failed ({ran.returncode}): {ran.stdout[-2000:]} {ran.stderr[-2000:]}")
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    ok = [int(r[2]) for r in rows if r[1] == "200"]
    if not ok:
        raise RuntimeError(f"h2load got no 200: {ran.stdout[-2000:]}")
    starts = [int(r[0]) for r in rows]
    span_s = (max(s + int(r[2]) for s, r in zip(starts, rows, strict=True)) - min(starts)) / 1e6
    latencies = np.array(ok) / 1000.0
    return {
        "requests": len(rows),
        "rps": len(ok) / span_s,
        "images_s": len(ok) * images / span_s,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": len(rows) - len(ok),
    }


def grpc_answers(url: str) -> dict[str, float]:
    """The server's own count of gRPC ModelInfer answers, by status."""
    counts: dict[str, float] = {}
    for labels, value in h.metric_sum(url, "digitserve_requests_total").items():
        if f'route="{GRPC_ROUTE}"' in labels:
            status = labels.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0.0) + value
    return counts


def measure(rounds: int, seconds: float) -> dict[str, Any]:
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: apt-get install nghttp2-client (make system-deps)")
    work = Path(tempfile.mkdtemp(prefix="grpc-cost-"))
    registry, _ = h.make_registry(work / "registry")
    port = free_port()
    env = h.server_env(registry, "cnn", grpc_port=port)
    bodies: dict[int, dict[str, Any]] = {}
    for n in {n for n, _ in CELLS}:
        images = pixels(n)
        header = rest_body(images, work / f"rest-{n}.bin")
        grpc_body(images, work / f"grpc-{n}.bin")
        bodies[n] = {"header": header}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"rest": {}, "grpc": {}}
    with h.start("digitserve-grpc", h.digitserve_cmd(), env, work) as server:
        rest_url = f"{server.url}/v2/models/cnn/infer"
        grpc_url = f"http://127.0.0.1:{port}{GRPC_ROUTE}"
        for n, c in CELLS:  # warm both paths
            h.wrk(rest_url, work / f"rest-{n}.bin", c, 2, BINARY, n, bodies[n]["header"])
            h2load(grpc_url, work / f"grpc-{n}.bin", c, 2, n, work / "warm.log")
        for round_ in range(rounds):
            for n, c in CELLS:
                cell = f"{n}x{c}"
                order = ("rest", "grpc") if round_ % 2 == 0 else ("grpc", "rest")
                for transport in order:
                    h.settle(server.url)
                    if transport == "rest":
                        result = h.wrk(rest_url, work / f"rest-{n}.bin", c, seconds, BINARY, n, bodies[n]["header"])
                    else:
                        before = grpc_answers(server.url)
                        result = h2load(grpc_url, work / f"grpc-{n}.bin", c, seconds, n, work / "h2load.log")
                        after = grpc_answers(server.url)
                        statuses = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
                        answered, cut = statuses.pop("200", 0), statuses.pop("499", 0)  # 499: in flight at the end
                        if statuses or cut > c or answered < result["requests"] - result["errors"]:
                            raise RuntimeError(f"gRPC {cell}: {answered} answered, {cut} cut, {statuses}; {result}")
                    runs[transport].setdefault(cell, []).append(result)
    figures: dict[str, Any] = {}
    for transport, cells in runs.items():
        figures[transport] = {
            cell: {k: statistics.median(r[k] for r in results) for k in ("rps", "images_s", "p50_ms", "p99_ms")}
            | {"errors": sum(r["errors"] for r in results)}
            for cell, results in cells.items()
        }
    figures["grpc_over_rest"] = {
        cell: {k: figures["grpc"][cell][k] / figures["rest"][cell][k] for k in ("rps", "p50_ms", "p99_ms")}
        for cell in figures["rest"]
    }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=HERE / "grpc_results.json")
    args = parser.parse_args()
    figures = measure(args.rounds, args.seconds)
    figures["cells"] = "images per request x connections"
    figures["rounds"], figures["seconds"] = args.rounds, args.seconds
    return h.write_results(args.out, figures)


if __name__ == "__main__":
    sys.exit(main())
