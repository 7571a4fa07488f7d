"""Delivers spooled events to the persistence service, in batches, with retries.

Events are appended to the durable spool first (group commit: concurrent appends share one
transaction) and only then acknowledged to the pipeline; a single delivery task drains the
spool and deletes a batch only after the persistence service acknowledged it (which it does
only after its transaction committed). So an event reaches the persistence service at least
once, and the persistence service's idempotency (one row per event id) makes that exactly once.

Failures are of two kinds (the sender classifies them, this module stays free of grpc):

- transient (unreachable, deadline, overloaded, database down, anything unexpected): the batch
  stays spooled and is retried with full-jitter exponential backoff, forever;
- ``RejectedBatchError`` (the persistence service refused the data itself): retrying the same
  batch can never succeed and would block every event behind it, so the batch is bisected to
  isolate the refused event(s), which are moved to the spool's dead-letter table (logged with
  their event ids and counted), and the rest is delivered.
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
from typing import Protocol

from inference_svc.events.spool import EventSpool, SpooledEvent

log = logging.getLogger(__name__)


class RejectedBatchError(Exception):
    """The persistence service refused the batch's content for good (e.g. INVALID_ARGUMENT):
    sending it again unchanged cannot succeed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EventSender(Protocol):
    async def send(self, payloads: Sequence[bytes], timeout_s: float | None = None) -> None:
        """Returns once every payload is durably recorded. Raises RejectedBatchError when the
        content is refused for good, anything else for a failure worth retrying."""

    async def probe(self) -> None:
        """Returns when the persistence service is reachable and ready; raises otherwise."""


