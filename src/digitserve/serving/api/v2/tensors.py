"""Input tensors of the /v2 protocol as model input: `pixels` values and `images` elements.

`pixels` (UINT8 or FP32, [N, 28, 28], [N, 1, 28, 28] or [N, 784]) become MNIST-style (n, 28, 28)
uint8 as they are, no preprocessing; `images` (BYTES [N]) become the encoded images, which the
caller sends through the same preprocessing as /v1. `raw` is the tensor's binary data, if any.
"""

from __future__ import annotations

import struct

import numpy as np

from digitserve.config import RequestLimits
from digitserve.serving.api.v2.schemas import IMAGES, PIXEL_DATATYPES, PIXELS, RequestInput
from digitserve.serving.errors import InvalidInputError, PayloadTooLargeError, quoted
from digitserve.serving.inference.inputs import check_count, decode_base64

PIXEL_SHAPES = ([28, 28], [1, 28, 28], [784])  # after the batch dimension


def pixels_count(tensor: RequestInput, limits: RequestLimits) -> int:
    """N of a `pixels` tensor (UINT8 or FP32, [N, 28, 28], [N, 1, 28, 28] or [N, 784]), within the
    request's image limit."""
    if tensor.datatype not in PIXEL_DATATYPES:
        raise InvalidInputError(f"input {PIXELS!r} is {quoted(tensor.datatype)}; send UINT8 (0..255) or FP32 (0..1)")
    shape = tensor.shape
    if len(shape) < 2 or shape[0] < 0 or shape[1:] not in PIXEL_SHAPES:
        raise InvalidInputError(
            f"input {PIXELS!r} has shape {quoted(shape)}; send [N, 28, 28], [N, 1, 28, 28] or [N, 784]"
        )
    check_count(shape[0], limits)
    return shape[0]


def decode_pixels(tensor: RequestInput, raw: bytes | None, limits: RequestLimits, where: str = "data") -> np.ndarray:
    """`pixels` as MNIST-style (n, 28, 28) uint8: UINT8 as-is, FP32 in [0, 1] times 255. Without
    `raw`, the values are `tensor.data` (a list, or an array), which messages call `where`."""
    n, shape = pixels_count(tensor, limits), tensor.shape
    dtype = np.dtype(np.uint8 if tensor.datatype == "UINT8" else "<f4")
    count = n * 28 * 28
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInputError(
                f"input {PIXELS!r} has {len(raw)} bytes of binary data; "
                f"shape {shape} of {tensor.datatype} takes {count * dtype.itemsize}"
            )
        values = np.frombuffer(raw, dtype=dtype)
    else:
        values = _json_numbers(tensor, count, where)
    return _to_uint8(values, tensor.datatype).reshape(n, 28, 28)


def _json_numbers(tensor: RequestInput, count: int, where: str) -> np.ndarray:
    try:
        values = np.asarray(tensor.data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInputError(f"input {PIXELS!r}: {where} must be a flat or evenly nested list of numbers") from None
    if values.size != count:
        raise InvalidInputError(
            f"input {PIXELS!r} has {values.size} values in {where}; shape {tensor.shape} takes {count}"
        )
    allowed = "iu" if tensor.datatype == "UINT8" else "iuf"  # bools, strings and objects are refused
    if values.dtype.kind not in allowed:
        kind = "integers 0..255" if tensor.datatype == "UINT8" else "numbers 0..1"
        raise InvalidInputError(f"input {PIXELS!r} is {tensor.datatype}: {where} must hold {kind} only")
    return values.ravel()


def _to_uint8(values: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "UINT8":
        if values.dtype != np.uint8 and (values.min() < 0 or values.max() > 255):
            raise InvalidInputError(
                f"input {PIXELS!r} is UINT8: values must be in 0..255, got {values.min()}..{values.max()}"
            )
        return values.astype(np.uint8)  # a copy: the batcher gets a writable array of its own
    values = values.astype(np.float32, copy=False)
    if not (np.all(values >= 0) and np.all(values <= 1)):  # NaN fails both
        raise InvalidInputError(
            f"input {PIXELS!r} is FP32: values must be in [0, 1] (they are scaled by 255); send 0..255 as UINT8"
        )
    return np.rint(values * 255).astype(np.uint8)


def images_count(tensor: RequestInput, limits: RequestLimits) -> int:
    """N of an `images` tensor (BYTES [N] or [N, 1]), within the request's image limit."""
    if tensor.datatype != "BYTES":
        raise InvalidInputError(f"input {IMAGES!r} is {quoted(tensor.datatype)}; send BYTES (encoded images)")
    shape = tensor.shape
    if len(shape) not in (1, 2) or shape[0] < 0 or shape[1:] not in ([], [1]):
        raise InvalidInputError(f"input {IMAGES!r} has shape {quoted(shape)}; send [N] (or [N, 1])")
    check_count(shape[0], limits)
    return shape[0]


def decode_images(tensor: RequestInput, raw: bytes | None, limits: RequestLimits) -> list[bytes]:
    """`images` (BYTES [N] or [N, 1]) as a list of encoded images."""
    n = images_count(tensor, limits)
    if raw is None:
        return _base64_items(tensor, n, limits)
    blobs = _split_bytes(raw, n, limits.max_image_bytes)
    _check_element_count(len(blobs), tensor.shape, n)
    return blobs


def image_elements(tensor: RequestInput, elements: list[bytes], limits: RequestLimits) -> list[bytes]:
    """`images` whose elements came as they are (gRPC's typed `bytes_contents`)."""
    n = images_count(tensor, limits)
    _check_element_count(len(elements), tensor.shape, n)
    for i, blob in enumerate(elements):
        if len(blob) > limits.max_image_bytes:
            raise PayloadTooLargeError(f"{IMAGES}[{i}] is over the {limits.max_image_bytes} byte limit for one image")
        if not blob:
            raise InvalidInputError(f"{IMAGES}[{i}] is empty")
    return elements


def _check_element_count(found: int, shape: list[int], n: int) -> None:
    if found != n:
        raise InvalidInputError(f"input {IMAGES!r} has {found} elements; shape {shape} takes {n}")


def _split_bytes(raw: bytes, n: int, max_bytes: int) -> list[bytes]:
    """Binary BYTES tensor data: each element is a 4-byte little-endian length, then the bytes."""
    blobs: list[bytes] = []
    offset = 0
    while offset < len(raw) and len(blobs) <= n:
        if offset + 4 > len(raw):
            raise InvalidInputError(f"input {IMAGES!r}: the binary data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        where = f"{IMAGES}[{len(blobs)}]"
        if size > max_bytes:
            raise PayloadTooLargeError(f"{where} is over the {max_bytes} byte limit for one image")
        if size == 0:
            raise InvalidInputError(f"{where} is empty")
        if offset + size > len(raw):
            raise InvalidInputError(f"{where} declares {size} bytes; {len(raw) - offset} remain in the binary data")
        blobs.append(raw[offset : offset + size])
        offset += size
    return blobs


def _base64_items(tensor: RequestInput, n: int, limits: RequestLimits) -> list[bytes]:
    data = tensor.data or []
    items = [x for row in data for x in (row if isinstance(row, list) else [row])]  # [N] or [N, 1]
    _check_element_count(len(items), tensor.shape, n)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInputError(f"{IMAGES}[{i}] must be a base64 string (an encoded image)")
    return [decode_base64(s, i, limits.max_image_bytes) for i, s in enumerate(items)]
