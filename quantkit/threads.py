"""Two small helpers that overlap file I/O and hashing with computation.

hashlib, file reads/writes and torch kernels all release the GIL, so a reader
thread and a writer thread run truly in parallel with the quantization.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(gen: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield gen's items, produced up to `depth` ahead in a background thread."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put((True, _DONE))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    t = threading.Thread(target=produce, daemon=True, name="quantkit-prefetch")
    t.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        t.join()


class Sink:
    """Call fn(item) for each item put, in order, in one background thread."""

    def __init__(self, fn: Callable[[object], None], depth: int = 4):
        self._fn = fn
        self._q: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="quantkit-sink")
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._fn(item)
                except BaseException as e:
                    self._error = e

    def put(self, item: object) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def close(self) -> None:
        self._q.put(_DONE)
        self._t.join()
        if self._error is not None:
            raise self._error

    def abort(self, timeout: float = 10.0) -> None:
        """Stop without draining; never blocks on a queue an interrupt may have left half-used."""
        self._stop.set()
        self._t.join(timeout)
