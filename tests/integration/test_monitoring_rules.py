"""Monitoring artefacts: the alert rules pass promtool's check and their unit tests, every alert
says how bad it is and where its runbook is, the dashboard's queries parse and name only series
the server exports, and production evaluates the very rules tested here (the AMP rule group is
infra/prometheus/alerts.yml) and scales on the series its collector sends to CloudWatch.

promtool comes with Debian's prometheus package (`make system-deps`). No server is started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from test_infra import COMPOSE, INFRA, CloudFormationLoader, resources

PROMETHEUS = INFRA / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = INFRA / "grafana" / "digitserve.json"
PROVISIONING = INFRA / "grafana" / "provisioning"

# A panel whose queries can only return data after an event (a rollout, feedback, a refusal) says
# so in its description; every other panel must show data under plain prediction load.
EMPTY_UNTIL = "Empty until"


def histogram(name: str) -> set[str]:
    return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


# The contract between the server and its dashboard and alerts: every series /metrics shows, by
# the name it shows. A query naming anything else draws nothing, silently.
KNOWN_METRICS = frozenset(
    {
        "digitserve_requests_total",
        *histogram("digitserve_request_latency_seconds"),
        "digitserve_protocol_refusals_total",
        "digitserve_refusals_total",
        "digitserve_requests_in_progress",
        "digitserve_workers",
        *histogram("digitserve_event_loop_lag_seconds"),
        "digitserve_event_loop_lag_max_seconds",
        "digitserve_images_total",
        "digitserve_queue_depth",
        *histogram("digitserve_batch_size"),
        "digitserve_model_version_info",
        "digitserve_model_reload_failures_total",
        "digitserve_model_reload_error",
        "digitserve_model_swaps_total",
        "digitserve_registry_reachable",
        "digitserve_feedback_total",
        "digitserve_feedback_spooled",
        "digitserve_feedback_written_total",
        *histogram("digitserve_routed_latency_seconds"),
        "digitserve_routed_failures_total",
        "digitserve_rollout_compared_total",
        "digitserve_rollout_agreed_total",
        "digitserve_rollout_comparisons_dropped_total",
        "digitserve_canary_paused_total",
        "digitserve_canary_rollbacks_total",
        "digitserve_answers_total",
        *histogram("digitserve_answer_confidence"),
        *histogram("digitserve_input_ink_fraction"),
        *histogram("digitserve_input_aspect"),
        "digitserve_drift",
        "up",  # written by Prometheus (or the collector) for each scrape target
    }
)

# Grafana's variables, as a plain Prometheus would read them (`$model` is a regex of models).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$model": ".*"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
PROMQL_WORDS |= {"offset", "bool", "inf", "nan"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or next((p for p in ["/usr/bin/promtool"] if Path(p).exists()), None)
    if found is None:
        pytest.fail("promtool is not installed: run `make system-deps` (Debian's prometheus package brings it)")
    return found


def run_promtool(promtool: str, *args: str, cwd: Path | None = None) -> str:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def alert_rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    assert group["name"] == "digitserve"
    return [r for r in group["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def query_panels() -> list[dict[str, Any]]:
    return [p for p in panels(dashboard()) if p.get("targets")]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel query and annotation query."""
    found = [(f"panel {p['title']!r}", t["expr"]) for p in query_panels() for t in p["targets"]]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard()["annotations"]["list"] if "expr" in a]
    return found


def as_prometheus_reads_it(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects: its identifiers that are not functions, keywords,
    label names (in {...} or a by/on list), durations or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


# ---- alert rules ------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool):
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", str(ALERTS))


def test_alert_rules_pass_their_unit_tests(promtool):
    run_promtool(promtool, "test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS)


def test_local_prometheus_config_is_valid_and_loads_the_rules(promtool):
    output = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS)
    assert "1 rule files found" in output
    assert yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"] == [ALERTS.name]


def test_every_alert_has_a_severity_a_summary_and_a_runbook():
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook"] == f"docs/observability.md#{name.lower()}", name
    assert "DigitserveAnswerDrift" in {r["alert"] for r in rules}


def test_every_alert_is_unit_tested_firing_and_not_firing():
    fired, quiet = set(), set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), "alerts no test sees fire"
    assert names - quiet == set(), "alerts no test sees stay quiet"


# ---- the dashboard ------------------------------------------------------------------------------


def test_dashboard_queries_parse(promtool, tmp_path):
    """promtool parses each query as the expression of a recording rule."""
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": as_prometheus_reads_it(e)} for i, (_, e) in enumerate(queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(promtool, "check", "rules", str(path))


def test_dashboard_reads_a_datasource_variable_and_filters_by_model():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    model = variables["model"]
    assert model["definition"] == "label_values(digitserve_model_version_info, model)"
    assert model["query"]["query"] == model["definition"]
    assert board["schemaVersion"] >= 39
    for panel in query_panels():
        sources = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(s == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for s in sources), panel["title"]


def test_dashboard_rates_use_grafanas_intervals():
    """Rate windows follow the scrape interval ($__rate_interval), or span the range shown."""
    for where, expr in dashboard_queries():
        windows = re.findall(r"\b(?:rate|increase|irate|delta|deriv)\([^\[]*\[([^\]]+)\]", expr)
        assert all(w in {"$__rate_interval", "$__range"} for w in windows), f"{where}: {windows}"


def test_dashboard_panels_have_unique_titles_and_descriptions():
    titles = [p["title"] for p in query_panels()]
    assert len(titles) == len(set(titles)), titles
    assert all(p.get("description", "").strip() for p in query_panels())


