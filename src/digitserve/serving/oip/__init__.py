"""The KServe / Triton Open Inference Protocol (v2 REST): schemas, tensors, wire codec, routes.

It only translates: an inference request becomes a call to the shared prediction pipeline
(`serving/pipeline.py`), and its result becomes the protocol's response.
"""
