"""The Open Inference Protocol over gRPC of a real two-worker `digitserve serve`
(`DIGITSERVE_GRPC_PORT`), spoken to by tritonclient's grpc module (the official client; in a
process of its own: tests/support/triton_grpc_client.py says why) and by a KServe-style client on
the package's compiled stubs, as KServe's `InferenceGRPCClient` uses its own.

What each must show: the same probabilities as REST for the same inputs (to 1e-6), the same
refusals with the gRPC status of their HTTP one and never INTERNAL, the health service, the
request id, the metrics and the access log, and a drain on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.descriptors import descriptor_fields
from support.net import free_port
from support.registries import add_shipped_version, copy_shipped, png_bytes
from support.server import CANARY_ENV, metric, start_server, stop_server, wait_until

from digitserve.data import load_mnist
from digitserve.serving.grpc.proto import open_inference_pb2 as pb
from digitserve.serving.grpc.proto.open_inference_pb2_grpc import GRPCInferenceServiceStub
from digitserve.serving.rollouts.watch import sticky_side

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRITON_CLIENT = REPO / "tests" / "support" / "triton_grpc_client.py"
MAX_IMAGES = 32
MAX_BODY_BYTES = 1024 * 1024
ENV = {
    "DIGITSERVE_MODELS": "cnn",
    "DIGITSERVE_WORKERS": "2",  # the default layout: both workers listen on the gRPC port
    "DIGITSERVE_MAX_IMAGES": str(MAX_IMAGES),
    "DIGITSERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
}


class Server:
    def __init__(self, url: str, grpc_address: str, log: Path) -> None:
        self.url, self.address, self.log = url, grpc_address, log
        self.channel = grpc.insecure_channel(grpc_address)
        self.stub = GRPCInferenceServiceStub(self.channel)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("grpc") / "server.log"
    port = free_port()
    process, url = start_server({**ENV, "DIGITSERVE_GRPC_PORT": str(port)}, log_path=log)
    served = Server(url, f"127.0.0.1:{port}", log)
    try:
        yield served
    finally:
        served.channel.close()
        stop_server(process)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist("test").images[:16]


def pixels_request(images: np.ndarray, **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="cnn", **fields)
    request.inputs.add(name="pixels", datatype="UINT8", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


def rest_probabilities(url: str, images: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": list(images.shape), "data": images.ravel().tolist()}
        ]
    }
    answer = httpx.post(f"{url}/v2/models/cnn/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    out = {o["name"]: o for o in answer.json()["outputs"]}["probabilities"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def raw_output(response: pb.ModelInferResponse, name: str, dtype: str) -> np.ndarray:
    for i, tensor in enumerate(response.outputs):
        if tensor.name == name:
            return np.frombuffer(response.raw_output_contents[i], dtype=dtype).reshape(list(tensor.shape))
    raise AssertionError(f"no output {name!r} in {[t.name for t in response.outputs]}")


# --- tritonclient ----------------------------------------------------------------------------


def test_tritonclient_grpc_answers_as_rest_does(server: Server, digits: np.ndarray, tmp_path: Path) -> None:
    pngs = [png_bytes(image) for image in digits[:4]]
    inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(
        inputs,
        pixels=digits,
        png_bytes=np.frombuffer(b"".join(pngs), dtype=np.uint8),
        png_sizes=np.array([len(p) for p in pngs]),
    )
    ran = subprocess.run(
        [sys.executable, str(TRITON_CLIENT), "infer", server.address, str(inputs), str(outputs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    got = np.load(outputs, allow_pickle=False)
    facts = json.loads(str(got["facts"]))
    assert facts["live"] and facts["ready"] and facts["model_ready"]
    assert facts["server"]["name"] == "digitserve"
    assert set(facts["server"]["extensions"]) >= {"binary_tensor_data", "classification"}
    assert [name for name, _, _ in facts["inputs"]] == ["pixels", "images"]
    assert ["probabilities", "FP32", ["-1", "10"]] in facts["outputs"] or ["probabilities", "FP32", [-1, 10]] in facts[
        "outputs"
    ]
    assert "4" in facts["versions"] and facts["served_version"] == "4"
    assert facts["pixels_id"] == "triton-pixels"

    rest = rest_probabilities(server.url, digits)  # the same inputs through REST
    assert np.abs(got["pixel_probabilities"] - rest).max() <= 1e-6
    assert list(got["pixel_labels"]) == list(rest.argmax(axis=1))
    assert got["pixel_is_digit"].dtype == np.bool_ and got["pixel_is_digit"].all()
    assert (got["pixel_labels"] == load_mnist("test").labels[:16]).mean() >= 0.9  # the production CNN reads them

    # PNGs go through /v1's preprocessing: the same answer as /v1 gives the same files
    files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    v1 = httpx.post(f"{server.url}/v1/models/cnn/predict/upload", files=files, timeout=30).json()
    v1_probabilities = np.array([p["probabilities"] for p in v1["predictions"]], dtype=np.float32)
    assert np.abs(got["image_probabilities"] - v1_probabilities).max() <= 1e-6
    assert list(got["image_labels"]) == [p["label"] for p in v1["predictions"]]

    top = [row[0].split(":") for row in got["classification"]]
    assert [int(label) for _, label in top] == list(rest[:2].argmax(axis=1))
    assert facts["pinned_version"] == "2" and facts["version_2_ready"]
    assert not np.allclose(got["pinned_probabilities"], rest[:2], atol=1e-6)  # v2 is another network
    assert facts["fp32_refusal"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "must be in [0, 1]" in facts["fp32_refusal"][1]
    assert facts["unknown_model"][0] == "StatusCode.NOT_FOUND"


def test_the_protocol_is_tritons(tmp_path: Path) -> None:
    """Every message and RPC the package defines has tritonclient's field names, numbers, types
    and labels: the compiled definition is the protocol's."""
    ran = subprocess.run(
        [sys.executable, str(TRITON_CLIENT), "descriptors"], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    triton = json.loads(ran.stdout)

    ours = {name: descriptor_fields(m) for name, m in pb.DESCRIPTOR.message_types_by_name.items()}
    assert len(ours) == 14  # six requests, six responses, InferParameter, InferTensorContents
    for name, message in ours.items():
        assert triton["messages"][name] == message, f"{name}: ours {message}, Triton's {triton['messages'][name]}"
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert triton["methods"][method.name] == [method.input_type.full_name, method.output_type.full_name]
    assert len(service.methods) == 6


# --- a KServe-style client on the compiled stubs ----------------------------------------------


def test_typed_contents_parameters_and_outputs(server: Server, digits: np.ndarray) -> None:
    rest = rest_probabilities(server.url, digits[:4])
    typed = pb.ModelInferRequest(model_name="cnn", id="typed-1")
    tensor = typed.inputs.add(name="pixels", datatype="UINT8", shape=[4, 28, 28])
    tensor.contents.uint_contents.extend(digits[:4].ravel().tolist())
    typed.outputs.add(name="label")
    typed.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    response, call = server.stub.ModelInfer.with_call(typed, metadata=(("x-request-id", "kserve-style-1"),), timeout=30)
    assert response.id == "typed-1" and response.model_name == "cnn" and response.model_version == "4"
    assert [o.name for o in response.outputs] == ["label", "probabilities"]
    assert list(raw_output(response, "label", "<i8")) == list(rest.argmax(axis=1))
    classes = response.raw_output_contents[1]
    first = classes[4 : 4 + struct.unpack_from("<I", classes)[0]].decode()
    assert first.endswith(f":{rest[0].argmax()}")
    assert dict(call.trailing_metadata())["x-request-id"] == "kserve-style-1"

    floats = pb.ModelInferRequest(model_name="cnn")
    tensor = floats.inputs.add(name="pixels", datatype="FP32", shape=[4, 784])
    tensor.contents.fp32_contents.extend((digits[:4].ravel() / 255.0).tolist())
    got = raw_output(server.stub.ModelInfer(floats, timeout=30), "probabilities", "<f4")
    assert np.abs(got - rest).max() <= 1e-6  # 0..1 floats are scaled back to the same bytes

    images = pb.ModelInferRequest(model_name="cnn")
    images.inputs.add(name="images", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [png_bytes(digits[0]), png_bytes(digits[1])]
    )
    answer = server.stub.ModelInfer(images, timeout=30)
    assert list(raw_output(answer, "label", "<i8")) == list(rest[:2].argmax(axis=1))

    noise = np.random.default_rng(0).integers(0, 256, (1, 28, 28), dtype=np.uint8)
    blank = pixels_request(noise)  # not a digit: -1, unless abstain is false
    assert raw_output(server.stub.ModelInfer(blank, timeout=30), "label", "<i8")[0] == -1
    blank.parameters["abstain"].bool_param = False
    assert raw_output(server.stub.ModelInfer(blank, timeout=30), "label", "<i8")[0] >= 0


def test_health_readiness_and_metadata(server: Server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "inference.GRPCInferenceService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == 1  # SERVING
    assert server.stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert server.stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name="cnn"), timeout=10).ready
    described = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="cnn", version="3"), timeout=10)
    assert list(described.versions) == ["3"] and described.platform == "onnxruntime_onnx"
    rest = httpx.get(f"{server.url}/v2/models/cnn").json()
    whole = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="cnn"), timeout=10)
    assert list(whole.versions) == rest["versions"]
    assert [(t.name, t.datatype, list(t.shape)) for t in whole.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]
    ]
    for call, request in (
        (server.stub.ModelReady, pb.ModelReadyRequest(name="nope")),
        (server.stub.ModelMetadata, pb.ModelMetadataRequest(name="cnn", version="99")),
        (server.stub.ModelMetadata, pb.ModelMetadataRequest(name="cnn", version="x")),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


# --- hostile input ---------------------------------------------------------------------------


def _bad_requests() -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, str]]:
    one = np.zeros((1, 28, 28), np.uint8)
    cases: list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, str]] = []

    def case(name: str, code: grpc.StatusCode, words: str, **fields: Any) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="cnn", **fields)
        cases.append((name, request, code, words))
        return request

    invalid, exhausted = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
    r = case("over the message limit", exhausted, "larger than max")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1400, 28, 28])
    r.raw_input_contents.append(bytes(1400 * 784))
    r = case("more images than the limit", exhausted, f"the limit is {MAX_IMAGES}")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[MAX_IMAGES + 1, 28, 28])
    r.raw_input_contents.append(bytes((MAX_IMAGES + 1) * 784))
    r = case("a batch dimension of 2**40", exhausted, f"the limit is {MAX_IMAGES}")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[2**40, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r = case("INT32 pixels", invalid, "send UINT8")
    r.inputs.add(name="pixels", datatype="INT32", shape=[1, 28, 28])
    r.raw_input_contents.append(bytes(784 * 4))
    r = case("a datatype without a contents field", invalid, "which has no contents field")
    r.inputs.add(name="pixels", datatype="FP128", shape=[1, 28, 28])
    r = case("a negative batch dimension", invalid, "send [N, 28, 28]")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[-1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r = case("a shape of a thousand dimensions", invalid, "send [N, 28, 28]")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1] * 1000)
    r.raw_input_contents.append(one.tobytes())
    r = case("a million typed values for one image", invalid, "has 1000000 values in contents.uint_contents")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28]).contents.uint_contents.extend([0] * 1_000_000)
    r = case("abstain as a float", invalid, "true or false")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r.parameters["abstain"].double_param = 0.5
    r = case("a model name of 100,000 characters", grpc.StatusCode.NOT_FOUND, "unknown model")
    r.model_name = "m" * 100_000
    r = case("a 27x28 image", invalid, "send [N, 28, 28]")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 27, 28])
    r.raw_input_contents.append(bytes(27 * 28))
    r = case("raw bytes short of the shape", invalid, "takes 784")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(bytes(700))
    r = case("values in the wrong contents field", invalid, "contents.uint_contents")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28]).contents.fp32_contents.extend([0.0] * 784)
    r = case("too few typed values", invalid, "takes 784")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28]).contents.uint_contents.extend([0] * 10)
    r = case("UINT8 values over 255", invalid, "0..255")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28]).contents.uint_contents.extend([300] * 784)
    r = case("bytes that are not an image", invalid, "image")
    r.inputs.add(name="images", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"\x89PNG not really")
    r = case("a BYTES length past the data", invalid, "declares")
    r.inputs.add(name="images", datatype="BYTES", shape=[1])
    r.raw_input_contents.append(struct.pack("<I", 10_000) + b"abc")
    r = case("an empty image", invalid, "is empty")
    r.inputs.add(name="images", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"")
    r = case("two inputs", invalid, "exactly one input")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.inputs.add(name="images", datatype="BYTES", shape=[1])
    case("no input", invalid, "exactly one input")
    r = case("an unknown input", invalid, "unknown input")
    r.inputs.add(name="picture", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r = case("raw data and contents", invalid, "both contents and raw_input_contents")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28]).contents.uint_contents.extend([0] * 784)
    r.raw_input_contents.append(one.tobytes())
    r = case("two raw entries for one input", invalid, "one per input")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.extend([one.tobytes(), one.tobytes()])
    r = case("a parameter without a value", invalid, "has no value")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r.parameters["abstain"].CopyFrom(pb.InferParameter())
    r = case("abstain as a string", invalid, "true or false")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r.parameters["abstain"].string_param = "yes"
    r = case("an unknown output", invalid, "unknown output")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r.outputs.add(name="logits")
    r = case("classification of the label", invalid, "classification applies")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    r.outputs.add(name="label").parameters["classification"].int64_param = 2
    r = case("shared memory", invalid, "shared memory")
    t = r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    t.parameters["shared_memory_region"].string_param = "region"
    r = case("an unknown model", grpc.StatusCode.NOT_FOUND, "unknown model")
    r.model_name = "nope"
    r = case("a version that is no number", grpc.StatusCode.NOT_FOUND, "positive integers", model_version="v2")
    r = case("a version the registry lacks", grpc.StatusCode.NOT_FOUND, "no version 99", model_version="99")
    r.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    r.raw_input_contents.append(one.tobytes())
    return cases


