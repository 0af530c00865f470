"""The Open Inference Protocol's gRPC definition (`open_inference.proto`) and, after the build,
the modules grpcio-tools compiles from it (`open_inference_pb2*.py`, not committed: setup.py)."""
