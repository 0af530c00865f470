"""Figures a test measured, kept for the docs: `DIGITSERVE_EVIDENCE=<file>` merges them into that
JSON file (bench/overload_results.json, say) with the commit, machine and date of the run.

Without the variable nothing is written: the suite's own runs measure, the named command
(`make evidence` / the docs) records."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "?"
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def record(key: str, figures: dict[str, Any]) -> None:
    """Merge `figures` under `key` into the file DIGITSERVE_EVIDENCE names (if it does)."""
    target = os.environ.get("DIGITSERVE_EVIDENCE")
    if not target:
        return
    path = Path(target)
    doc = json.loads(path.read_text()) if path.exists() else {"results": {}}
    doc["results"][key] = {
        **figures,
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
    }
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


OVERLOAD_RESULTS = ROOT / "bench" / "overload_results.json"
PAYLOAD_NAMES = {"png-28x28": "28x28 PNG", "canvas-400x400": "400x400 canvas drawing"}


def overload_table(doc: dict[str, Any]) -> str:
    """The README's overload table, from bench/overload_results.json."""
    rows = [
        "| layout | payload | capacity | offered | shed (503) | served | accepted within 0.5 s / 1 s / 2.5 s (server) "
        "| p50 / p99 (client) | after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(doc["results"], key=lambda k: (doc["results"][k]["workers"], doc["results"][k]["payload"])):
        r = doc["results"][key]
        layout = f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}"
        cells = [
            layout,
            PAYLOAD_NAMES[r["payload"]],
            f"{r['capacity_per_s']:,} req/s",
            f"{r['offered_per_s']:,} req/s",
            f"{r['shed_fraction']:.0%} of {r['sent']:,}",
            f"{r['served_per_s']:,} req/s",
            f"{r['server_within_0_5_s']:.2%} / {r['server_within_1_s']:.2%} / {r['server_within_2_5_s']:.2%}",
            f"{r['client_p50_s']:.3f} s / {r['client_p99_s']:.2f} s",
            f"p99 {r['after_p99_s'] * 1000:.0f} ms",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


PHOTO_BURST_RESULTS = ROOT / "bench" / "photo_burst_results.json"


def photo_burst_sentence(doc: dict[str, Any]) -> str:
    """What docs/preprocessing.md says of bench/photo_burst_results.json."""
    now = doc["results"]["this checkout"]
    [(baseline, before)] = [(k.removeprefix("@"), v) for k, v in doc["results"].items() if k.startswith("@")]
    commit = doc["machine"]["commit"]
    return (
        f"Measured at {commit}: {now['statuses'].get('503', 0)} of {now['requests']:,} uploads refused, "
        f"p50 / p99 {now['p50_s']:.2f} / {now['p99_s']:.2f} s as the clients saw it (each on a new "
        f"connection); with the fixed 0.25 s wait ({baseline}), {before['refused_share']:.0%} were refused "
        f"({before['statuses'].get('503', 0)} of {before['requests']:,})."
    )


DECODE_PRICES_RESULTS = ROOT / "bench" / "decode_prices_results.json"
DECODE_KINDS = {  # results key -> how docs/preprocessing.md names it
    "8x8 PNG": "an 8x8 PNG",
    "28x28 PNG": "a 28x28 PNG",
    "400x400 canvas PNG": "the page's 400x400 canvas",
    "28x28 pixel CSV": "a 28x28 pixel CSV",
    "phone photo JPEG, 90-260 px": "a phone photo (90-260 px JPEG)",
}


def decode_prices_sentence(doc: dict[str, Any]) -> str:
    """What docs/preprocessing.md says of bench/decode_prices_results.json."""
    figures = doc["results"]
    parts = [
        f"{name} {figures[kind]['measured_ms_mean']:.2f} ms (priced {figures[kind]['priced_ms_mean']:.2f})"
        for kind, name in DECODE_KINDS.items()
    ]
    return f"Measured at {doc['machine']['commit']}: {', '.join(parts)}."


TRAIN_STEP_RESULTS = ROOT / "bench" / "train_step_results.json"


def train_step_sentence(doc: dict[str, Any]) -> str:
    """What the README says of bench/train_step_results.json."""
    cnn, vit = doc["results"]["cnn"], doc["results"]["vit"]

    def pace(r: dict[str, Any]) -> str:
        speedup = r["bfloat16_speedup"]
        return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"

    return (
        f"a training step under bfloat16 autocast is {pace(cnn)} than float32 for the CNN and {pace(vit)} "
        f"for the ViT on this machine's CPU ({doc['machine']['cpu']}; AMX {'yes' if doc['amx'] else 'no'}), "
        f"measured at {doc['machine']['commit']} by `bench/train_step.py`"
    )


CPU_BUDGET_RESULTS = ROOT / "bench" / "cpu_budget_results.json"


def cpu_budget_sentence(doc: dict[str, Any]) -> str:
    """What the README says of bench/cpu_budget_results.json: the CPU per request and each stage's share."""
    shown = {stage: cpu for stage, cpu in doc["stages"].items() if round(cpu, 2) >= 0.01}
    small = [stage for stage in doc["stages"] if stage not in shown]
    return (
        f"measured at {doc['machine']['commit']}): one server process as the default layout runs one per core "
        f"(`--workers 1`, one ONNX Runtime thread; its metrics kept in memory rather than in the files two "
        f"workers share) under 64 connections of 1-image JSON, each thread's CPU from the kernel divided among "
        f"stages by py-spy's samples of it — "
        f"{doc['cpu_s_per_1000']:.2f} ms of CPU per request: "
        + "; ".join(f"{stage} {cpu:.2f}" for stage, cpu in shown.items())
        + " (ms); "
        + ", ".join(small)
        + ": under 0.01 ms each."
    )


OBSERVABILITY_RESULTS = ROOT / "bench" / "observability_results.json"


def observability_table(doc: dict[str, Any]) -> str:
    """bench/README.md's table of what the request log and metrics cost, from bench/observability_results.json."""
    rows = ["| connections | req/s off → on | p50 off → on | p99 off → on |", "|---|---|---|---|"]
    for c in sorted(doc["on"], key=int):
        off, on, ratio = doc["off"][c], doc["on"][c], doc["ratio_on_over_off"][c]
        rows.append(
            f"| {c} | {off['rps']:,.0f} → {on['rps']:,.0f} ({ratio['rps']:.2f}×) | {off['p50_ms']:.2f} → "
            f"{on['p50_ms']:.2f} ms | {off['p99_ms']:.2f} → {on['p99_ms']:.2f} ms ({ratio['p99_ms']:.2f}×) |"
        )
    return "\n".join(rows)


def observability_costs_sentence(doc: dict[str, Any]) -> str:
    costs = doc["in_process"]
    return (
        f"an access line {costs['access_line_us']:.1f} µs, the request counters and latency histogram "
        f"{costs['request_metrics_us']:.1f} µs, noting the answers {costs['answer_metrics_us']:.1f} µs"
    )


SHADOW_RESULTS = ROOT / "bench" / "shadow_results.json"


def shadow_table(doc: dict[str, Any]) -> str:
    """bench/README.md's table of what a shadow costs the clients, from bench/shadow_results.json."""
    rows = [
        "| connections | req/s off → on | p50 off → on | p99 off → on | answers the shadow compared |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(doc["on"], key=int):
        off, on, ratio = doc["off"][c], doc["on"][c], doc["ratio_on_over_off"][c]
        cells = [
            c,
            f"{off['rps']:,.0f} → {on['rps']:,.0f} ({ratio['rps']:.2f}×)",
            f"{off['p50_ms']:.2f} → {on['p50_ms']:.2f} ms",
            f"{off['p99_ms']:.2f} → {on['p99_ms']:.2f} ms ({ratio['p99_ms']:.2f}×)",
            f"{min(on['compared_share'], 1.0):.1%}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


PROTOCOL_RESULTS = ROOT / "bench" / "protocol_cost_results.json"


def protocol_table(doc: dict[str, Any]) -> str:
    """bench/README.md's table of the HTTP protocol's price, from bench/protocol_cost_results.json."""
    rows = ["| protocol | req/s | p50 | p99 |", "|---|---|---|---|"]
    for key, name in (("httptools", "uvicorn httptools"), ("limited", "digitserve's (limited)")):
        r = doc[key]
        rows.append(f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.0f} ms |")
    ratio = doc["ratio"]
    rows.append(f"| ratio | {ratio['rps']:.2f} | {ratio['p50_ms']:.2f} | {ratio['p99_ms']:.2f} |")
    return "\n".join(rows)


AB_DIRECT_RESULTS = ROOT / "bench" / "ab_direct_path.json"


def ab_table(doc: dict[str, Any]) -> str:
    """bench/README.md's before/after table of one change, from a bench/ab.py results file."""
    ref, now = doc["ref"], doc["machine"]["commit"]
    rows = [f"| connections | {ref} req/s | {now} req/s | ratio | p50 ratio | p99 ratio |", "|---|---|---|---|---|---|"]
    for c, r in doc["ratio_this_over_ref"].items():
        before, after = doc["medians"][ref][c]["rps"], doc["medians"]["this tree"][c]["rps"]
        rows.append(f"| {c} | {before:,.0f} | {after:,.0f} | {r['rps']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    return "\n".join(rows)


SHADOW_TARGET = 1.10  # the rollouts issue's target: a shadow raises no p99 by more than 10%


def shadow_verdict(doc: dict[str, Any]) -> str:
    """bench/README.md's sentence on the shadow's p99 target, per load, from bench/shadow_results.json."""
    ratios = {int(c): r["p99_ms"] for c, r in doc["ratio_on_over_off"].items()}
    held = [f"c={c}" for c, r in sorted(ratios.items()) if r <= SHADOW_TARGET]
    missed = [f"c={c} ({r:.2f}×)" for c, r in sorted(ratios.items()) if r > SHADOW_TARGET]
    parts = ([f"holds at {' and '.join(held)}"] if held else []) + (
        [f"is **missed** at {' and '.join(missed)}"] if missed else []
    )
    commit = doc["machine"]["commit"]
    return f"Measured at {commit}, the target (a shadow raises no p99 by more than 10%) {', and '.join(parts)}."


def shadow_one_connection(doc: dict[str, Any]) -> str:
    """docs/rollouts.md's sentence on the shadow's cost at one connection."""
    off, on, ratio = doc["off"]["1"]["p99_ms"], doc["on"]["1"]["p99_ms"], doc["ratio_on_over_off"]["1"]["p99_ms"]
    verdict = "within the 10% target" if ratio <= SHADOW_TARGET else "a missed target"
    return (
        f"at one connection it compares every answer and the client's p99 goes from {off:.2f} ms to "
        f"{on:.2f} ms ({ratio:.2f}×, {verdict})"
    )


def protocol_verdict(doc: dict[str, Any]) -> str:
    """bench/README.md's sentence on the protocol's price, from bench/protocol_cost_results.json."""
    ratio, plain, limited = doc["ratio"], doc["httptools"], doc["limited"]
    head = f"Measured at {doc['machine']['commit']}, our protocol served {ratio['rps']:.2f}× httptools' req/s"
    if ratio["rps"] >= 0.95 and ratio["p99_ms"] <= 1.10:
        return f"{head} at {ratio['p99_ms']:.2f}× its p99: no cost the noise of a 2-core machine lets us see."
    return (
        f"{head} at {ratio['p99_ms']:.2f}× its p99 ({plain['p99_ms']:.0f} → {limited['p99_ms']:.0f} ms): "
        "a cost in the tail, **missed** against the round-two claim of none."
    )


PLACEMENT_RESULTS = ROOT / "bench" / "worker_placement_results.json"


def placement_sentence(doc: dict[str, Any]) -> str:
    """bench/README.md's sentence on where keep-alive connections land, from worker_placement_results.json."""
    ratios = doc["ratio_one_over_both"]
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    return (
        f"{doc['clients']} closed-loop clients on {doc['clients']} connections of one worker served "
        f"{min(ratios):.2f}–{max(ratios):.2f}× what they served on {doc['clients'] // 2} of each "
        f"(per round: {rounds}; measured at {doc['machine']['commit']})."
    )


GRPC_RESULTS = ROOT / "bench" / "grpc_results.json"
GRPC_CELLS = {"1x1": "1 image, 1 connection", "1x64": "1 image, 64 connections", "64x16": "64 images, 16 connections"}


def grpc_table(doc: dict[str, Any]) -> str:
    """The README's table of gRPC against REST (/v2, binary tensors), from bench/grpc_results.json."""
    rows = [
        "| requests | REST req/s (images/s), p50, p99 | gRPC req/s (images/s), p50, p99 | gRPC / REST throughput |",
        "|---|---|---|---|",
    ]
    for cell, name in GRPC_CELLS.items():
        rest, grpc, ratio = doc["rest"][cell], doc["grpc"][cell], doc["grpc_over_rest"][cell]["rps"]
        both = [
            f"{r['rps']:,.0f} ({r['images_s']:,.0f}), {r['p50_ms']:.2f} ms, {r['p99_ms']:.1f} ms" for r in (rest, grpc)
        ]
        rows.append(f"| {name} | {both[0]} | {both[1]} | {ratio:.2f}× |")
    return "\n".join(rows)


def grpc_verdict(doc: dict[str, Any]) -> str:
    """The README's sentence on the gRPC target (64-image throughput at least REST's), from
    bench/grpc_results.json."""
    ratio = doc["grpc_over_rest"]["64x16"]["rps"]
    result = "met" if ratio >= 1 else "missed"
    return f"64-image throughput at least REST's: {result}, {ratio:.2f}× over {doc['rounds']} rounds"
