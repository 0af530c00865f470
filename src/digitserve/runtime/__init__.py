"""Running a published version: its ONNX artifact under ONNX Runtime. No torch anywhere below here."""

from digitserve.runtime.calibration import softmax
from digitserve.runtime.loading import LoadError, load_servable
from digitserve.runtime.session import OnnxModel, RuntimeOptions, Servable

__all__ = ["LoadError", "OnnxModel", "RuntimeOptions", "Servable", "load_servable", "softmax"]
