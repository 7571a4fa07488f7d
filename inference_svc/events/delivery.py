"""Delivers spooled events to the persistence service, in order, in batches, with retries.

Events are appended to the durable spool first (group commit: concurrent appends share one
transaction) and only then acknowledged to the pipeline; a single delivery task drains the
spool, so an event reaches the persistence service at least once and the persistence service's
idempotency turns that into exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from inference_svc.events.spool import EventSpool, SpooledEvent

log = logging.getLogger(__name__)

Sender = Callable[[Sequence[bytes]], Awaitable[None]]


class LinkState(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    DISABLED = "disabled"


@dataclass
class DeliveryHooks:
    """Observability callbacks (metrics), all optional."""

    on_attempt: Callable[[int], None] | None = None
    on_delivered: Callable[[int], None] | None = None
    on_failure: Callable[[BaseException], None] | None = None
    on_backlog: Callable[[int, float | None], None] | None = None


class EventDelivery:
    def __init__(
        self,
        spool: EventSpool,
        sender: Sender | None,
        batch_size: int = 64,
        max_backoff_s: float = 30.0,
        initial_backoff_s: float = 0.2,
        hooks: DeliveryHooks | None = None,
    ) -> None:
        self._spool = spool
        self._sender = sender
        self._batch_size = batch_size
        self._max_backoff = max_backoff_s
        self._initial_backoff = initial_backoff_s
        self._hooks = hooks or DeliveryHooks()
        self._pending: list[tuple[list[tuple[str, bytes]], asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._writer_wakeup = asyncio.Event()
        self._deliver_wakeup = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._deliver_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.link_state = LinkState.DISABLED if sender is None else LinkState.UNKNOWN
        self.last_error: str = ""

    @property
    def spool(self) -> EventSpool:
        return self._spool

    def is_full(self) -> bool:
        return self._spool.stats().bytes + self._pending_bytes >= self._spool.max_bytes

    def backlog(self) -> int:
        return self._spool.stats().count + sum(len(items) for items, _ in self._pending)

    async def start(self) -> None:
        stats = await self._spool.open()
        if stats.count:
            log.info(
                "event spool holds undelivered events from an earlier run",
                extra={"events": stats.count, "spool_bytes": stats.bytes},
            )
        self._writer_task = asyncio.create_task(self._writer(), name="event-spool-writer")
        self._deliver_task = asyncio.create_task(self._deliverer(), name="event-delivery")
        self._deliver_wakeup.set()

    async def append(self, items: list[tuple[str, bytes]]) -> None:
        """Returns once the events are durably spooled."""
        if self._writer_task is None or self._writer_task.done():
            raise RuntimeError("event delivery is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        self._pending_bytes += sum(len(p) for _, p in items)
        self._writer_wakeup.set()
        # Shielded: a cancelled inspection must not cancel the write of its own records.
        await asyncio.shield(future)

    async def _writer(self) -> None:
        while True:
            await self._writer_wakeup.wait()
            self._writer_wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
                items = [item for group, _ in batch for item in group]
                try:
                    await self._spool.append(items)
                except Exception as exc:
                    log.exception("event spool append failed")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                self._report_backlog()
                self._deliver_wakeup.set()
            if self._stopping and not self._pending:
                return

    def _report_backlog(self) -> None:
        if self._hooks.on_backlog:
            stats = self._spool.stats()
            age = None if stats.oldest_created_at is None else time.time() - stats.oldest_created_at
            self._hooks.on_backlog(stats.count, age)

    async def _deliverer(self) -> None:
        backoff = self._initial_backoff
        while True:
            await self._deliver_wakeup.wait()
            self._deliver_wakeup.clear()
            if self._sender is None:
                continue
            while True:
                batch = await self._spool.peek(self._batch_size)
                if not batch:
                    break
                if await self._send(batch):
                    backoff = self._initial_backoff
                    continue
                # Full jitter keeps many pods from retrying in lockstep after an outage.
                # stop() cancels this task, so the sleep never delays shutdown.
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(self._max_backoff, backoff * 2)

    async def _send(self, batch: list[SpooledEvent]) -> bool:
        assert self._sender is not None
        if self._hooks.on_attempt:
            self._hooks.on_attempt(len(batch))
        try:
            await self._sender([e.payload for e in batch])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.link_state is not LinkState.DOWN:
                log.warning(
                    "event delivery failed; events stay spooled and will be retried",
                    extra={"events": len(batch), "error": str(exc)[:300]},
                )
            self.link_state = LinkState.DOWN
            self.last_error = str(exc)[:300]
            if self._hooks.on_failure:
                self._hooks.on_failure(exc)
            return False
        await self._spool.delete([e.seq for e in batch])
        if self.link_state is LinkState.DOWN:
            log.info("event delivery recovered")
        self.link_state = LinkState.UP
        if self._hooks.on_delivered:
            self._hooks.on_delivered(len(batch))
        self._report_backlog()
        return True

    async def flush(self, timeout_s: float) -> bool:
        """Delivers what is spooled within the time given. True when the spool is empty."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            await asyncio.sleep(0.01)
            if time.monotonic() > deadline:
                return False
        if self._sender is None:
            return self._spool.stats().count == 0
        while time.monotonic() < deadline:
            batch = await self._spool.peek(self._batch_size)
            if not batch:
                return True
            if not await self._send(batch):
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return self._spool.stats().count == 0

    async def stop(self, flush_timeout_s: float) -> bool:
        """Stops accepting, flushes within the time given, leaves the rest spooled."""
        self._stopping = True
        self._writer_wakeup.set()
        if self._writer_task:
            await self._writer_task
        if self._deliver_task:
            self._deliver_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deliver_task
        flushed = await self.flush(flush_timeout_s)
        stats = self._spool.stats()
        if not flushed:
            log.warning(
                "events left in the spool for the next start",
                extra={"events": stats.count, "spool": str(self._spool.path)},
            )
        await self._spool.close()
        return flushed
