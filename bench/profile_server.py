"""Where a loaded server spends its time: py-spy samples a `digitserve serve` under wrk load.

    .venv/bin/python bench/profile_server.py --body one --seconds 10 --out /tmp/prof   # 1 image, 64 conns
    .venv/bin/python bench/profile_server.py --body batch --env DIGITSERVE_RUNTIME_THREADS=1

Writes py-spy's collapsed stacks (flamegraph.pl or speedscope render them), and prints the functions with the most
samples, by own time and including callees, per thread (the event loop vs the forward thread).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
from pathlib import Path

import harness as h


def record(server: h.Server, args: argparse.Namespace, out: Path) -> Path:
    stacks = out / f"{args.body}.txt"
    content_type = f"multipart/form-data; boundary={h.BOUNDARY}" if args.body == "upload" else h.JSON
    url = f"{server.url}/v1/models/{args.model}/predict" + ("/upload" if args.body == "upload" else "")
    bodies = h.write_payloads(out / "bodies")
    load = h.wrk_start(url, bodies[args.body], args.connections, args.seconds + 2, content_type)
    spy = ["py-spy", "record", "--pid", str(server.process.pid), "--duration", str(args.seconds), "--rate", "250"]
    spy = [str(Path(h.PYTHON).with_name("py-spy")), *spy[1:], "--nonblocking", "--threads"]
    subprocess.run([*spy, "--format", "raw", "-o", str(stacks)], check=True, capture_output=True)
    print(h.wrk_result(load, 64 if args.body == "batch" else 1))
    return stacks


def summarise(stacks: Path, top: int = 25) -> None:
    """Own and inclusive samples per function, grouped by thread name."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in stacks.read_text().splitlines():
        path, _, count = line.rpartition(" ")
        frames = path.split(";")
        thread = frames[0].split(": ", 1)[-1]  # "thread (7433): MainThread" -> MainThread
        own[thread][frames[-1]] += int(count)
        for frame in set(frames[1:]):
            total[thread][frame] += int(count)
    for thread in sorted(own, key=lambda t: -sum(own[t].values())):
        n = sum(own[thread].values())
        print(f"\n== {thread}: {n} samples\n-- own")
        for frame, c in own[thread].most_common(top):
            print(f"{c / n:6.1%}  {frame}")
        print("-- including callees")
        for frame, c in total[thread].most_common(top):
            print(f"{c / n:6.1%}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--body", choices=["one", "batch", "upload"], default="one")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="server setting")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="digitserve-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    registry, _ = h.make_registry(out / "registry")
    env = h.server_env(registry, args.model)
    env.update(kv.split("=", 1) for kv in args.env)
    with h.start("profiled", h.digitserve_cmd(), env, out) as server:
        stacks = record(server, args, out)
    summarise(stacks, args.top)
    print(f"\ncollapsed stacks: {stacks} (flamegraph.pl or speedscope.app render them)")


if __name__ == "__main__":
    main()
