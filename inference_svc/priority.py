"""Lowering the CPU priority of throughput work, so latency work runs first on a busy node.

The service's event loop answers every call and every health check; image decoding and the
model loop are bulk work that can wait a few milliseconds. Raising niceness needs no
privilege, and on Linux a thread has its own niceness, so one pool's threads can yield to the
event loop thread of the same process.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux; elsewhere a no-op)."""
    if nice <= 0 or not hasattr(os, "setpriority") or not hasattr(os, "getpriority"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError:  # a sandbox may refuse; the work still runs, at normal priority
        logger.debug("could not lower the priority of thread %d", tid, exc_info=True)


def lower_process_priority(nice: int) -> None:
    """Add ``nice`` to the calling process's niceness (threads started later inherit it)."""
    if nice <= 0 or not hasattr(os, "nice"):
        return
    try:
        os.nice(nice)
    except OSError:
        logger.debug("could not lower the process priority", exc_info=True)
