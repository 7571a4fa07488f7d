"""EventDelivery against a real grpc.aio persistence server fake (loopback): transient failures
are retried, refused events are isolated by bisection and dead-lettered, the rest is delivered
once, and the link state follows what the server does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.events.delivery import DeliveryHooks, EventDelivery, LinkState
from inference_svc.events.spool import EventSpool
from inference_svc.persistence_link import PERSISTENCE_SERVICE, PersistenceSender

POISON = "poison"


@dataclass
class FakePersistence(ppb_grpc.PersistenceServiceServicer):
    """Applies a batch atomically unless it holds a poison event (INVALID_ARGUMENT, nothing
    applied, like the real service) or a scripted failure is due."""

    applied: list[str] = field(default_factory=list)
    calls: int = 0
    fail_next: list[grpc.StatusCode] = field(default_factory=list)

    async def RecordEvents(
        self,
        request: ppb.RecordEventsRequest,
        context: grpc.aio.ServicerContext[ppb.RecordEventsRequest, ppb.RecordEventsResponse],
    ) -> ppb.RecordEventsResponse:
        self.calls += 1
        if self.fail_next:
            await context.abort(self.fail_next.pop(0), "scripted failure")
        bad = [i for i, e in enumerate(request.events) if e.inspection_id == POISON]
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"events[{bad[0]}] refused")
        fresh = [e.event_id for e in request.events if e.event_id not in self.applied]
        self.applied.extend(fresh)
        return ppb.RecordEventsResponse(
            applied=len(fresh), duplicates=len(request.events) - len(fresh)
        )

    async def GetInspection(
        self,
        request: ppb.GetInspectionRequest,
        context: grpc.aio.ServicerContext[ppb.GetInspectionRequest, ppb.GetInspectionResponse],
    ) -> ppb.GetInspectionResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def ListInspections(
        self,
        request: ppb.ListInspectionsRequest,
        context: grpc.aio.ServicerContext[ppb.ListInspectionsRequest, ppb.ListInspectionsResponse],
    ) -> ppb.ListInspectionsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")


@dataclass
class Server:
    fake: FakePersistence
    health: HealthServicer
    target: str


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    fake = FakePersistence()
    health = HealthServicer()
    await health.set(PERSISTENCE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    srv = grpc.aio.server()
    ppb_grpc.add_PersistenceServiceServicer_to_server(fake, srv)
    health_pb2_grpc.add_HealthServicer_to_server(health, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield Server(fake, health, f"127.0.0.1:{port}")
    await srv.stop(0)


def event(n: int, inspection_id: str = "00000000-0000-0000-0000-000000000001") -> tuple[str, bytes]:
    e = ppb.Event(event_id=f"ev-{n:04d}", inspection_id=inspection_id)
    return e.event_id, e.SerializeToString()


@dataclass
class Recorded:
    dead: list[tuple[str, str]] = field(default_factory=list)
    links: list[LinkState] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def hooks(self) -> DeliveryHooks:
        async def link(state: LinkState) -> None:
            self.links.append(state)

        return DeliveryHooks(
            on_dead_letter=lambda event_id, code: self.dead.append((event_id, code)),
            on_link_state=link,
            on_failure=lambda e: self.failures.append(
                e if isinstance(e, str) else type(e).__name__
            ),
        )


def delivery(
    tmp_path: Path, target: str, recorded: Recorded, *, batch_size: int = 16
) -> tuple[EventDelivery, PersistenceSender]:
    sender = PersistenceSender(target, timeout_s=2.0, probe_timeout_s=0.5)
    d = EventDelivery(
        EventSpool(tmp_path / "spool", 1 << 20),
        sender,
        batch_size=batch_size,
        initial_backoff_s=0.01,
        max_backoff_s=0.05,
        hooks=recorded.hooks(),
        probe_interval_s=0.05,
    )
    return d, sender


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_poison_events_are_isolated_and_the_rest_delivered_once(
    server: Server, tmp_path: Path
) -> None:
    recorded = Recorded()
    d, sender = delivery(tmp_path, server.target, recorded)
    await d.start()
    items = [event(n, POISON if n in (3, 17) else f"iid-{n}") for n in range(40)]
    await d.append(items)
    await wait_until(lambda: d.backlog() == 0, "spool drained")

    good = [event_id for event_id, _ in items if event_id not in ("ev-0003", "ev-0017")]
    assert sorted(server.fake.applied) == sorted(good)
    assert len(server.fake.applied) == len(set(server.fake.applied))
    assert sorted(recorded.dead) == [
        ("ev-0003", "INVALID_ARGUMENT"),
        ("ev-0017", "INVALID_ARGUMENT"),
    ]
    letters = await d.spool.dead_letters()
    assert sorted(letter.event_id for letter in letters) == ["ev-0003", "ev-0017"]
    assert all("refused" in letter.error_message for letter in letters)
    assert d.spool.stats().dead_letters == 2
    assert "INVALID_ARGUMENT" in recorded.failures
    # Refusals come from a working link: it never went down.
    assert LinkState.DOWN not in recorded.links
    assert d.link_state is LinkState.UP
    assert await d.stop(1.0)
    await sender.close()


async def test_undecodable_spooled_payload_is_dead_lettered(server: Server, tmp_path: Path) -> None:
    recorded = Recorded()
    d, sender = delivery(tmp_path, server.target, recorded)
    await d.start()
    await d.append([event(1), ("garbage", b"\xff\xff\xff\xff"), event(2)])
    await wait_until(lambda: d.backlog() == 0, "spool drained")
    assert sorted(server.fake.applied) == ["ev-0001", "ev-0002"]
    assert recorded.dead == [("garbage", "INVALID_ARGUMENT")]
    assert await d.stop(1.0)
    await sender.close()


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        # Configuration errors say nothing about the events: retried, never dead-lettered.
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
async def test_non_rejection_failures_are_retried_without_dead_letters(
    server: Server, tmp_path: Path, code: grpc.StatusCode
) -> None:
    server.fake.fail_next = [code] * 3
    recorded = Recorded()
    d, sender = delivery(tmp_path, server.target, recorded)
    await d.start()
    items = [event(n, f"iid-{n}") for n in range(10)]
    await d.append(items)
    await wait_until(lambda: d.backlog() == 0, "spool drained")
    assert sorted(server.fake.applied) == [event_id for event_id, _ in items]
    assert recorded.dead == []
    assert server.fake.calls == 4
    assert recorded.failures == ["AioRpcError"] * 3
    assert recorded.links[-2:] == [LinkState.DOWN, LinkState.UP]
    assert await d.stop(1.0)
    await sender.close()


async def test_link_state_follows_persistence_health_while_idle(
    server: Server, tmp_path: Path
) -> None:
    recorded = Recorded()
    d, sender = delivery(tmp_path, server.target, recorded)
    await d.start()
    await wait_until(lambda: d.link_state is LinkState.UP, "link up")
    await server.health.set(PERSISTENCE_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    await wait_until(lambda: d.link_state is LinkState.DOWN, "link down")
    assert "NOT_SERVING" in d.last_error
    await server.health.set(PERSISTENCE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await wait_until(lambda: d.link_state is LinkState.UP, "link up again")
    assert recorded.links[0] is LinkState.UNKNOWN
    assert recorded.links[1:] == [LinkState.UP, LinkState.DOWN, LinkState.UP]
    assert await d.stop(1.0)
    await sender.close()


async def test_unreachable_events_stay_spooled_across_restart_then_deliver(
    server: Server, tmp_path: Path
) -> None:
    recorded = Recorded()
    # Nothing listens on port 1.
    d, sender = delivery(tmp_path, "127.0.0.1:1", recorded)
    await d.start()
    items = [event(n, f"iid-{n}") for n in range(25)]
    await d.append(items)
    await wait_until(lambda: d.link_state is LinkState.DOWN, "link down")
    assert not await d.stop(0.3)
    await sender.close()
    assert server.fake.applied == []

    d2, sender2 = delivery(tmp_path, server.target, Recorded())
    await d2.start()
    assert d2.backlog() == 25
    await wait_until(lambda: d2.backlog() == 0, "spool drained after restart")
    assert sorted(server.fake.applied) == [event_id for event_id, _ in items]
    assert await d2.stop(1.0)
    await sender2.close()


async def test_oldest_age_and_bound_read_live(server: Server, tmp_path: Path) -> None:
    recorded = Recorded()
    d, sender = delivery(tmp_path, "127.0.0.1:1", recorded)
    await d.start()
    assert d.oldest_age_s() == 0.0
    await d.append([event(1)])
    first = d.oldest_age_s()
    await asyncio.sleep(0.05)
    # Grows without any write: a scrape while the link is down sees the real age.
    assert d.oldest_age_s() > first
    assert not d.is_full()
    await d.stop(0.1)
    await sender.close()
