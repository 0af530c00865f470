"""Training, evaluation and comparison scripts, run as a user would run them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.net import free_port

from digitserve.models.export import OPSET
from digitserve.registry import ModelRegistry
from digitserve.runtime import OnnxModel, RuntimeOptions
from digitserve.runtime.reference import AnswerReference

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGETS = {"cnn": 0.996, "vit": 0.993}


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_registry(smoke_copy: Path) -> Path:
    """A registry with a smoke-trained cnn (v1, v2) and vit (v1): `train.py --smoke` run three times
    (conftest.py's `smoke_trained`, shared with the other modules that need smoke-trained models)."""
    return smoke_copy


def test_smoke_training_publishes_a_complete_version(smoke_registry: Path) -> None:
    registry = ModelRegistry.open(str(smoke_registry))
    assert registry.list_versions("cnn") == [1, 2]
    manifest = registry.manifest("cnn", 1)
    assert manifest.architecture == "cnn" and manifest.config["channels"] == [32, 64, 128]
    training = manifest.extra["training"]
    assert training["smoke"] is True and training["hardware"]["cpu_count"] >= 1
    assert len(manifest.extra["data"]["train_sha256"]) == 64
    assert manifest.golden is not None and manifest.golden.logits.shape == (8, 10)
    assert manifest.extra["preprocessing"]["mean"] == pytest.approx(0.1307)
    reference = AnswerReference.from_manifest(manifest.extra, "cnn v1")  # what the drift gauge compares with
    assert reference is not None and reference.count == training["val_size"]
    # Both artifacts, sha256-verified: the weights and the ONNX graph that reproduces the golden logits.
    assert manifest.onnx is not None and (manifest.onnx.format, manifest.onnx.opset) == ("onnx", OPSET)
    registry.read_artifact("cnn", 1, "weights")
    _, graph = registry.read_artifact("cnn", 1, "onnx")
    served = OnnxModel(graph, RuntimeOptions(intra_op_threads=1)).logits(manifest.golden.images)
    assert manifest.golden.worst_difference(served) <= manifest.golden.atol
    assert manifest.metrics["accuracy"] == json.loads(registry.read_report("cnn", 1, "metrics.json"))["accuracy"]
    metrics = json.loads(registry.read_report("cnn", 1, "metrics.json"))
    assert 0 <= metrics["accuracy"] <= 1 and metrics["num_examples"] == 1000
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    assert sum(map(sum, metrics["confusion_matrix"])) == 1000
    assert metrics["params"] > 0 and metrics["train_seconds"] > 0 and "hardware" in metrics
    assert len(metrics["history"]) == 1 and {"train_loss", "val_accuracy"} <= set(metrics["history"][0])
    for name in ("confusion_matrix.png", "misclassified.png", "curves.png", "reliability.png", "not_a_digit.png"):
        assert registry.read_report("cnn", 1, name).startswith(PNG_MAGIC)


def test_smoke_training_calibrates_and_reports_trust(smoke_registry: Path) -> None:
    """The temperature and threshold are recorded with how they were chosen; metrics.json has
    ECE and NLL before and after, the not-a-digit rates and the robustness set."""
    registry = ModelRegistry.open(str(smoke_registry))
    manifest = registry.manifest("cnn", 1)
    calibration, rule = manifest.extra["calibration"], manifest.extra["not_a_digit"]
    assert calibration["method"] == "temperature" and 0.05 <= calibration["temperature"] <= 20
    assert calibration["validation_nll_after"] <= calibration["validation_nll_before"] + 1e-6
    assert rule["score"] == "confidence" and 0.1 <= rule["threshold"] < 1
    assert rule["validation_negatives"] == 256 and 0 <= rule["validation_negatives_rate"] <= 1
    metrics = json.loads(registry.read_report("cnn", 1, "metrics.json"))
    ece = metrics["calibration"]
    assert ece["temperature"] == calibration["temperature"] and ece["ece_bins"] == 15
    assert {"test_ece_before", "test_ece_after", "test_nll_before", "test_nll_after"} <= set(ece)
    assert sum(b["count"] for b in ece["reliability_after"]) == 1000
    assert metrics["not_a_digit"]["threshold"] == rule["threshold"]
    assert metrics["not_a_digit"]["held_out_negatives"] == 256
    assert set(metrics["not_a_digit"]["held_out_by_kind"]) <= {
        "letters",
        "shapes",
        "scribbles",
        "strokes",
        "textures",
        "clutter",
    }
    variants = metrics["robustness"]["variants"]
    assert set(variants) == {"lowres-8", "lowres-12", "lowres-16", "thin", "thick", "photo", "canvas"}
    assert all(0 <= v["answered_correctly"] <= v["accuracy"] <= 1 for v in variants.values())
    assert manifest.metrics["test_ece"] == ece["test_ece_after"]


def test_a_checkpoint_publishes_the_same_weights_without_training(smoke_registry: Path, tmp_path: Path) -> None:
    """`--from-checkpoint` on the file the smoke run of cnn seed 0 wrote with `--checkpoint`
    (conftest.py) publishes what that run published, without training."""
    checkpoint = smoke_registry.parent / "checkpoints" / "cnn-0.safetensors"
    args = ("training/train.py", "--arch", "cnn", "--smoke", "--seed", "0")
    again = run(*args, "--from-checkpoint", str(checkpoint), "--registry", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (
        ModelRegistry.open(str(smoke_registry)).manifest("cnn", 1),
        ModelRegistry.open(str(tmp_path / "b")).manifest("cnn", 1),
    )
    assert a.weights.sha256 == b.weights.sha256 and a.extra["calibration"] == b.extra["calibration"]
    assert a.extra["training"]["train_seconds"] == b.extra["training"]["train_seconds"]
    assert "epoch 1/1" not in again.stderr + again.stdout, "it trained again"


def test_runs_with_the_same_seed_give_the_same_weights(smoke_registry: Path, tmp_path: Path) -> None:
    proc = run("training/train.py", "--arch", "cnn", "--smoke", "--seed", "0", "--registry", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = ModelRegistry.open(str(tmp_path)).manifest("cnn", 1).weights.sha256
    assert again == ModelRegistry.open(str(smoke_registry)).manifest("cnn", 1).weights.sha256


def test_data_parallel_training_under_torchrun(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            # torchrun hands --master_port=0 to the ranks as is (they would dial port 0): a real free port.
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "training/train.py",
            "--arch",
            "cnn",
            "--smoke",
            "--limit-train",
            "256",
            "--limit-test",
            "200",
            "--registry",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    registry = ModelRegistry.open(str(tmp_path))
    assert registry.list_versions("cnn") == [1]  # only rank 0 publishes
    assert registry.manifest("cnn", 1).extra["training"]["world_size"] == 2


def test_evaluate_prints_json_metrics_last(smoke_registry: Path) -> None:
    ModelRegistry.open(str(smoke_registry)).move_alias("cnn", "production", 2, reason="test")
    proc = run(
        "training/evaluate.py",
        "--model",
        "cnn",
        "--alias",
        "production",
        "--registry",
        str(smoke_registry),
        "--limit",
        "500",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"] == 2 and result["num_examples"] == 500 and 0 <= result["accuracy"] <= 1
    # with the version's calibration and threshold, as served
    manifest = ModelRegistry.open(str(smoke_registry)).manifest("cnn", 2)
    assert result["calibration"]["temperature"] == manifest.extra["calibration"]["temperature"]
    assert result["not_a_digit"]["threshold"] == manifest.extra["not_a_digit"]["threshold"]
    assert result["not_a_digit"]["held_out_negatives"] == 500 and result["robustness"]["count"] == 500


def test_evaluate_refuses_a_tampered_version(smoke_registry: Path, tmp_path: Path) -> None:
    copy = tmp_path / "reg"
    shutil.copytree(smoke_registry, copy)
    onnx = ModelRegistry.open(str(copy)).manifest("vit", 1).onnx
    assert onnx is not None
    blob = copy / onnx.key("vit")  # evaluate.py measures what serves: the ONNX artifact
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 0xFF]))
    proc = run("training/evaluate.py", "--model", "vit", "--version", "1", "--registry", str(copy))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: vit v1: onnx sha256") and len(proc.stderr.strip().splitlines()) == 1


def test_compare_writes_a_report(smoke_registry: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.md"
    proc = run(
        "training/compare.py",
        "--a",
        "cnn:1",
        "--b",
        "vit:1",
        "--registry",
        str(smoke_registry),
        "--out",
        str(out),
        "--speed-seconds",
        "0.2",  # the report's speed columns, not the figures: they measure the machine
        "--limit",
        "2000",
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "on the MNIST test set (2,000 images)" in text and "| accuracy |" in text
    assert "images/s, batch 256" in text and "Right only by cnn v1" in text
    assert (tmp_path / "compare_disagreements.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_shipped_production_versions_reach_their_targets(model: str) -> None:
    """The baselines in registry/ re-measured on the full official test set."""
    proc = run("training/evaluate.py", "--model", model, "--alias", "production", "--registry", str(ROOT / "registry"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_examples"] == 10000
    assert result["accuracy"] >= TARGETS[model], result
