"""ONNX exports of the networks the tests publish, made once per run.

A test that publishes a version exports its network to ONNX as training does (`export_onnx`, which
also checks the graph against the golden outputs): 1 s each, 3 s for a process's first. The suite
publishes the same few networks (a seed's tiny CNN, a constant model, a nudged baseline) in many
tests, for a local and an S3 registry, and in spawned processes; each network is exported once,
keyed by what the export depends on (the model and export code and the torch version, the
architecture, config, weights, golden digits and tolerance), and the graph is kept in this process
and in the run's shared cache (`DIGITSERVE_TEST_CACHE`, which make test makes afresh for each run).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from digitserve.models import config_dict
from digitserve.models.checkpoint import weights_bytes
from digitserve.models.export import export_onnx
from digitserve.registry import Golden
from support.smoke import ROOT, code_digest

_made: dict[str, bytes] = {}


@functools.cache
def _code() -> str:
    return code_digest(ROOT / "src" / "digitserve" / "models")


def _key(network: Any, golden: Golden) -> str:
    digest = hashlib.sha256(f"{_code()} {type(network).__name__} {golden.atol!r}".encode())
    digest.update(json.dumps(config_dict(network), sort_keys=True).encode())
    digest.update(weights_bytes(network.state_dict()))
    digest.update(golden.images.tobytes() + golden.logits.tobytes())
    return digest.hexdigest()


def export_onnx_once(network: Any, golden: Golden) -> bytes:
    """`export_onnx(network, golden)`, or the graph an earlier call made for the same inputs."""
    key = _key(network, golden)
    if key in _made:
        return _made[key]
    shared = Path(os.environ["DIGITSERVE_TEST_CACHE"]) / "onnx" if os.environ.get("DIGITSERVE_TEST_CACHE") else None
    if shared is not None and (shared / key).is_file():
        graph = (shared / key).read_bytes()
    else:
        graph = export_onnx(network, golden)
        if shared is not None:  # written whole, then renamed: a reader never sees half a graph
            shared.mkdir(exist_ok=True)
            partial = shared / f"{key}.{os.getpid()}.tmp"
            partial.write_bytes(graph)
            partial.replace(shared / key)
    _made[key] = graph
    return graph
