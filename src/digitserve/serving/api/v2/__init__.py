"""The Open Inference Protocol (v2 REST) under /v2, for KServe and Triton clients."""