class LinkState(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    DISABLED = "disabled"


@dataclass
class DeliveryHooks:
    """Observability callbacks (metrics, health), all optional."""

    on_attempt: Callable[[int], None] | None = None
    on_delivered: Callable[[int], None] | None = None
    # An exception for a transient failure; the gRPC code name for a rejected batch.
    on_failure: Callable[[BaseException | str], None] | None = None
    on_backlog: Callable[[int, float | None], None] | None = None
    on_dead_letter: Callable[[str, str], None] | None = None
    # Awaited on every change, in order, so health never reports a stale state.
    on_link_state: Callable[[LinkState], Awaitable[None]] | None = None


class EventDelivery:
    def __init__(
        self,
        spool: EventSpool,
        sender: EventSender | None,
        batch_size: int = 64,
        max_backoff_s: float = 30.0,
        initial_backoff_s: float = 0.2,
        hooks: DeliveryHooks | None = None,
        probe_interval_s: float = 5.0,
    ) -> None:
        self._spool = spool
        self._sender = sender
        self._batch_size = batch_size
        self._max_backoff = max_backoff_s
        self._initial_backoff = initial_backoff_s
        self._probe_interval = probe_interval_s
        self._hooks = hooks or DeliveryHooks()
        self._pending: list[tuple[list[tuple[str, bytes]], asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._pending_count = 0
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
        """Events accepted and not yet acknowledged by the persistence service."""
        return self._spool.stats().count + self._pending_count

    def oldest_age_s(self) -> float:
        """Age of the oldest undelivered event, 0 when none (computed now, never stale)."""
        oldest = self._spool.stats().oldest_created_at
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def start(self) -> None:
        stats = await self._spool.open()
        if stats.count:
            log.info(
                "event spool holds undelivered events from an earlier run",
                extra={"events": stats.count, "spool_bytes": stats.bytes},
            )
        if stats.dead_letters:
            log.warning(
                "event spool holds dead-lettered events that need an operator",
                extra={"dead_letters": stats.dead_letters, "spool": str(self._spool.path)},
            )
        await self._set_link(self.link_state, force=True)
        self._writer_task = asyncio.create_task(self._writer(), name="event-spool-writer")
        self._deliver_task = asyncio.create_task(self._deliverer(), name="event-delivery")
        self._deliver_wakeup.set()

    async def append(self, items: list[tuple[str, bytes]]) -> None:
        """Returns once the events are durably spooled."""
        if self._stopping or self._writer_task is None or self._writer_task.done():
            raise RuntimeError("event delivery is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        self._pending_bytes += sum(len(p) for _, p in items)
        self._pending_count += len(items)
        self._writer_wakeup.set()
        # Shielded: a cancelled inspection must not cancel the write of its own records.
        await asyncio.shield(future)

    async def _writer(self) -> None:
        while True:
            await self._writer_wakeup.wait()
            self._writer_wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                items = [item for group, _ in batch for item in group]
                try:
                    await self._spool.append(items)
                except Exception as exc:
                    log.exception("event spool append failed")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                finally:
                    # Only now: until the append landed, these bytes still count against the
                    # bound, so a burst cannot slip past it between the check and the write.
                    self._pending_bytes -= sum(len(p) for _, p in items)
                    self._pending_count -= len(items)
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

    async def _set_link(self, state: LinkState, *, force: bool = False) -> None:
        if state is self.link_state and not force:
            return
        self.link_state = state
        if state is LinkState.UP and not force:
            log.info("persistence link up")
        elif state is LinkState.DOWN:
            log.warning("persistence link down", extra={"error": self.last_error})
        if self._hooks.on_link_state:
            try:
                await self._hooks.on_link_state(state)
            except Exception:
                log.exception("link state hook failed")

    async def _deliverer(self) -> None:
        backoff = self._initial_backoff
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._probe_interval):
                    await self._deliver_wakeup.wait()
            self._deliver_wakeup.clear()
            if self._sender is None:
                continue
            try:
                if self._spool.stats().count == 0:
                    # Idle: still find out whether the link is up, so health is not stale.
                    await self._probe()
                    continue
                while self._spool.stats().count:
                    if await self._deliver_next():
                        backoff = self._initial_backoff
                        continue
                    # Full jitter keeps many pods from retrying in lockstep after an outage.
                    # stop() cancels this task, so the sleep never delays shutdown.
                    await asyncio.sleep(random.uniform(0, backoff))
                    backoff = min(self._max_backoff, backoff * 2)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A spool (disk) error: keep the task alive, the events are still on disk.
                log.exception("event delivery loop failed; retrying")
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(self._max_backoff, backoff * 2)
                self._deliver_wakeup.set()

    async def _probe(self) -> None:
        assert self._sender is not None
        try:
            await self._sender.probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_error = str(exc)[:300]
            await self._set_link(LinkState.DOWN)
            return
        await self._set_link(LinkState.UP)

    async def _deliver_next(self, timeout_s: float | None = None) -> bool:
        """Delivers (or dead-letters) the oldest batch. False after a transient failure."""
        batch = await self._spool.peek(self._batch_size)
        if not batch:
            return True
        try:
            await self._deliver_or_isolate(batch, timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.link_state is not LinkState.DOWN:
                log.warning(
                    "event delivery failed; events stay spooled and will be retried",
                    extra={"events": len(batch), "error": str(exc)[:300]},
                )
            self.last_error = str(exc)[:300]
            if self._hooks.on_failure:
                self._hooks.on_failure(exc)
            await self._set_link(LinkState.DOWN)
            return False
        return True

    async def _deliver_or_isolate(self, batch: list[SpooledEvent], timeout_s: float | None) -> None:
        """Sends the batch; when its content is refused, bisects it so that only the refused
        events are dead-lettered (k bad events among n cost about 2k·log2(n) calls). Transient
        failures propagate: what was delivered so far stays delivered, the rest stays spooled."""
        assert self._sender is not None
        if self._hooks.on_attempt:
            self._hooks.on_attempt(len(batch))
        try:
            await self._sender.send([e.payload for e in batch], timeout_s)
        except RejectedBatchError as exc:
            # The service answered: the link itself works.
            await self._set_link(LinkState.UP)
            if self._hooks.on_failure:
                self._hooks.on_failure(exc.code)
            if len(batch) == 1:
                await self._dead_letter(batch[0], exc)
                return
            middle = len(batch) // 2
            await self._deliver_or_isolate(batch[:middle], timeout_s)
            await self._deliver_or_isolate(batch[middle:], timeout_s)
            return
        await self._spool.delete([e.seq for e in batch])
        await self._set_link(LinkState.UP)
        if self._hooks.on_delivered:
            self._hooks.on_delivered(len(batch))
        self._report_backlog()

    async def _dead_letter(self, event: SpooledEvent, exc: RejectedBatchError) -> None:
        if await self._spool.dead_letter(event.seq, exc.code, exc.message):
            log.error(
                "event refused by the persistence service; moved to the dead-letter table",
                extra={
                    "event_id": event.event_id,
                    "error_code": exc.code,
                    "error": exc.message[:300],
                    "spool": str(self._spool.path),
                },
            )
            if self._hooks.on_dead_letter:
                self._hooks.on_dead_letter(event.event_id, exc.code)
        self._report_backlog()

    async def flush(self, timeout_s: float) -> bool:
        """Delivers what is spooled within the time given. True when the spool is empty."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            await asyncio.sleep(0.01)
            if time.monotonic() > deadline:
                return False
        if self._sender is None:
            return self._spool.stats().count == 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                while self._spool.stats().count:
                    remaining = deadline - time.monotonic()
                    if not await self._deliver_next(timeout_s=max(0.1, remaining)):
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