@pytest.mark.parametrize(
    ("name", "request_", "code", "words"), _bad_requests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_bad_requests_get_a_clear_client_status(
    server: Server, name: str, request_: pb.ModelInferRequest, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.ModelInfer(request_, timeout=30)
    error = refused.value
    assert error.code() == code, f"{name}: {error.code()} {error.details()}"
    assert words in error.details(), f"{name}: {error.details()!r}"
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED or "larger than max" not in words:  # gRPC's own refusal
        assert dict(error.trailing_metadata())["digitserve-code"] not in ("internal_error", "other")


def test_garbage_on_the_port_harms_nobody(server: Server, digits: np.ndarray) -> None:
    """Bytes that are no HTTP/2 -- an HTTP/1 request, a bad preface, noise -- close their own
    connection; the server answers gRPC and REST as before."""
    host, port = server.address.rsplit(":", 1)
    for junk in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096),
        os.urandom(65536),
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    response = server.stub.ModelInfer(pixels_request(digits[:2]), timeout=30)
    assert response.model_version == "4"
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_calls_are_counted_and_logged(server: Server, digits: np.ndarray) -> None:
    route = "/inference.GRPCInferenceService/ModelInfer"
    before = metric(server.url, "digitserve_requests_total", route=route, method="GRPC", status="200")
    server.stub.ModelInfer(pixels_request(digits[:3]), metadata=(("x-request-id", "grpc-logged-1"),), timeout=30)
    with pytest.raises(grpc.RpcError):
        server.stub.ModelInfer(pb.ModelInferRequest(model_name="cnn"), metadata=(("x-request-id", "grpc-logged-2"),))

    def counted() -> bool:
        return metric(server.url, "digitserve_requests_total", route=route, method="GRPC", status="200") >= before + 1

    wait_until(counted, 10, "the gRPC call in digitserve_requests_total")
    assert metric(server.url, "digitserve_refusals_total", route=route, code="invalid_input") >= 1

    def lines() -> dict[str, dict[str, Any]]:
        found = {}
        for line in server.log.read_text().splitlines():
            if '"grpc-logged-' in line:
                record = json.loads(line)
                found[record["request_id"]] = record
        return found

    wait_until(lambda: len(lines()) == 2, 10, "both calls' access lines")
    ok, refused = lines()["grpc-logged-1"], lines()["grpc-logged-2"]
    assert (ok["method"], ok["route"], ok["status"], ok["grpc_code"]) == ("GRPC", route, 200, "OK")
    assert (ok["model"], ok["version"], ok["images"]) == ("cnn", 4, 3)
    assert (refused["status"], refused["code"], refused["grpc_code"]) == (422, "invalid_input", "INVALID_ARGUMENT")


# --- drain, and the one-worker layout ---------------------------------------------------------


def test_sigterm_drains_grpc_too(tmp_path: Path, digits: np.ndarray) -> None:
    """Port 0 with two workers: the supervisor holds one free port and both workers join it. On
    SIGTERM the gRPC servers stop at once (GOAWAY: clients take new calls elsewhere) and let the
    calls in flight finish: under a client calling without pause, every call is answered OK
    until the server goes, then refused UNAVAILABLE -- never another status -- and it exits 0."""
    log = tmp_path / "server.log"
    env = {**ENV, "DIGITSERVE_GRPC_PORT": "0", "DIGITSERVE_SHUTDOWN_GRACE_S": "2"}
    process, _ = start_server(env, log_path=log)
    try:
        held = re.search(r"gRPC port 127\.0\.0\.1:(\d+) held", log.read_text())
        assert held, log.read_text()[-2000:]

        def listening() -> list[str]:
            return re.findall(r"gRPC \(Open Inference Protocol\) on 127\.0\.0\.1:(\d+)", log.read_text())

        wait_until(lambda: len(listening()) == 2, 60, "both workers' gRPC servers")  # /readyz: the first one
        assert listening() == [held.group(1)] * 2  # both on the held port
        outcomes = calls_across_sigterm(f"127.0.0.1:{held.group(1)}", process, digits)
        assert process.wait(timeout=60) == 0
    finally:
        stop_server(process)
    codes = [code for _, code in outcomes]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(codes)
    signalled = [code for after, code in outcomes if after]
    assert codes.count(grpc.StatusCode.OK) >= 5 and grpc.StatusCode.UNAVAILABLE in signalled


def calls_across_sigterm(address: str, process: subprocess.Popen[bytes], digits: np.ndarray) -> list[tuple[bool, Any]]:
    """Call ModelInfer back to back for a while, sending SIGTERM after the first second; each
    outcome with whether it began after the signal."""
    outcomes: list[tuple[bool, Any]] = []
    signalled_at = None
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        while time.monotonic() - started < 8:
            if signalled_at is None and time.monotonic() - started > 1:
                process.send_signal(signal.SIGTERM)
                signalled_at = time.monotonic()
            try:
                stub.ModelInfer(pixels_request(digits[:1]), timeout=10)
                outcomes.append((signalled_at is not None, grpc.StatusCode.OK))
            except grpc.RpcError as exc:
                outcomes.append((signalled_at is not None, exc.code()))
                if signalled_at is not None and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    break  # refused by the drain: a client goes elsewhere now
                time.sleep(0.05)
    return outcomes


def test_one_worker_serves_grpc_too(tmp_path: Path, digits: np.ndarray) -> None:
    """`--workers 1`: the gRPC server binds the port itself; it answers as REST does, refuses
    bytes that are no message, and calls sent as SIGTERM arrives are each answered or refused
    UNAVAILABLE (which of the two depends on whether a call arrived before the signal)."""
    port = free_port()
    env = {**ENV, "DIGITSERVE_WORKERS": "1", "DIGITSERVE_GRPC_PORT": str(port), "DIGITSERVE_SHUTDOWN_GRACE_S": "2"}
    process, url = start_server(env, log_path=tmp_path / "server.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = GRPCInferenceServiceStub(channel)
            got = raw_output(stub.ModelInfer(pixels_request(digits[:8]), timeout=30), "probabilities", "<f4")
            assert np.abs(got - rest_probabilities(url, digits[:8])).max() <= 1e-6
            send_bytes = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            for junk in (b"\xff\xff\xff", b"\x0a\x01\xff"):  # not protobuf; a model name not UTF-8
                with pytest.raises(grpc.RpcError) as refused:
                    send_bytes(junk, timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            pending = [stub.ModelInfer.future(pixels_request(digits[:16]), timeout=30) for _ in range(8)]
            process.send_signal(signal.SIGTERM)  # each call is answered, or refused as the drain refuses
            for call in pending:
                try:
                    assert call.result().model_version == "4"
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    assert dict(exc.trailing_metadata() or ()).get("digitserve-code") in ("shutting_down", None)
        assert process.wait(timeout=60) == 0
    finally:
        stop_server(process)


# --- canary routing --------------------------------------------------------------------------


def test_a_canary_answers_its_share_of_grpc_calls(tmp_path: Path, digits: np.ndarray) -> None:
    """A canary on half the traffic (the shipped v2 beside production): a sticky key in the
    metadata keeps its side, as the REST header does, and calls without one reach both."""
    registry = copy_shipped(tmp_path / "registry")
    assert add_shipped_version(registry, "cnn", 2) == 2
    registry.move_alias("cnn", "canary", 2, reason="test: a canary for gRPC")
    port = free_port()
    env = {**CANARY_ENV, "DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_GRPC_PORT": str(port)}
    process, url = start_server(env, log_path=tmp_path / "server.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = GRPCInferenceServiceStub(channel)
            canary = next(k for k in (f"user-{i}" for i in range(1000)) if sticky_side(k, 50))
            stable = next(k for k in (f"user-{i}" for i in range(1000)) if not sticky_side(k, 50))
            wait_until(lambda: model_info_canary(url), 30, "the canary loaded")

            def version(key: str | None) -> str:
                metadata = (("x-digitserve-sticky", key),) if key else ()
                return str(stub.ModelInfer(pixels_request(digits[:1]), metadata=metadata, timeout=30).model_version)

            assert {version(canary) for _ in range(10)} == {"2"}
            assert {version(stable) for _ in range(10)} == {"1"}
            assert {version(None) for _ in range(60)} == {"1", "2"}
            over = pixels_request(digits[:1])
            with pytest.raises(grpc.RpcError) as refused:  # as REST refuses the header: never cut short
                stub.ModelInfer(over, metadata=(("x-digitserve-sticky", "k" * 300),), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        served = metric(url, "digitserve_images_total", model="cnn", version="2")
        assert served >= 10
    finally:
        stop_server(process)


def model_info_canary(url: str) -> bool:
    rollouts = httpx.get(f"{url}/v1/models/cnn", timeout=10).json().get("rollouts") or {}
    return bool((rollouts.get("canary") or {}).get("version"))
