"""infra/k8s/ against the Kubernetes and KServe schemas, and against the server it deploys.

No cluster and no network. Every manifest validates with kubernetes_validate (the API's own
schemas, shipped in the package, unknown fields refused) at the oldest Kubernetes the manifests
need and the newest the package knows; the KServe InferenceService validates against KServe's CRD
schema, vendored in tests/data/. Then what the manifests say about the server is checked against
the server itself: the probes ask routes the app serves, the container ports are the ports the
settings give, the settings load, the grace period covers the drain, and the Service, the HPA, the
PodDisruptionBudget and the ServiceAccount point at the pods.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match

from digitserve.config import ENV_PREFIX, GROUPS, Settings, env_name, load_settings, state_dir
from digitserve.serving.api import health
from digitserve.serving.api.v2 import routes as v2
from digitserve.serving.app import create_app
from digitserve.serving.http.shutdown import ANSWER_ACCEPTED_S, READ_LIMIT_S
from digitserve.serving.observability.metrics import ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
KSERVE_SCHEMA = REPO / "tests" / "data" / "kserve_inferenceservice_v1beta1.schema.yaml"
OLDEST_KUBERNETES = "1.30.0"  # the preStop `sleep` action: beta, on by default, from 1.30
KUBERNETES_VERSIONS = [OLDEST_KUBERNETES, kubernetes_validate.latest_version()]
KSERVE_API = "serving.kserve.io/v1beta1"
LIVE = {health.healthz, v2.live}  # answer while the event loop runs, whatever the registry does
READY = {health.readyz, v2.ready}  # every model loaded and not draining
PODS = ["Deployment", "InferenceService"]
OUTSIDE_SETTINGS = {f"{ENV_PREFIX}STATE_DIR"}  # read by config.state_dir(), not a Settings field


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = [(path, doc) for path in manifest_files() for doc in documents(path)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in MANIFESTS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in infra/k8s, found {len(found)}"
    return found[0]


def pod_spec(kind: str) -> dict[str, Any]:
    """The pod's spec: the Deployment's template, or the InferenceService's predictor (a PodSpec inline)."""
    return one(kind)["spec"]["template"]["spec"] if kind == "Deployment" else one(kind)["spec"]["predictor"]


def container(kind: str) -> dict[str, Any]:
    containers = pod_spec(kind)["containers"]
    assert len(containers) == 1, f"the {kind} runs one container, the server"
    return containers[0]


def settings_map() -> dict[str, str]:
    """The ConfigMap both pods take their environment from."""
    names = {ref["configMapRef"]["name"] for kind in PODS for ref in container(kind).get("envFrom", [])}
    assert len(names) == 1, f"both pods read one settings ConfigMap, not {sorted(names)}"
    return one("ConfigMap", names.pop())["data"]


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_environment(kind: str) -> dict[str, str]:
    """The DIGITSERVE_* variables the kubelet gives the server: the ConfigMap, then the worker count
    it computes from the CPU request (a resourceFieldRef with divisor 1 rounds up)."""
    env = {k: v for k, v in settings_map().items() if k.startswith(ENV_PREFIX)}
    for var in container(kind).get("env", []):
        field = var.get("valueFrom", {}).get("resourceFieldRef")
        if field is not None:  # e.g. requests.cpu
            section, resource = field["resource"].split(".")
            amount = container(kind)["resources"][section][resource]
            env[var["name"]] = str(math.ceil(cpu_cores(amount) / cpu_cores(field.get("divisor", "1"))))
        elif "value" in var:
            env[var["name"]] = var["value"]
    return env


