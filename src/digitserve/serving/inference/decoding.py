"""From what a client sent (base64 strings, file bytes) to MNIST-style uint8 arrays, within budgets.

Decoding costs CPU for every image (opening it, finding the ink, fitting it into 28x28: about a
millisecond however small the image) and in proportion to its pixels beyond that (a 714-byte
WebP can be 16 megapixels); a pixel CSV costs about two milliseconds of parsing. So a request's
decoding is priced in seconds (`cost_s`), from the image headers, before anything is decoded
(a large PNG's size is read from its IHDR, a JPEG's by walking its segment lengths to its frame
header, however much EXIF precedes it; other large files are priced by their bytes):
- a request whose decoding costs at most `INLINE_S` is decoded on the event loop (a hop to
  another process costs more than decoding one or two digits); files over `HEADER_BYTES` never are;
- anything dearer goes to decode processes, within the request's deadline: decoding holds the
  GIL for long stretches, and on the event loop (or in a thread) 256 tiny PNGs in one request
  stalled every other request for half a second; in its own process it cannot;
- a request over `max_request_pixels` is refused (413); one that would push the pixels waiting
  for the decode processes over `max_decode_backlog_pixels`, or that could not be decoded by its
  deadline behind the work already queued (an idle decoder takes any), gets 503 + Retry-After.
  Past `max_decode_wait_s` of expected waiting, decode work is admitted from a burst allowance
  (`decode_burst_s` of decoding at the prices below; whole again each time the decoder is idle,
  and refilled over `BURST_REFILL_S` while it is not): a burst of uploads the processes can
  decode in time is served, while a sustained overload (a queue that never empties) is shed at
  `max_decode_wait_s` and its accepted requests stay fast. The expected wait is the backlog's
  price corrected by what the decodes that finished took; the allowance is counted at the prices
  themselves, so a burst that fits it is served on a host slowed by other work too.

Requests of small images only (none over `SMALL_PIXELS`, no CSV) have a correction of their own:
their price is mostly the fixed `PER_IMAGE_S`, about ten times what a 28x28 PNG takes, so at a
correction of 1 a fresh server took a burst of 64-image requests for ten times its work and refused
most of it. `calibrate` (at start) sets it from a few MNIST-style PNGs decoded here; every other
request starts at the prices (a flood of canvases is shed as before).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor
from typing import Any

import numpy as np

from digitserve.config import RequestLimits
from digitserve.imaging.decode import (
    ImageError,
    check_size,
    checked_large_size,
    header_size,
    large_header_size,
)
from digitserve.imaging.encode import synthetic_digit_pngs
from digitserve.imaging.mnist import prepare_many, timed_prepare_many
from digitserve.imaging.pixelcsv import looks_like_csv
from digitserve.serving.errors import DeadlineExceededError, OverloadedError
from digitserve.serving.inference.inputs import check_request_pixels

log = logging.getLogger(__name__)
# The price of decoding, measured on one core of the project's 2-core machine (docs/preprocessing.md):
PER_IMAGE_S = 1.0e-3  # any image, however small: an 8x8 or a 28x28 PNG takes about 1 ms
PER_PIXEL_S = 8e-8  # beyond that: a 400x400 canvas takes about 13 ms
PER_CSV_S = 2.0e-3  # a 28x28 pixel CSV, parsed in Python
PER_BYTE_S = 1e-6  # a large file whose header was not read on the loop: priced by its bytes
PER_FILE_BYTE_S = 2e-8  # a large PNG or JPEG whose size is known: its compressed bytes, beyond its pixels
HEADER_BYTES = 16 * 1024  # larger files' headers are read in the decode processes (Pillow's parse grows with bytes)
INLINE_S = 8e-3  # at most this much decoding per request on the event loop (about 7 digits)
COST_SMOOTHING = 0.2  # weight of the latest decode in the moving average of actual over priced
MIN_CORRECTION, MAX_CORRECTION = 0.05, 10.0  # how far decodes may say the prices are off
BURST_REFILL_S = 10.0  # an empty burst allowance is whole again after this long
CALIBRATION_IMAGES, CALIBRATION_ROUNDS = 8, 5  # the fastest round counts (start-up work may slow the others)
SMALL_PIXELS = 64 * 64  # a request of images no larger than this is "small" (its own correction)


def decode_job(
    blobs: Sequence[bytes], names: Sequence[str], max_image_pixels: int, max_request_pixels: int
) -> tuple[np.ndarray, float]:
    """In a decode process: the request's pixels from every header, read by Pillow (on the loop the
    large files' were not, or only a JPEG's frame header), then `timed_prepare_many`."""
    total = 0
    for blob, name in zip(blobs, names, strict=True):
        if not looks_like_csv(blob):
            width, height = header_size(blob)
            try:
                check_size(width, height, max_image_pixels)
                if len(blob) > HEADER_BYTES:
                    checked_large_size(blob, width, height)  # priced as what it is
            except ImageError as exc:
                raise type(exc)(f"{name}: {exc}") from None
            total += width * height
    check_request_pixels(total, max_request_pixels)
    return timed_prepare_many(blobs, names, max_image_pixels)


class ImageDecoder:
    """Decodes requests' images inline or in its own processes, admitting decode work by its cost."""

    def __init__(self, limits: RequestLimits, new_pool: Callable[[], Executor], submitter: Executor) -> None:
        self.limits = limits
        self.new_pool = new_pool
        self.executor = new_pool()  # the decode processes (they start on first use; the root closes them)
        self.submitter = submitter  # a thread that hands jobs to the pool: starting a process is not for the loop
        self.jobs = 0  # requests handed to the decode processes and not decoded yet
        self.backlog_pixels = 0  # their pixels
        self.backlog_s = 0.0  # their price
        self.correction = 1.0  # what finished decodes took over what they were priced at (a moving average)
        self.small_correction = 1.0  # the same for requests of small images only (calibrated at start)
        self.small_backlog_s = 0.0  # their share of backlog_s
        self.small_decoded = False  # a small request's decode has corrected small_correction
        self.burst_s = limits.decode_burst_s  # decode work that may still join past max_decode_wait_s
        self.refilled_at = time.monotonic()
        self.generation = 0  # pools started: a decode finishing in a restarted pool is not counted

    def calibrate(self) -> float:
        """Set the small requests' correction from this machine's speed: the fastest of a few rounds of
        decoding `synthetic_digit_pngs` here over their price, unless a decode has already set it.
        In a thread: a few milliseconds."""
        blobs = synthetic_digit_pngs(CALIBRATION_IMAGES)
        names = [f"calibration[{i}]" for i in range(len(blobs))]
        _, price, _, _ = self._price(blobs, names)
        took = min(timed_prepare_many(blobs, names, self.limits.max_image_pixels)[1] for _ in range(CALIBRATION_ROUNDS))
        if not self.small_decoded:
            self.small_correction = min(MAX_CORRECTION, max(MIN_CORRECTION, took / price))
        log.info("small images decode here in %.2f of their price", self.small_correction)
        return self.small_correction

    async def prepare(self, blobs: Sequence[bytes], names: Sequence[str], deadline: float) -> np.ndarray:
        """Decode and MNIST-normalise every image: (n, 28, 28) uint8, or an error naming the bad one."""
        pixels, cost, large, small = self._price(blobs, names)
        check_request_pixels(pixels, self.limits.max_request_pixels)
        if cost <= INLINE_S and not large:
            return prepare_many(blobs, names, self.limits.max_image_pixels)
        self.admit(pixels, cost, deadline, small)
        self._queued(1, pixels, cost, small)
        generation, pool = self.generation, self.executor
        loop = asyncio.get_running_loop()
        # submit spawns a decode process when one is missing: 0.1 s of fork and exec, in the submitter
        args = (decode_job, blobs, names, self.limits.max_image_pixels, self.limits.max_request_pixels)
        try:
            handoff = loop.run_in_executor(self.submitter, pool.submit, *args)
        except RuntimeError:  # the submitter is shut down: the server is stopping
            self._queued(-1, -pixels, -cost, small)
            raise OverloadedError("this server is stopping; retry shortly") from None
        try:
            job = await asyncio.shield(handoff)
        except asyncio.CancelledError:  # the job may still reach the pool: it is counted until it is done
            handoff.add_done_callback(lambda done: self._handed(done, generation, pixels, cost, small))
            raise
        except BaseException as exc:
            self._unqueued(generation, pixels, cost, small)
            replaced = isinstance(exc, RuntimeError) and pool is not self.executor  # shut down by a restart
            if isinstance(exc, BrokenExecutor) or replaced:
                raise self._restart(pool) from None
            raise
        work = asyncio.wrap_future(job)
        work.add_done_callback(lambda done: self._decoded(done, generation, pixels, cost, small))
        try:
            images, _ = await asyncio.wait_for(asyncio.shield(work), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceededError("the images could not be decoded before the deadline") from None
        except (BrokenExecutor, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not work.cancelled():
                raise  # this request was cancelled (its client left), not its job
            raise self._restart(pool) from None  # the pool broke, or a restart cancelled the job
        return images

    def _handed(self, handoff: asyncio.Future[Any], generation: int, pixels: int, cost: float, small: bool) -> None:
        """After a request was cancelled during its hand-off: follow the job it handed over (if any)."""
        if handoff.cancelled() or handoff.exception() is not None:
            self._unqueued(generation, pixels, cost, small)
            return
        work = asyncio.wrap_future(handoff.result())
        work.add_done_callback(lambda done: self._decoded(done, generation, pixels, cost, small))

    def _restart(self, broken: Executor) -> OverloadedError:
        """A decode process died (killed, out of memory): a new pool for the next request, and a
        503 for this one -- never a 500, never a pool that fails every request from now on. Every
        request waiting on the broken pool comes here; only the first replaces it."""
        if broken is self.executor:
            self.executor = self.new_pool()
            broken.shutdown(wait=False, cancel_futures=True)
            self.jobs, self.backlog_pixels, self.backlog_s, self.small_backlog_s = 0, 0, 0.0, 0.0
            self.generation += 1
            log.error("a decode process died; the decode processes were restarted")
        return OverloadedError("image decoding was restarted on this server; retry shortly")

    def admit(self, pixels: int, cost: float, deadline: float, small: bool = False) -> None:
        """503 unless this request's decode work can join: an idle decoder takes any; otherwise it must
        be done by its deadline, within the pixel backlog, and -- past `max_decode_wait_s` of expected
        waiting -- within the burst allowance, of which one request may draw an eighth (a burst is
        many requests, not one large one)."""
        now = time.monotonic()
        allowance = self.limits.decode_burst_s
        self.burst_s = min(allowance, self.burst_s + (now - self.refilled_at) * allowance / BURST_REFILL_S)
        self.refilled_at = now
        if not self.jobs:  # the last burst is over: the next one has the whole allowance
            self.burst_s = allowance
            return  # an idle decoder takes any request within the per-request limit (504 past its deadline)
        work = cost * (self.small_correction if small else self.correction)
        others = (self.backlog_s - self.small_backlog_s) * self.correction
        wait = (others + self.small_backlog_s * self.small_correction) / self.limits.decode_processes
        if now + wait + work > deadline:
            raise OverloadedError(
                f"the images waiting to be decoded need about {wait:.2f} s, and this request's {work:.2f} s "
                "more would pass its deadline; retry shortly"
            )
        if self.backlog_pixels + pixels > self.limits.max_decode_backlog_pixels:
            raise OverloadedError(f"{self.backlog_pixels:,} pixels are waiting to be decoded; retry shortly")
        if wait <= self.limits.max_decode_wait_s:
            return
        if cost > min(self.burst_s, allowance / 8):  # the queue has stood past the wait for longer than a burst
            raise OverloadedError(f"the images waiting to be decoded need about {wait:.2f} s; retry shortly")
        self.burst_s -= cost

    def _queued(self, jobs: int, pixels: int, cost: float, small: bool = False) -> None:
        self.jobs += jobs
        self.backlog_pixels += pixels
        self.backlog_s = max(0.0, self.backlog_s + cost) if self.jobs else 0.0
        if small or not self.jobs:
            self.small_backlog_s = min(self.backlog_s, max(0.0, self.small_backlog_s + cost)) if self.jobs else 0.0

    def _unqueued(self, generation: int, pixels: int, cost: float, small: bool = False) -> None:
        """A job left the backlog -- unless its pool was replaced since, and the backlog with it."""
        if generation == self.generation:
            self._queued(-1, -pixels, -cost, small)

    def _price(self, blobs: Sequence[bytes], names: Sequence[str]) -> tuple[int, float, bool, bool]:
        """(pixels, seconds, large, small): what decoding will take, from the headers (an image over
        the per-image limit is refused here), whether a file is over `HEADER_BYTES` (never decoded
        on the loop), and whether every image is at most SMALL_PIXELS (no CSV). A large PNG's or
        JPEG's size is found by `large_header_size`; other large files are priced by their bytes,
        their headers read in the decode processes (`decode_job`)."""
        pixels, cost, large, small = 0, 0.0, False, True
        for blob, name in zip(blobs, names, strict=True):
            if looks_like_csv(blob):
                cost, small = cost + PER_CSV_S, False
                continue
            if len(blob) > HEADER_BYTES:
                large = True
                width, height = large_header_size(blob)
                if not width * height:
                    cost += INLINE_S + len(blob) * PER_BYTE_S
                    continue
                cost += len(blob) * PER_FILE_BYTE_S
            else:
                width, height = header_size(blob)
            if width * height > self.limits.max_image_pixels:
                try:
                    check_size(width, height, self.limits.max_image_pixels)
                except ImageError as exc:
                    raise type(exc)(f"{name}: {exc}") from None
            pixels += width * height
            cost += PER_IMAGE_S + width * height * PER_PIXEL_S
            small = small and width * height <= SMALL_PIXELS
        return pixels, cost, large, small and not large

    def _decoded(
        self,
        work: asyncio.Future[tuple[np.ndarray, float]],
        generation: int,
        pixels: int,
        cost: float,
        small: bool = False,
    ) -> None:
        self._unqueued(generation, pixels, cost, small)
        if generation != self.generation:
            return
        if work.cancelled() or work.exception() is not None:  # retrieved: no "never retrieved" log
            return
        _, seconds = work.result()
        ratio = min(MAX_CORRECTION, max(MIN_CORRECTION, seconds / max(cost, 1e-6)))
        if small:
            self.small_correction += COST_SMOOTHING * (ratio - self.small_correction)
            self.small_decoded = True
        else:
            self.correction += COST_SMOOTHING * (ratio - self.correction)
