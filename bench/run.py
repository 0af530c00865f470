"""The load benchmark: digitserve against its limits and a peer, in one run, to bench/results.md.

    make bench                                   # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --smoke --out /tmp/r.md   # seconds per scenario: checks it runs

Measured in the same run: the HTTP limit (bench/bare_app.py, a FastAPI endpoint that only
base64-decodes), the compute limit (bench/compute.py, the ONNX artifact in-process), the peer
(bench/litserve_app.py: LitServe serving the same registry version, same body, batching 64 / 2 ms),
digitserve in its default layout and with one worker, and the commit before the ONNX serving core
(HISTORY, from a `git archive` of its src/). Servers are real processes on loopback; wrk drives
them (bench/lua/post.lua); each run also records the server's CPU seconds (all its processes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h
import report

README = h.BENCH.parent / "README.md"
# Commits the headline scenarios are re-run at, oldest first: (label, git ref).
HISTORY: list[tuple[str, str]] = [
    ("before the ONNX serving core (torch, 1 worker)", "c547d31"),
]
MAX_START_LOAD = 0.5  # 1-minute load average above which a full run waits (other work on the box)


@dataclass(frozen=True)
class Plan:
    seconds: float  # one wrk run
    warmup: float  # a wrk run before each server's first measurement (not recorded)
    startup_runs: int
    compute_seconds: float
    extras: bool  # one-worker layout, batching off, history
    repeats: int  # runs of the headline scenario (1 image, 64 connections)
    fresh_starts: int  # fresh starts of the default layout, each measured once (the spread between starts)
    fresh_seconds: float


FULL = Plan(
    seconds=10, warmup=3, startup_runs=5, compute_seconds=3, extras=True, repeats=3, fresh_starts=10, fresh_seconds=6
)
SMOKE = Plan(
    seconds=1, warmup=0, startup_runs=1, compute_seconds=0.2, extras=False, repeats=1, fresh_starts=2, fresh_seconds=1
)


class Bench:
    """Runs scenarios and keeps every figure in `self.results` for the report."""

    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan = plan
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True)
        self.bodies = h.write_payloads(work / "bodies")
        self.registry, notes = h.make_registry(work / "registry")
        self.results: dict[str, Any] = {"models": notes, "runs": [], "compute": {}, "startup": []}

    # --- building blocks ---------------------------------------------------------------------

    def serve(self, name: str, cmd: list[str], env: dict[str, str], model: str = "cnn") -> h.Server:
        server = h.start(name, cmd, env, self.logs)
        if self.plan.warmup:
            h.wrk(self.predict_url(server, model), self.bodies["one"], 16, self.plan.warmup)
            h.settle(server.url)
        self.results.setdefault("memory", {})[name] = round(h.process_rss_mib(server.process.pid), 1)
        return server

    def server(self, name: str, models: str = "cnn", workers: int = 1, src: Path | None = None, **kw: Any) -> h.Server:
        env = h.server_env(self.registry, models, src, **kw)
        return self.serve(name, h.digitserve_cmd(src, workers), env, model=models.split(",")[0])

    @staticmethod
    def predict_url(server: h.Server, model: str, upload: bool = False) -> str:
        return f"{server.url}/v1/models/{model}/predict" + ("/upload" if upload else "")

    def load(self, server: h.Server, body: str, connections: int, model: str = "cnn", **extra: Any) -> dict[str, Any]:
        """One recorded wrk run of `body` ("one", "batch" or "upload") against `server`."""
        images = 64 if body == "batch" else 1
        content_type = f"multipart/form-data; boundary={h.BOUNDARY}" if body == "upload" else h.JSON
        url = self.predict_url(server, model, upload=body == "upload")
        cpu_before = h.process_cpu_seconds(server.process.pid)
        figures = h.wrk(url, self.bodies[body], connections, self.plan.seconds, content_type, images)
        h.settle(server.url)
        cpu = h.process_cpu_seconds(server.process.pid) - cpu_before
        answered = figures["rps"] * self.plan.seconds
        figures["cpu_s_per_1000"] = 1000 * cpu / answered if answered else None
        row = {"server": server.name, "model": model, "body": body, "images": images, "connections": connections}
        row.update(extra, **figures)
        self.results["runs"].append(row)
        print(report.run_line(row), flush=True)
        return row

    # --- scenarios ---------------------------------------------------------------------------

    def compute_limits(self) -> None:
        """The forward pass in-process: each model with every core's thread, and the CNN with the one
        thread a worker of the default layout has (the machine's 1-image limit is made of it)."""
        for key, model, threads in (("cnn", "cnn", 0), ("vit", "vit", 0), (report.CNN_ONE_THREAD, "cnn", 1)):
            cmd = [h.PYTHON, str(h.BENCH / "compute.py"), "--registry", self.registry.uri, "--model", model]
            cmd += ["--seconds", str(self.plan.compute_seconds)] + (["--threads", str(threads)] if threads else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            self.results["compute"][key] = json.loads(out.stdout.splitlines()[-1])
            print(f"compute {key}: {self.results['compute'][key]}", flush=True)

    def startup(self) -> None:
        """Spawn `digitserve serve` (one model; the default layout, then one worker) and time it to /readyz 200."""
        for workers, label in ((0, "cnn"), (1, "cnn, --workers 1")):
            for _ in range(self.plan.startup_runs):
                cmd = h.digitserve_cmd(workers=workers)
                with h.start(f"startup-{workers}", cmd, h.server_env(self.registry, "cnn"), self.logs) as s:
                    self.results["startup"].append({"models": label, "seconds": s.ready_s})
                print(f"startup {label}: {s.ready_s:.2f}s", flush=True)

    def bare(self) -> None:
        with self.serve("bare", h.bare_cmd(), {}) as s:
            for c in (1, 4, 16, 64):
                self.load(s, "one", c)
        with self.serve(report.BARE_DECODING, h.bare_cmd(decode=True), {}) as s:  # the machine's limit
            for c in (1, 16, 64):
                self.load(s, "one", c)

    def litserve(self) -> None:
        """The peer. Its API takes one image per request as a new user writes it: single-image runs only."""
        with self.serve("LitServe", h.litserve_cmd(self.registry), {}) as s:
            for c in (1, 4, 16, 64):
                self.load(s, "one", c)

    def digitserve(self) -> None:
        """The server as shipped (--workers auto, both models loaded), then the alias move on it."""
        with self.server("digitserve", models="cnn,vit", workers=0) as s:
            for c in (1, 4, 16):
                self.load(s, "one", c)
            for _ in range(self.plan.repeats):  # the headline: the report takes the median run
                self.load(s, "one", 64)
            self.load(s, "batch", 16)
            self.load(s, "batch", 64)
            self.load(s, "upload", 64)
            self.load(s, "one", 64, model="vit")
            self.load(s, "batch", 16, model="vit")
            self.alias_move(s)

    def fresh_starts(self) -> None:
        """The default layout started afresh `fresh_starts` times, each measured once (1-image JSON,
        64 connections, after a warm-up): how far one start's speed is from another's. Each run
        records the host's CPU steal (/proc/stat) and each server process's CPU seconds; a run with
        steal over report.MAX_STEAL was slowed by the host, not the server: it is flagged and the start
        repeated (up to report.MAX_FLAGGED times, then kept, flagged)."""
        env = h.server_env(self.registry, "cnn")
        url = None
        for index in range(self.plan.fresh_starts):
            for attempt in range(report.MAX_FLAGGED + 1):
                with h.start(f"fresh-{index}", h.digitserve_cmd(workers=0), env, self.logs) as s:
                    url = self.predict_url(s, "cnn")
                    if self.plan.warmup:
                        h.wrk(url, self.bodies["one"], 64, self.plan.warmup)
                    h.settle(s.url)
                    host, cpu = h.host_cpu_ticks(), h.process_tree_cpu(s.process.pid)
                    figures = h.wrk(url, self.bodies["one"], 64, self.plan.fresh_seconds, h.JSON, 1)
                    steal = h.steal_share(host, h.host_cpu_ticks())
                    spent = h.process_tree_cpu(s.process.pid)
                    h.settle(s.url)
                steal = round(steal, 4)
                row = {
                    "start": index,
                    "attempt": attempt,
                    "rps": figures["rps"],
                    "p99_ms": figures["p99_ms"],
                    "errors": figures["errors"],
                    "statuses": figures["statuses"],
                    "steal": steal,
                    "flagged": steal > report.MAX_STEAL,
                    # by role, each role's process alive through the run (a failed reading: none)
                    "cpu_s": {k: round(v - cpu[k], 2) for k, v in spent.items() if k in cpu} if cpu and spent else {},
                }
                self.results.setdefault("fresh_starts", []).append(row)
                print(f"fresh start {index}: {report.fresh_line(row)}", flush=True)
                if not row["flagged"]:
                    break

    def one_worker(self) -> None:
        """The other layout on 2 cores: one process, two ONNX Runtime threads."""
        with self.server("digitserve --workers 1", workers=1) as s:
            for c in (1, 4, 16, 64):
                self.load(s, "one", c)
            self.load(s, "batch", 16)

    def no_batching(self) -> None:
        with self.server("digitserve, batching off", max_batch_size=1) as s:
            self.load(s, "one", 16)
            self.load(s, "one", 64)

    def alias_move(self, s: h.Server) -> None:
        """Single-image load at 64 connections; a third of the way in the alias moves to v2, at
        two thirds back to v1, each followed by an admin reload. Every error counts."""
        before = h.metric_sum(s.url, "digitserve_images_total")
        proc = h.wrk_start(self.predict_url(s, "cnn"), self.bodies["one"], 64, self.plan.seconds * 2, h.JSON)
        moves = [self.move_and_reload(s, version, self.plan.seconds * 2 / 3) for version in (2, 1)]
        figures = h.wrk_result(proc)
        after = h.metric_sum(s.url, "digitserve_images_total")
        served = {k: v - before.get(k, 0) for k, v in after.items() if 'model="cnn"' in k}
        row = {"server": "digitserve, alias moving", "model": "cnn", "body": "one", "images": 1, "connections": 64}
        row.update(figures, moves=moves, served_by_version=served)
        self.results["runs"].append(row)
        print(report.run_line(row), moves, served, flush=True)

    def move_and_reload(self, server: h.Server, version: int, after_s: float) -> dict[str, Any]:
        time.sleep(after_s)
        self.registry.move_alias("cnn", "production", version, reason="benchmark: alias move under load")
        started = time.perf_counter()
        answer = h.http_text(f"{server.url}/v1/admin/reload", b"", {"Authorization": f"Bearer {h.ADMIN_TOKEN}"})
        return {"to": version, "reload_s": round(time.perf_counter() - started, 3), "answer": json.loads(answer)}

    def history(self, refs: list[tuple[str, str]]) -> None:
        """Each earlier commit: its start-up time (three starts) and the two headline loads."""
        for label, ref in refs:
            src = report.checkout_src(ref, self.work / f"src-{len(self.results['runs'])}")
            if src is None:
                self.results.setdefault("skipped", []).append(f"{label} ({ref}): not in this clone")
                continue
            env = h.server_env(self.registry, "cnn", src)
            for _ in range(2):
                with h.start("startup", h.digitserve_cmd(src), env, self.logs) as s:
                    self.results["startup"].append({"models": "cnn", "seconds": s.ready_s, "ref": ref, "label": label})
            with self.server(f"@{ref[:10]} {label}", src=src) as s:
                self.results["startup"].append({"models": "cnn", "seconds": s.ready_s, "ref": ref, "label": label})
                for c in (1, 4, 16, 64):
                    self.load(s, "one", c, ref=ref, label=label)
                self.load(s, "batch", 16, ref=ref, label=label)


def wait_for_quiet(max_load: float, patience_s: float) -> float:
    """The 1-minute load average, after waiting up to `patience_s` for it to fall below `max_load`."""
    deadline = time.monotonic() + patience_s
    while (load := report.loadavg()) > max_load and time.monotonic() < deadline:
        print(f"load average {load:.2f} > {max_load}: waiting for other work to finish", flush=True)
        time.sleep(30)
    return load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a second per scenario; checks the harness, not speed")
    parser.add_argument("--out", type=Path, default=h.BENCH / "results.md")
    parser.add_argument("--ref", action="append", default=[], metavar="LABEL=REF", help="also run a commit")
    parser.add_argument("--wait-for-quiet", type=float, default=900, metavar="S", help="wait for load < 0.5")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    refs = HISTORY + [tuple(r.split("=", 1)) if "=" in r else (r, r) for r in args.ref]  # type: ignore[misc]
    load_before = report.loadavg() if args.smoke else wait_for_quiet(MAX_START_LOAD, args.wait_for_quiet)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="digitserve-bench-") as tmp:
        bench = Bench(plan, Path(tmp))
        steps = [bench.compute_limits, bench.startup, bench.bare, bench.litserve, bench.digitserve, bench.fresh_starts]
        if plan.extras:
            steps += [bench.one_worker, bench.no_batching, lambda: bench.history(refs)]
        for step in steps:
            step()
    bench.results.update(
        machine=report.machine(load_before), started=started, seconds=time.time() - started, smoke=args.smoke
    )
    bench.results["command"] = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.markdown(bench.results))
    args.out.with_suffix(".json").write_text(json.dumps(bench.results, indent=1, default=str))
    print(f"wrote {args.out}")
    if not args.smoke and args.out == h.BENCH / "results.md" and report.update_readme(bench.results, README):
        print(f"updated the figures in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