def test_at_least_eight_panels_show_data_under_plain_load():
    always = [p["title"] for p in query_panels() if EMPTY_UNTIL not in p["description"]]
    assert len(always) >= 8, always
    marked = {p["title"] for p in query_panels()} - set(always)
    assert {"Canary and shadow agreement", "Feedback right / wrong", "Canary rollbacks"} <= marked


def test_dashboard_and_alerts_name_only_exported_series():
    queries = dashboard_queries() + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    for where, expr in queries:
        names = metric_names(as_prometheus_reads_it(expr))
        assert names, f"{where}: no series found in {expr!r}"
        assert names <= KNOWN_METRICS, f"{where}: unknown series {sorted(names - KNOWN_METRICS)}"


# ---- production (infra/service.yaml) ------------------------------------------------------------


def service_template() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load((INFRA / "service.yaml").read_text(), Loader=CloudFormationLoader)
    return doc


def test_production_evaluates_the_same_alert_rules():
    rules = resources("service.yaml")["AlertRules"]["Properties"]
    assert yaml.safe_load(rules["Data"]) == yaml.safe_load(ALERTS.read_text()), (
        "AlertRules' Data in infra/service.yaml differs from infra/prometheus/alerts.yml: copy the file into it"
    )
    assert rules["Workspace"] == {"!GetAtt": "Workspace.Arn"}


def test_collector_scrapes_the_server_and_sends_cloudwatch_the_scaling_signal():
    service = resources("service.yaml")
    containers = {c["Name"]: c for c in service["TaskDefinition"]["Properties"]["ContainerDefinitions"]}
    environment = {e["Name"]: e["Value"] for e in containers["metrics-collector"]["Environment"]}
    config = yaml.safe_load(environment["AOT_CONFIG_CONTENT"]["!Sub"])

    (scrape,) = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert scrape["job_name"] == "digitserve", "the alerts select job=digitserve"
    (port,) = [p["ContainerPort"] for p in containers["digitserve"]["PortMappings"]]
    assert scrape["static_configs"] == [{"targets": [f"localhost:{port}"]}]

    pipelines = config["service"]["pipelines"]
    everything = next(p for p in pipelines.values() if p["exporters"] == ["prometheusremotewrite"])
    assert not any(name.startswith("filter") for name in everything["processors"]), "AMP gets every series"
    scaling = next(p for p in pipelines.values() if p["exporters"] == ["awsemf"])
    (kept,) = [config["processors"][n] for n in scaling["processors"] if n.startswith("filter")]
    sent = set(kept["metrics"]["include"]["metric_names"])
    assert sent == {"digitserve_requests_in_progress", "digitserve_queue_depth"} and sent <= KNOWN_METRICS

    policy = service["InProgressScaling"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    metric = policy["CustomizedMetricSpecification"]
    assert metric["MetricName"] in sent
    assert metric["Namespace"] == config["exporters"]["awsemf"]["namespace"]
    dimensions = next(
        d["dimensions"]
        for d in config["exporters"]["awsemf"]["metric_declarations"]
        if re.fullmatch(d["metric_name_selectors"][0], metric["MetricName"])
    )
    assert dimensions == [[d["Name"] for d in metric["Dimensions"]]]


def test_task_role_may_write_telemetry_only_to_this_stacks_workspace_and_log_group():
    policy = resources("service.yaml")["TelemetryPolicy"]["Properties"]
    assert policy["Roles"] == [{"!Ref": "TaskRole"}]
    grants = {
        action: statement["Resource"]
        for statement in policy["PolicyDocument"]["Statement"]
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    assert grants == {
        "aps:RemoteWrite": {"!GetAtt": "Workspace.Arn"},
        "logs:CreateLogStream": {"!GetAtt": "MetricsLogGroup.Arn"},
        "logs:DescribeLogStreams": {"!GetAtt": "MetricsLogGroup.Arn"},
        "logs:PutLogEvents": {"!GetAtt": "MetricsLogGroup.Arn"},
    }


def test_task_cpu_is_split_between_server_and_collector_for_every_task_size():
    template = service_template()
    split = template["Mappings"]["CpuSplit"]
    assert set(split) == set(template["Parameters"]["Cpu"]["AllowedValues"])
    for cpu, shares in split.items():
        assert shares["Server"] + shares["Collector"] == int(cpu), cpu
    collector = next(
        c
        for c in template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
        if c["Name"] != "digitserve"
    )
    assert collector["Essential"] is False, "a stopped collector must not stop serving"
    assert collector["Memory"] <= int(template["Parameters"]["Memory"]["Default"]) // 4


# ---- the local stack (infra/compose.yaml) ----------------------------------------------------------


def test_compose_runs_prometheus_and_grafana_on_the_repositorys_files():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name} image is not pinned: {image}"
        sources = [v.split(":")[0] for v in services[name]["volumes"] if v.startswith(".")]
        assert sources and all((INFRA / s).exists() for s in sources), sources

    (job,) = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    ((target,),) = [c["targets"] for c in job["static_configs"]]
    host, port = target.split(":")
    assert host in services["server"]["networks"]["default"]["aliases"], "Prometheus scrapes a name the server lacks"
    assert f"127.0.0.1:{port}:{port}" in services["server"]["ports"]

    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and f"127.0.0.1:{url.port}:{url.port}" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "digitserve.yaml").read_text())["providers"]
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"] if v.startswith("./grafana/digitserve.json")}
    assert mounted == {f"{provider['options']['path']}/{DASHBOARD.name}"}
