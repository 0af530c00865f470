"""Running a published version: its ONNX artifact under ONNX Runtime. No torch anywhere below here."""

from digitserve.runtime.loading import LoadError, Servable, load_servable
from digitserve.runtime.session import OnnxModel, RuntimeOptions, softmax

__all__ = ["LoadError", "OnnxModel", "RuntimeOptions", "Servable", "load_servable", "softmax"]
