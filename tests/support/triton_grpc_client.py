"""tritonclient's gRPC client against a digitserve server, run as its own process:

    python triton_grpc_client.py infer ADDRESS INPUTS.npz OUTPUTS.npz   # health, metadata, inference
    python triton_grpc_client.py descriptors                           # its compiled protocol, as JSON

tritonclient's compiled protocol and the package's (serving/grpc/proto/) define the same
`inference.*` messages, and one process's protobuf descriptor pool takes each name once, so the
tests run tritonclient here, in a process that never imports digitserve's.

INPUTS.npz holds `pixels` (n, 28, 28) uint8, and PNG images as `png_bytes` (uint8, one after the
other) and `png_sizes`; OUTPUTS.npz gets the answers' arrays and, as a JSON string under `facts`,
everything else the client saw.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from descriptors import descriptor_fields  # this folder: the script runs as a file
from tritonclient.utils import InferenceServerException


def infer(client: triton.InferenceServerClient, name: str, values: np.ndarray, datatype: str, **kwargs: object):
    tensor = triton.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return client.infer("cnn", [tensor], **kwargs)


def run_infer(address: str, inputs_path: str, outputs_path: str) -> None:
    given = np.load(inputs_path, allow_pickle=False)
    pixels = given["pixels"]
    ends = np.cumsum(given["png_sizes"])
    blob = given["png_bytes"].tobytes()
    pngs = np.array(
        [blob[end - size : end] for size, end in zip(given["png_sizes"], ends, strict=True)], dtype=np.object_
    )
    client = triton.InferenceServerClient(address)
    metadata = client.get_model_metadata("cnn", as_json=True)
    facts: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("cnn"),
        "server": client.get_server_metadata(as_json=True),
        "inputs": [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]],
        "outputs": [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]],
        "versions": metadata["versions"],
    }
    by_pixels = infer(client, "pixels", pixels, "UINT8", request_id="triton-pixels")
    by_images = infer(client, "images", pngs, "BYTES")
    top = triton.InferRequestedOutput("probabilities", class_count=3)
    classified = infer(client, "pixels", pixels[:2], "UINT8", outputs=[top])
    pinned = infer(client, "pixels", pixels[:2], "UINT8", model_version="2")
    facts.update(
        pixels_id=by_pixels.get_response().id,
        pinned_version=pinned.get_response().model_version,
        served_version=by_pixels.get_response().model_version,
        version_2_ready=client.is_model_ready("cnn", "2"),
    )
    try:
        infer(client, "pixels", pixels.astype(np.float32), "FP32")  # 0..255 as FP32: out of range
    except InferenceServerException as exc:
        facts["fp32_refusal"] = [str(exc.status()), exc.message()]
    try:
        client.get_model_metadata("nope")
    except InferenceServerException as exc:
        facts["unknown_model"] = [str(exc.status()), exc.message()]
    np.savez(
        outputs_path,
        pixel_probabilities=by_pixels.as_numpy("probabilities"),
        pixel_labels=by_pixels.as_numpy("label"),
        pixel_is_digit=by_pixels.as_numpy("is_digit"),
        image_probabilities=by_images.as_numpy("probabilities"),
        image_labels=by_images.as_numpy("label"),
        classification=classified.as_numpy("probabilities").astype(str),
        pinned_probabilities=pinned.as_numpy("probabilities"),
        facts=json.dumps(facts),
    )


def descriptors() -> None:
    """Every message of tritonclient's protocol that digitserve's defines: its fields' names,
    numbers, types and whether they repeat."""
    from tritonclient.grpc import service_pb2

    messages = {name: descriptor_fields(m) for name, m in service_pb2.DESCRIPTOR.message_types_by_name.items()}
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    print(json.dumps({"messages": messages, "methods": methods}))


if __name__ == "__main__":
    if sys.argv[1] == "descriptors":
        descriptors()
    else:
        run_infer(*sys.argv[2:5])
