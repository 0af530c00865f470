"""The Open Inference Protocol over gRPC, beside REST (`DIGITSERVE_GRPC_PORT`; off when unset).

- `proto/`: the protocol's definition, compiled into Python by grpcio-tools in the build (setup.py);
- `codec.py`: a `ModelInferRequest` to model input with the same checks as `/v2` REST, and the
  answer to a `ModelInferResponse` (raw little-endian outputs, as Triton sends them);
- `service.py`: the six RPCs, on the same pipeline, batcher, admission, deadline, canary routing,
  metrics and access log as REST, each refusal with the gRPC status of its HTTP one;
- `server.py`: the `grpc.aio` server in each worker's event loop (SO_REUSEPORT: every worker
  listens on the port), with the standard health service.
"""
