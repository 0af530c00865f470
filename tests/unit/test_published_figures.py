"""The figures the README quotes are the committed results of the command it names."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from support.evidence import (
    AB_DIRECT_RESULTS,
    CPU_BUDGET_RESULTS,
    DECODE_PRICES_RESULTS,
    GRPC_RESULTS,
    OBSERVABILITY_RESULTS,
    OVERLOAD_RESULTS,
    PHOTO_BURST_RESULTS,
    PLACEMENT_RESULTS,
    PROTOCOL_RESULTS,
    ROOT,
    SHADOW_RESULTS,
    TRAIN_STEP_RESULTS,
    ab_table,
    cpu_budget_sentence,
    decode_prices_sentence,
    grpc_table,
    grpc_verdict,
    observability_costs_sentence,
    observability_table,
    overload_table,
    photo_burst_sentence,
    placement_sentence,
    protocol_table,
    protocol_verdict,
    shadow_one_connection,
    shadow_table,
    shadow_verdict,
    train_step_sentence,
)

README = ROOT / "README.md"


def test_the_overload_table_is_the_committed_results() -> None:
    doc = json.loads(OVERLOAD_RESULTS.read_text())
    assert {(r["workers"], r["payload"]) for r in doc["results"].values()} == {
        (w, p) for w in (1, 2) for p in ("png-28x28", "canvas-400x400")
    }, "every layout and payload of tests/integration/test_overload.py, from one run"
    table = overload_table(doc)
    text = "\n".join(line.strip() for line in README.read_text().splitlines())  # the table sits in a list item
    assert table in text, f"README's overload table differs from {OVERLOAD_RESULTS.name}; it should read:\n{table}"
    commits = {r["commit"] for r in doc["results"].values()}
    assert len(commits) == 1 and f"at {commits.pop()}" in text, "the README names the commit that was measured"


def test_the_readme_states_the_bounds_the_overload_test_enforces() -> None:
    source = (Path(__file__).parents[1] / "integration" / "test_overload.py").read_text()
    assert "SERVER_P99_BOUND_S = {1: 1.0, 2: 2.5}" in source and "CLIENT_P99_BOUND_S = 2.5" in source
    text = " ".join(README.read_text().split())
    assert "answered within 1 s inside the server with one worker, and within 2.5 s with the default layout" in text
    assert "2.5 s as the load generator sees it, from writing a request to reading its answer" in text


def test_the_performance_section_is_the_committed_benchmark() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import report
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    assert not results["smoke"], "the README quotes a full run, never a smoke run"
    block = report.readme_block(results)
    assert block in README.read_text(), f"README's performance block differs from bench/results.json:\n{block}"


def pct(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f} %"


def test_the_preprocessing_table_is_the_committed_results() -> None:
    doc = json.loads((ROOT / "bench" / "preprocess_results.json").read_text())
    text = (ROOT / "docs" / "preprocessing.md").read_text()
    zero, one = doc["seed 0"], doc["seed 1"]
    assert {zero["commit"], one["commit"]} == {zero["commit"]} and f"at {zero['commit']}" in text
    for seed in (zero, one):
        photos = seed["photolike"]
        assert f"{pct(photos['prepare'])} (photos {pct(photos['prepare_photos_only'])}" in text, photos["seed"]
    naive = f"{pct(zero['photolike']['naive_resize'])} / {pct(one['photolike']['naive_resize'])}"
    assert naive in text
    mnist = zero["mnist_test"]
    assert f"{pct(mnist['raw'], 2)} / {pct(mnist['mnist_style'], 2)}" in text
    readme = README.read_text()  # the README's shorter table, from the same file

    def short(value: float, digits: int = 1) -> str:  # the README writes "99.2%", not "99.2 %"
        return pct(value, digits).replace(" ", "")

    assert f"Measured at {zero['commit']} with the production CNN" in readme
    assert f"**{short(zero['photolike']['prepare'])}** / **{short(one['photolike']['prepare'])}**" in readme
    naive = [short(seed["photolike"][k]) for k in ("naive_resize", "naive_resize_inverted") for seed in (zero, one)]
    assert f"{naive[0]} / {naive[1]} (inverted: {naive[2]} / {naive[3]})" in readme
    assert f"{short(mnist['raw'], 2)} / {short(mnist['mnist_style'], 2)} (all" in readme


def test_the_feedback_cost_quoted_is_the_committed_results() -> None:
    doc = json.loads((ROOT / "bench" / "feedback_results.json").read_text())
    ratios = doc["ratio_on_over_off"]
    loss = f"{1 - statistics.median(r['rps'] for r in ratios.values()):.0%}"
    p99 = sorted(r["p99_ms"] for r in ratios.values())
    quoted = f"lost {loss} of their throughput and p99 rose {p99[0]:.2f}–{p99[-1]:.2f}×"
    for path in (README, ROOT / "docs" / "feedback.md"):
        text = " ".join(path.read_text().split())
        assert quoted in text, f"{path.name} should say: {quoted}"
    assert f"at {doc['commit']}" in " ".join(README.read_text().split())
    assert doc["feedback_accepted_per_s"] == doc["feedback_per_s"] == 20, "the rate quoted is the rate accepted"


def test_the_observability_cost_quoted_is_the_committed_results() -> None:
    doc = json.loads(OBSERVABILITY_RESULTS.read_text())
    bench = (ROOT / "bench" / "README.md").read_text()
    assert observability_table(doc) in bench
    assert f"Measured at {doc['commit']}" in " ".join(bench.split())
    assert observability_costs_sentence(doc) in " ".join(bench.split())
    assert doc["access_lines_per_run"]["off"] == [0] * doc["rounds"], "off writes no access line"
    assert min(doc["access_lines_per_run"]["on"]) > 0


def test_the_grpc_cost_quoted_is_the_committed_results() -> None:
    doc = json.loads(GRPC_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    table = grpc_table(doc)
    assert table in README.read_text(), f"README's gRPC table should read:\n{table}"
    assert f"at {doc['machine']['commit']}" in flat(README)
    assert grpc_verdict(doc) in flat(README), f"README should say: {grpc_verdict(doc)}"
    assert all(r["errors"] == 0 for transport in ("rest", "grpc") for r in doc[transport].values())


def test_the_shutdown_soak_quoted_is_the_committed_results() -> None:
    doc = json.loads((ROOT / "bench" / "shutdown_results.json").read_text())
    runs = {r["runs"] for r in doc["results"].values()}
    resets = sum(r["reset_before_close"] + r["reset_after_close"] for r in doc["results"].values())
    commits = {r["commit"] for r in doc["results"].values()}
    assert len(doc["results"]) == 2 and len(runs) == 1 and len(commits) == 1
    text = " ".join(README.read_text().split())
    in_flight = min(r["in_flight_at_sigterm_min"] for r in doc["results"].values())
    quoted = (
        f"{runs.pop()} of each at {commits.pop()} with `DIGITSERVE_SHUTDOWN_RUNS=20`, {resets} requests reset, "
        f"at least {in_flight} in flight at the signal"
    )
    assert quoted in text, quoted


def test_the_photo_burst_quoted_is_the_committed_results() -> None:
    doc = json.loads(PHOTO_BURST_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    quoted = photo_burst_sentence(doc)
    assert quoted in " ".join((ROOT / "docs" / "preprocessing.md").read_text().split()), f"it should say: {quoted}"


def flat(path: Path) -> str:
    return " ".join(path.read_text().split())


def test_the_shadow_cost_quoted_is_the_committed_results() -> None:
    doc = json.loads(SHADOW_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    bench = ROOT / "bench" / "README.md"
    assert shadow_table(doc) in bench.read_text(), f"bench/README.md's shadow table should read:\n{shadow_table(doc)}"
    assert shadow_verdict(doc) in flat(bench), f"it should say: {shadow_verdict(doc)}"
    quoted = shadow_one_connection(doc)
    assert quoted in flat(ROOT / "docs" / "rollouts.md"), f"docs/rollouts.md should say: {quoted}"


def test_the_protocol_cost_quoted_is_the_committed_results() -> None:
    doc = json.loads(PROTOCOL_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    bench = ROOT / "bench" / "README.md"
    table = protocol_table(doc)
    assert table in bench.read_text(), f"bench/README.md's protocol table should read:\n{table}"
    assert protocol_verdict(doc) in flat(bench), f"it should say: {protocol_verdict(doc)}"


def test_the_direct_path_before_and_after_is_the_committed_results() -> None:
    doc = json.loads(AB_DIRECT_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    assert doc["command"].startswith(f"bench/ab.py --ref {doc['ref']}"), "by the command bench/README.md names"
    table = ab_table(doc)
    assert table in (ROOT / "bench" / "README.md").read_text(), (
        f"bench/README.md's direct-path table should read:\n{table}"
    )


def test_the_worker_placement_quoted_is_the_committed_results() -> None:
    doc = json.loads(PLACEMENT_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    quoted = placement_sentence(doc)
    assert quoted in flat(ROOT / "bench" / "README.md"), f"bench/README.md should say: {quoted}"


def test_the_decode_prices_quoted_are_the_committed_results() -> None:
    doc = json.loads(DECODE_PRICES_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    quoted = decode_prices_sentence(doc)
    assert quoted in flat(ROOT / "docs" / "preprocessing.md"), f"it should say: {quoted}"
    over = {kind: r for kind, r in doc["results"].items() if r["measured_over_priced"] >= 1}
    assert not over, f"the docs say decoding takes less than its price; these took more: {over}"


def test_the_training_step_figures_quoted_are_the_committed_results() -> None:
    doc = json.loads(TRAIN_STEP_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    quoted = train_step_sentence(doc)
    assert quoted in flat(README), f"it should say: {quoted}"


def test_the_cpu_budget_quoted_is_the_committed_results() -> None:
    doc = json.loads(CPU_BUDGET_RESULTS.read_text())
    assert "changes" not in doc["machine"]["commit"], "measured on a committed tree"
    total = doc["cpu_s_per_1000"]  # medians over the rounds: the stages add up to the whole within a few %
    assert abs(sum(doc["stages"].values()) - total) < 0.05 * total, "the stages add up to the whole"
    quoted = cpu_budget_sentence(doc)
    assert quoted in flat(README), f"it should say: {quoted}"
    ranked = sorted(doc["stages"], key=lambda stage: -doc["stages"][stage])
    assert ranked[:2] == ["forward pass (ONNX Runtime)", "decode and preprocessing"], ranked  # what the README says
    assert "After the forward pass, the largest share is decoding and preprocessing" in flat(README)


def test_the_latency_rule_figures_in_the_rollouts_doc_are_the_rules() -> None:
    """docs/rollouts.md's examples of how many slow requests make a network slow are what
    `slow_requests_needed` computes."""
    from digitserve.serving.rollouts.watch import slow_requests_needed

    doc = flat(ROOT / "docs" / "rollouts.md")
    examples = ", ".join(f"{slow_requests_needed(n)} of {n:,}" for n in (5, 12, 100, 1000))
    assert f"({examples}: a binomial tail of 1%" in doc, examples
    shares = {n: slow_requests_needed(n) / n for n in range(5, 13)}  # 5-12 requests per network
    assert min(shares.values()) == shares[12] == 0.25 and max(shares.values()) == shares[6] == 0.5
    assert f"a quarter to a half of them ({slow_requests_needed(12)} of 12 to {slow_requests_needed(6)} of 6)" in doc
    assert (
        f"with 100 per network, on {slow_requests_needed(100)}%; with 1,000, on {slow_requests_needed(1000) / 10:.1f}%"
        in doc
    )
