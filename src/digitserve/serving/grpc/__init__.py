"""The Open Inference Protocol over gRPC, beside REST (`DIGITSERVE_GRPC_PORT`; off when unset).

- `proto/`: the protocol's definition, compiled into Python by grpcio-tools in the build (setup.py);
- `codec.py`: a `ModelInferRequest` to model input with the same checks as `/v2` REST, and the
  answer to a `ModelInferResponse` (raw little-endian outputs, as Triton sends them);
- `calls.py`: one call answered and observed -- its request id, its message parsed (bytes that are
  no message are INVALID_ARGUMENT), a refusal as the gRPC status of its HTTP one, its metrics and
  access line;
- `service.py`: the six RPCs, registered from the compiled service descriptor, on the same
  pipeline, batcher, admission, deadline and canary routing as REST;
- `server.py`: the `grpc.aio` server in each worker's event loop (SO_REUSEPORT: every worker
  listens on the port), with the standard health service.
"""
