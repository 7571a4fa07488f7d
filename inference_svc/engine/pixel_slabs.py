"""Request tiles from the server process to the engine process through shared memory.

Pickled into the engine pipe, one request's tiles (eight 448 px tiles: megabytes) cost both
processes CPU: the Unix socket takes them a few hundred kilobytes at a time, each piece a
system call and, on a busy host, a wait for the other process to be scheduled
(``bench.handover`` measures it). Here the server copies them into a reusable shared-memory slab
and sends only the slab's number and the array's shape; the engine process copies them out
(tenths of a millisecond) and gives the slab back at once, so slabs are held only in transit
and a few of them serve any load.

Slabs are anonymous memory files (``memfd_create``): the descriptor goes to the engine process
once, over the same socket (``SCM_RIGHTS``), right before the first request that uses it, so
the two never disagree on which slabs exist. Nothing is named under ``/dev/shm`` (whose 64 MB
default in containers would be a trap) and nothing outlives the two processes. Where
``memfd_create`` does not exist, or when every slab is busy and the byte budget
(``PIXEL_BUFFER_MB``) allows no new one, the tiles are pickled as before.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from .messages import SlabOffer, SlabRef

logger = logging.getLogger(__name__)

# Slabs are sized in whole mebibytes so that requests of nearby sizes share them.
_GRANULE = 1 << 20


def available() -> bool:
    """Whether this platform has anonymous shared memory files (Linux)."""
    return hasattr(os, "memfd_create")


@dataclass(eq=False)
class _Slab:
    number: int
    size: int
    memory: mmap.mmap
    busy: bool = False


class SlabSender:
    """The server's side. :meth:`put` runs on the one thread that writes to the connection;
    :meth:`release` on the thread that reads from it."""

    def __init__(self, conn: Connection, budget_bytes: int, peer_pid: int) -> None:
        self._conn = conn
        self._budget = budget_bytes
        self._peer = peer_pid
        self._slabs: list[_Slab] = []
        self._lock = threading.Lock()
        self.shared = 0  # requests whose tiles went through a slab
        self.pickled = 0  # requests whose tiles were pickled (no slab free within the budget)

    @property
    def slab_bytes(self) -> int:
        return sum(slab.size for slab in self._slabs)

    def put(self, pixels: npt.NDArray[Any]) -> SlabRef | None:
        """Copy ``pixels`` into a free slab (made and announced first if needed); None when
        no slab can take them, and the caller pickles them instead."""
        slab = self._take(pixels.nbytes)
        if slab is None:
            self.pickled += 1
            return None
        view = np.ndarray(pixels.shape, dtype=pixels.dtype, buffer=slab.memory)
        np.copyto(view, pixels, casting="no")
        self.shared += 1
        return SlabRef(slab.number, tuple(pixels.shape), pixels.dtype.str)

    def release(self, number: int) -> None:
        with self._lock:
            if 0 <= number < len(self._slabs):
                self._slabs[number].busy = False

    def close(self) -> None:
        with self._lock:
            for slab in self._slabs:
                slab.memory.close()
            self._slabs.clear()

    def _take(self, nbytes: int) -> _Slab | None:
        with self._lock:
            free = [s for s in self._slabs if not s.busy and s.size >= nbytes]
            if free:
                slab = min(free, key=lambda s: s.size)
                slab.busy = True
                return slab
            size = -(-nbytes // _GRANULE) * _GRANULE
            if self.slab_bytes + size > self._budget:
                return None
        # A new slab: only this thread adds slabs, so its number is the next index on both
        # sides; the descriptor travels right behind the message that announces it.
        try:
            fd = os.memfd_create("rpi-tiles", os.MFD_CLOEXEC)
        except OSError as exc:
            self._no_memory(size, exc)
            return None
        try:
            try:
                # Reserve the pages now: a sparse file would fail on a write, with SIGBUS.
                os.posix_fallocate(fd, 0, size)
                memory = mmap.mmap(fd, size)
            except OSError as exc:
                self._no_memory(size, exc)
                return None
            slab = _Slab(len(self._slabs), size, memory, busy=True)
            self._conn.send(SlabOffer(slab.number, size))
            reduction.send_handle(self._conn, fd, self._peer)
        finally:
            os.close(fd)
        with self._lock:
            self._slabs.append(slab)
        return slab

    def _no_memory(self, size: int, exc: OSError) -> None:
        # The host is short of memory: pickling still works, and is what the budget's
        # exhaustion does too.
        logger.warning(
            "no shared memory for a %d MB tile slab (%s): pickling tiles", size >> 20, exc
        )


class SlabReceiver:
    """The engine process's side, on the one thread that reads from the connection."""

    def __init__(self) -> None:
        self._slabs: list[mmap.mmap] = []

    def add(self, conn: Connection, number: int, size: int) -> None:
        """Take the descriptor that follows a :class:`~.messages.SlabOffer`."""
        if number != len(self._slabs):
            raise RuntimeError(f"slab {number} announced out of order ({len(self._slabs)} known)")
        fd = reduction.recv_handle(conn)
        try:
            self._slabs.append(mmap.mmap(fd, size))
        finally:
            os.close(fd)

    def take(self, ref: SlabRef) -> npt.NDArray[Any]:
        """A private copy of the tiles in slab ``ref.slab``; the slab may be reused once this
        returns."""
        dtype = np.dtype(ref.dtype)
        return np.ndarray(ref.shape, dtype=dtype, buffer=self._slabs[ref.slab]).copy()

    def close(self) -> None:
        for memory in self._slabs:
            memory.close()
        self._slabs.clear()