@pytest.fixture
def pod_settings(kind: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The server's settings as the pod of the test's `kind` has them."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in pod_environment(kind).items():
        monkeypatch.setenv(name, value)
    return load_settings()


# ---- the schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "path, doc",
    [(p, d) for p, d in MANIFESTS if d["apiVersion"] != KSERVE_API],
    ids=lambda v: str(v.relative_to(K8S)) if isinstance(v, Path) else v["kind"],
)
def test_manifest_validates_against_the_kubernetes_schemas(path, doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{path.relative_to(REPO)}: {doc['kind']} at {where or '/'}: {exc.message} (Kubernetes {version})")


def strict(schema: Any) -> Any:
    """The vendored CRD schema as the API server's strict field validation reads it: an object
    with listed properties refuses any other; a stub trimmed from the vendored copy refuses all."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("x-digitserve-trimmed"):
        return False
    out = {k: strict(v) if k in ("items", "additionalProperties") else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    return out


def kserve_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(strict(yaml.safe_load(KSERVE_SCHEMA.read_text())))


def test_inference_service_validates_against_the_kserve_crd():
    isvc = one("InferenceService")
    assert isvc["apiVersion"] == KSERVE_API
    problems = []
    for error in sorted(kserve_validator().iter_errors(isvc), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in error.absolute_path)
        trimmed = " (trimmed from tests/data's copy: re-vendor it)" if error.schema is False else ""
        problems.append(f"{where}: {error.message}{trimmed}")
    assert not problems, "the InferenceService does not match KServe's CRD:\n" + "\n".join(problems)


def test_the_kserve_schema_check_refuses_an_unknown_field():
    """The CRD itself lets unknown fields through (they are pruned): the check above must not."""
    isvc = copy.deepcopy(one("InferenceService"))
    isvc["spec"]["predictor"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert not kserve_validator().is_valid(isvc)


def kustomized(directory: Path) -> set[Path]:
    """The files a kustomization directory applies, through the directories it includes."""
    files: set[Path] = set()
    for entry in yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]:
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory.relative_to(REPO)}/kustomization.yaml lists {entry}, which is missing"
        files |= kustomized(target) if target.is_dir() else {target}
    return files


def test_every_manifest_is_applied_by_a_kustomization():
    applied = set().union(*(kustomized(k.parent) for k in K8S.rglob("kustomization.yaml")))
    assert {p.resolve() for p in manifest_files()} == applied


# ---- the pods against the server ----------------------------------------------------------------


def flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes in the order the router tries them, included routers opened."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from flat(included.routes) if included is not None else [route]


def endpoint_of(app: Starlette, path: str) -> Callable[..., Any] | None:
    """What answers a GET of `path` -- the kubelet's probe -- in this app, if anything does."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": b""}
    routes = (r for r in flat(app.router.routes) if r.matches(scope)[0] == Match.FULL)
    return getattr(next(routes, None), "endpoint", None)


@pytest.mark.parametrize("kind", PODS)
def test_probes_ask_routes_the_app_serves(kind):
    app, server = create_app(Settings()), container(kind)
    for probe, meaning in [("startupProbe", LIVE), ("livenessProbe", LIVE), ("readinessProbe", READY)]:
        check = server[probe]["httpGet"]
        assert check["port"] == "http", f"{kind} {probe} asks port {check['port']}, not the server's HTTP port"
        answer = endpoint_of(app, check["path"])
        assert answer is not None, f"{kind} {probe}: the app serves no GET {check['path']}"
        assert answer in meaning, f"{kind} {probe} asks {check['path']}, which answers another question"


@pytest.mark.parametrize("kind", PODS)
def test_container_ports_are_the_ports_the_settings_give(kind):
    ports, cm = container(kind)["ports"], settings_map()
    by_name = {p["name"]: p["containerPort"] for p in ports}
    assert by_name == {"http": int(cm["DIGITSERVE_PORT"]), "grpc": int(cm["DIGITSERVE_GRPC_PORT"])}
    if kind == "InferenceService":  # KServe: the first port becomes port 80, a "grpc" name gets h2c
        assert ports[0]["name"] == "http" and "grpc" in ports[1]["name"]


@pytest.mark.parametrize("kind", PODS)
def test_the_settings_load_as_the_pod_has_them(kind, pod_settings):
    cm = settings_map()
    assert (pod_settings.host, pod_settings.port) == ("0.0.0.0", int(cm["DIGITSERVE_PORT"]))
    assert pod_settings.registry.startswith("s3://") and pod_settings.workers == "2"
    assert pod_settings.grpc_port == int(cm["DIGITSERVE_GRPC_PORT"])


def test_every_setting_in_the_configmap_is_one_the_server_reads():
    """A misspelt DIGITSERVE_* name is ignored by the server without a word: catch it here."""
    known = {ENV_PREFIX + f.upper() for f in Settings.model_fields if f not in GROUPS} | OUTSIDE_SETTINGS
    known |= {ENV_PREFIX + env_name(group, f) for group in GROUPS.values() for f in group.model_fields}
    ours = {k for k in settings_map() if k.startswith(ENV_PREFIX)}
    assert ours <= known, f"not settings of the server: {sorted(ours - known)}"


@pytest.mark.parametrize("kind", PODS)
def test_workers_follow_the_cpu_request_of_two_cores(kind):
    server = container(kind)
    assert cpu_cores(server["resources"]["requests"]["cpu"]) == 2
    (workers,) = [v for v in server["env"] if v["name"] == "DIGITSERVE_WORKERS"]
    assert workers["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert "DIGITSERVE_WORKERS" not in settings_map(), "the pod spec sets the workers from its CPU request"
    assert settings_map()["DIGITSERVE_RUNTIME_THREADS"] == "1"
    flags = [a for a in server["command"] + server.get("args", []) if a.startswith("--")]
    assert server["command"][:2] == ["digitserve", "serve"] and not flags, "flags would override the settings"


@pytest.mark.parametrize("kind", PODS)
def test_what_the_server_writes_lies_on_the_pods_volumes(kind, pod_settings):
    volumes = {v["name"]: v for v in pod_spec(kind)["volumes"]}
    mounts = [Path(m["mountPath"]) for m in container(kind)["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    tmp = Path(settings_map().get("TMPDIR", "/tmp"))  # tempfile: the multi-worker runtime folder
    written = [pod_settings.cache_dir, pod_settings.feedback.spool_dir, state_dir(), tmp]
    for path in written:
        assert any(path.is_relative_to(m) for m in mounts), f"{kind}: {path} is on the read-only root filesystem"


@pytest.mark.parametrize("kind", PODS)
def test_the_grace_period_covers_the_drain(kind, pod_settings):
    """SIGKILL must not cut the drain short: the preStop pause, the drain's grace (readiness 503),
    the listener's close (ANSWER_ACCEPTED_S + READ_LIMIT_S), then uvicorn's wait for requests in
    flight -- and, with gRPC on, the gRPC server's own wait, which the app's lifespan runs after
    uvicorn's (serving/app.py)."""
    pause = container(kind)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 5, "the pod must keep serving while proxies learn it has left the endpoints"
    http = pod_settings.http
    in_flight = http.graceful_shutdown_s * (2 if settings_map().get("DIGITSERVE_GRPC_PORT") else 1)
    budget = pause + http.shutdown_grace_s + ANSWER_ACCEPTED_S + READ_LIMIT_S + in_flight
    assert pod_spec(kind)["terminationGracePeriodSeconds"] > budget


@pytest.mark.parametrize("kind", PODS)
def test_the_pods_run_locked_down_as_the_images_user(kind):
    (uid,) = re.findall(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    pod, server = pod_spec(kind)["securityContext"], container(kind)["securityContext"]
    assert (pod["runAsUser"], pod["runAsNonRoot"], pod["seccompProfile"]["type"]) == (int(uid), True, "RuntimeDefault")
    assert server["readOnlyRootFilesystem"] is True and server["allowPrivilegeEscalation"] is False
    assert server["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("kind", PODS)
def test_the_pods_use_the_irsa_service_account(kind):
    account = one("ServiceAccount")
    assert pod_spec(kind)["serviceAccountName"] == account["metadata"]["name"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", role), role


# ---- what points at the pods --------------------------------------------------------------------


def pod_labels() -> dict[str, str]:
    return one("Deployment")["spec"]["template"]["metadata"]["labels"]


def test_the_service_sends_each_named_port_to_the_pods():
    service = one("Service")["spec"]
    assert service["selector"].items() <= pod_labels().items()
    names = {p["name"] for p in container("Deployment")["ports"]}
    ports = {p["name"]: p for p in service["ports"]}
    assert {p["targetPort"] for p in ports.values()} == names == set(ports)
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c", "gRPC is HTTP/2 without TLS"


def test_the_hpa_scales_the_deployment_on_cpu_and_requests_in_progress():
    hpa, deployment = one("HorizontalPodAutoscaler")["spec"], one("Deployment")
    target = (hpa["scaleTargetRef"][k] for k in ("apiVersion", "kind", "name"))
    assert tuple(target) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "a replica count in the manifest resets the HPA's on every apply"
    assert [m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert hpa_pods_metric() == in_progress_gauge()


def hpa_pods_metric() -> str:
    metrics = one("HorizontalPodAutoscaler")["spec"]["metrics"]
    (name,) = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
    return name


def in_progress_gauge() -> str:
    """The server's own gauge of predictions in progress, by the name /metrics gives it."""
    names = {m.name for m in ServiceMetrics().collectors.collect()}
    assert "digitserve_requests_in_progress" in names
    return "digitserve_requests_in_progress"


def test_the_adapter_rule_serves_the_hpa_metric_per_pod():
    config = yaml.safe_load(one("ConfigMap", "adapter-config")["data"]["config.yaml"])
    (rule,) = config["rules"]
    assert rule["seriesQuery"].split("{")[0] == in_progress_gauge() == rule["name"]["as"] == hpa_pods_metric()
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_the_disruption_budget_selects_the_pods_and_leaves_one_serving():
    budget = one("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels().items()
    assert one("HorizontalPodAutoscaler")["spec"]["minReplicas"] - budget["maxUnavailable"] >= 1


def test_the_inference_service_releases_by_alias_not_by_kserve_canary():
    isvc = one("InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard", "Knative allows one port"
    assert "canary" not in isvc["spec"] and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert container("InferenceService")["name"] == "kserve-container"
    assert settings_map()["DIGITSERVE_CANARY_ALIAS"], "the server's own canary is the way to release"
