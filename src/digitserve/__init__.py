"""digitserve: handwritten-digit recognition with a versioned model registry.

One folder per concept, layered so that dependencies point one way (docs/architecture.md;
tests/unit/test_architecture.py checks it): config <- storage <- registry <- runtime <- models
<- evaluation, gate <- serving <- cli, with imaging, data, synthetic and training beside them."""

__version__ = "0.1.0"
