"""Running a published version: its ONNX artifact under ONNX Runtime. No torch anywhere below here.

`session.py` (`OnnxModel`, `Servable`), `calibration.py` (temperature, not-a-digit threshold),
`loading.py` (`load_servable`: fetch, verify, build, warm up, golden check). May import config,
storage and registry."""

from digitserve.runtime.calibration import softmax
from digitserve.runtime.loading import LoadError, load_servable
from digitserve.runtime.session import OnnxModel, RuntimeOptions, Servable

__all__ = ["LoadError", "OnnxModel", "RuntimeOptions", "Servable", "load_servable", "softmax"]
