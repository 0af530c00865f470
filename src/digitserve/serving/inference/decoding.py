"""From what a client sent (base64 strings, file bytes) to MNIST-style uint8 arrays, within budgets.

Decoding costs CPU in proportion to pixels, not bytes (a 714-byte WebP can be 16 megapixels),
so every budget here is in pixels, read from the image headers before anything is decoded:
- a request whose images total at most `INLINE_PIXELS` is decoded on the event loop (a thread
  hop costs more than decoding a few small digits);
- anything larger goes to decode processes, within the request's deadline: decoding and
  resampling millions of pixels holds the GIL for long stretches, and in a thread it stalled
  the event loop (a /healthz of 0.4 s); in its own process it cannot;
- a request over `max_request_pixels` is refused (413); one that would push the pixels waiting
  for the decode processes over `max_decode_backlog_pixels`, or whose wait for them is expected
  past `max_decode_wait_s` or its deadline, gets 503 + Retry-After: decode work is admitted by
  its cost in seconds (learnt from the decodes that finished), not by its count.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import multiprocessing
import re
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor

import numpy as np

from digitserve.config import RequestLimits
from digitserve.imaging.decode import ImageError, check_size, header_size
from digitserve.imaging.mnist import prepare_many, timed_prepare_many
from digitserve.serving.errors import DeadlineExceededError, InvalidInputError, OverloadedError, PayloadTooLargeError

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
INLINE_PIXELS = 64 * 1024  # ~0.3 ms of decoding: below this a request is decoded inline
INITIAL_SECONDS_PER_PIXEL = 1e-7  # a 400x400 canvas in ~16 ms, until finished decodes say better
COST_SMOOTHING = 0.2  # weight of the latest decode in the moving average of the cost of a pixel


def decode_base64(text: str, index: int | str, max_bytes: int) -> bytes:
    """One base64 image (optionally a data: URL) to bytes, with errors that name the image
    (`images[index]`, or the field name given as a string)."""
    name = f"images[{index}]" if isinstance(index, int) else index
    match = DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    if len(text) * 3 // 4 > max_bytes:
        raise PayloadTooLargeError(f"{name} is over the {max_bytes} byte limit for one image")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"{name} is not valid base64; send the file's bytes base64-encoded "
            "(a data:image/png;base64,... URL is fine)"
        ) from None
    if not data:
        raise InvalidInputError(f"{name} is empty")
    return data


def check_count(n: int, limits: RequestLimits, what: str = "images") -> None:
    if n == 0:
        raise InvalidInputError(f"no {what} sent; send at least one")
    if n > limits.max_images:
        raise PayloadTooLargeError(f"{n} {what} in one request; the limit is {limits.max_images}, split the request")


def decode_pool(processes: int) -> ProcessPoolExecutor:
    """The decode processes: "spawn", as a fork of a server with running threads is unsafe; a pool
    starts its processes on its first job, so a server that never gets a large image has none."""
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))


class ImageDecoder:
    """Decodes requests' images inline or in its own processes, admitting decode work by its cost."""

    def __init__(self, limits: RequestLimits, pool: Executor) -> None:
        self.limits = limits
        self.executor = pool  # the decode processes (the composition root's; they start on first use)
        self.backlog_pixels = 0  # pixels handed to the decode processes and not decoded yet
        self.seconds_per_pixel = INITIAL_SECONDS_PER_PIXEL  # learnt from finished decodes

    async def prepare(self, blobs: Sequence[bytes], names: Sequence[str], deadline: float) -> np.ndarray:
        """Decode and MNIST-normalise every image: (n, 28, 28) uint8, or an error naming the bad one."""
        pixels = self._pixels(blobs, names)
        limit = self.limits.max_request_pixels
        if pixels > limit:
            raise PayloadTooLargeError(
                f"the images hold {pixels:,} pixels in all, over the limit of {limit:,} per request; "
                "send smaller images or fewer per request"
            )
        if pixels <= INLINE_PIXELS:
            return prepare_many(blobs, names, self.limits.max_image_pixels)
        self._admit(pixels, deadline)
        self.backlog_pixels += pixels
        job = self.executor.submit(timed_prepare_many, blobs, names, self.limits.max_image_pixels)
        work = asyncio.wrap_future(job)
        work.add_done_callback(lambda done: self._decoded(done, pixels))
        try:
            images, _ = await asyncio.wait_for(asyncio.shield(work), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceededError("the images could not be decoded before the deadline") from None
        return images

    def _admit(self, pixels: int, deadline: float) -> None:
        """503 unless the decode work already queued leaves room for this request's: within the
        pixel backlog, within `max_decode_wait_s` of expected waiting, and done by the deadline.
        The cost of a pixel is learnt from the decodes that finished (a moving average)."""
        if not self.backlog_pixels:
            return  # an idle decoder takes any request within the per-request limit
        wait = self.backlog_pixels * self.seconds_per_pixel / self.limits.decode_processes
        done_by = time.monotonic() + wait + pixels * self.seconds_per_pixel
        if self.backlog_pixels + pixels > self.limits.max_decode_backlog_pixels:
            raise OverloadedError(f"{self.backlog_pixels:,} pixels are waiting to be decoded; retry shortly")
        if wait > self.limits.max_decode_wait_s or done_by > deadline:
            raise OverloadedError(f"the images waiting to be decoded need about {wait:.2f} s; retry shortly")

    def _pixels(self, blobs: Sequence[bytes], names: Sequence[str]) -> int:
        """The pixels decoding will produce, from the headers; an image over the per-image limit is refused here."""
        total = 0
        for blob, name in zip(blobs, names, strict=True):
            width, height = header_size(blob)
            if width * height > self.limits.max_image_pixels:
                try:
                    check_size(width, height, self.limits.max_image_pixels)
                except ImageError as exc:
                    raise type(exc)(f"{name}: {exc}") from None
            total += width * height
        return total

    def _decoded(self, work: asyncio.Future[tuple[np.ndarray, float]], pixels: int) -> None:
        self.backlog_pixels -= pixels
        if work.cancelled() or work.exception() is not None:  # retrieved: no "never retrieved" log
            return
        _, seconds = work.result()
        self.seconds_per_pixel += COST_SMOOTHING * (seconds / max(pixels, 1) - self.seconds_per_pixel)
