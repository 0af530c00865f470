"""digitserve: handwritten-digit recognition with a versioned model registry."""

__version__ = "0.1.0"
