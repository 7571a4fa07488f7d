"""Signed webhooks against a real receiver on loopback that verifies every delivery with the
``standardwebhooks`` library: retries keep one webhook-id, 410 stops, a redirect is a failure,
an exhausted schedule dead-letters, and a persistence restart between completion and delivery
still delivers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc
from standardwebhooks import Webhook, WebhookVerificationError

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.operations.support import GatedEngine, cheap_output, metadata, wait_done
from tests.support.e2e import inference_settings
from tests.support.faults import cheap_request, wait_until
from tests.support.persistence import persistence_settings
from tests.support.postgres import PostgresForTests
from tests.support.processes import free_port

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
# Fast retries (a few quick ones, then slower): after failed attempt n, wait SCHEDULE[n - 1].
SCHEDULE = [0.05, 0.05, 0.05, 1.0, 1.0]


@dataclass
class Receiver:
    base_url: str
    # path -> statuses to answer, in order; 200 once spent. "hold" paths answer 503 while held.
    script: dict[str, list[int]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    # path -> (webhook-id, status answered, verified payload) per request.
    seen: dict[str, list[tuple[str, int, dict[str, object]]]] = field(default_factory=dict)
    unverified: int = 0

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver("")
    verifier = Webhook(SECRET)

    async def handle(request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.text()
        try:
            payload = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            state.unverified += 1
            return web.Response(status=400)
        if path in state.held:
            status = 503
        else:
            queue = state.script.get(path, [])
            status = queue.pop(0) if queue else 200
        state.seen.setdefault(path, []).append((request.headers["webhook-id"], status, payload))
        if status == 302:
            return web.Response(status=302, headers={"Location": state.url("elsewhere")})
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/{path}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.base_url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@dataclass
class Persistence:
    """A persistence service on one fixed port across restarts."""

    database_url: str
    port: int = field(default_factory=free_port)
    app: PersistenceApp | None = None

    async def start(self) -> None:
        self.app = PersistenceApp(
            persistence_settings(
                self.database_url,
                grpc_listen=f"127.0.0.1:{self.port}",
                webhook_retry_schedule_s=SCHEDULE,
                job_sweep_interval_s=0.2,
            ),
            registry=CollectorRegistry(),
        )
        await self.app.start()

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop(0)
            self.app = None


@pytest_asyncio.fixture(scope="module")
async def persistence(postgres: PostgresForTests) -> AsyncIterator[Persistence]:
    async with postgres.fresh_database("rpi_webhooks_") as url:
        service = Persistence(url)
        await service.start()
        yield service
        await service.stop()


@pytest_asyncio.fixture(scope="module")
async def inference(
    persistence: Persistence, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InferenceApp]:
    tmp = tmp_path_factory.mktemp("webhooks")
    secrets_file = tmp / "webhook-secrets.yaml"
    secrets_file.write_text(yaml.safe_dump({"default": SECRET}))
    app = InferenceApp(
        inference_settings(
            tmp,
            f"127.0.0.1:{persistence.port}",
            job_poll_interval_s=0.05,
            webhook_secrets_file=secrets_file,
            allow_private_addresses=False,
            allowed_networks=["127.0.0.1"],
        ),
        registry=CollectorRegistry(),
        engine=GatedEngine([cheap_output()] * 100),
    )
    await app.start()
    yield app
    await app.stop(5)


@pytest_asyncio.fixture(scope="module")
async def stubs(
    inference: InferenceApp,
) -> AsyncIterator[tuple[opb_grpc.AsyncInspectionServiceStub, lro_grpc.OperationsStub]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}") as channel:
        yield opb_grpc.AsyncInspectionServiceStub(channel), lro_grpc.OperationsStub(channel)


Stubs = tuple[opb_grpc.AsyncInspectionServiceStub, lro_grpc.OperationsStub]


async def _submit(stubs: Stubs, url: str) -> str:
    request = opb.SubmitInspectionRequest(inspection=cheap_request("SHIP-HOOK"))
    request.callback.url = url
    operation = await stubs[0].SubmitInspection(request)
    assert metadata(operation).callback.state == opb.CALLBACK_STATE_PENDING
    return str(operation.name)


async def _callback_settled(stubs: Stubs, name: str) -> opb.CallbackDelivery:
    """The callback once it is delivered or dead-lettered."""
    settled = (opb.CALLBACK_STATE_DELIVERED, opb.CALLBACK_STATE_DEAD_LETTER)
    for _ in range(3000):
        operation = await stubs[1].GetOperation(lro.GetOperationRequest(name=name))
        callback = metadata(operation).callback
        if callback.state in settled:
            return callback
        await asyncio.sleep(0.02)
    raise AssertionError(f"the callback of {name} never settled")


async def test_500_three_times_then_200_is_one_delivery_under_one_webhook_id(
    stubs: Stubs, receiver: Receiver
) -> None:
    receiver.script["flaky"] = [500, 500, 500]
    name = await _submit(stubs, receiver.url("flaky"))
    done = await wait_done(stubs[1], name)
    callback = await _callback_settled(stubs, name)
    assert callback.state == opb.CALLBACK_STATE_DELIVERED
    assert callback.attempts == 4
    seen = receiver.seen["flaky"]
    assert [status for _, status, _ in seen] == [500, 500, 500, 200]
    assert len({webhook_id for webhook_id, _, _ in seen}) == 1
    assert seen[0][0] == callback.webhook_id
    payload = seen[-1][2]
    assert payload["type"] == "rpi.inspection.operation.done"
    data = payload["data"]
    assert isinstance(data, dict) and data["name"] == name and data["done"] is True
    assert data["response"]["inspection_id"] == metadata(done).inspection_id
    assert receiver.unverified == 0


async def test_410_stops_delivery(stubs: Stubs, receiver: Receiver) -> None:
    receiver.script["gone"] = [410, 410, 410]
    name = await _submit(stubs, receiver.url("gone"))
    callback = await _callback_settled(stubs, name)
    assert callback.state == opb.CALLBACK_STATE_DEAD_LETTER
    assert callback.attempts == 1 and "410" in callback.last_error
    assert [status for _, status, _ in receiver.seen["gone"]] == [410]


async def test_a_redirect_is_a_failure_and_is_not_followed(
    stubs: Stubs, receiver: Receiver
) -> None:
    receiver.script["moved"] = [302]
    name = await _submit(stubs, receiver.url("moved"))
    callback = await _callback_settled(stubs, name)
    assert callback.state == opb.CALLBACK_STATE_DELIVERED and callback.attempts == 2
    assert "elsewhere" not in receiver.seen


async def test_out_of_retries_the_delivery_is_dead_lettered(
    stubs: Stubs, receiver: Receiver, persistence: Persistence
) -> None:
    receiver.script["down"] = [500] * (len(SCHEDULE) + 1)
    name = await _submit(stubs, receiver.url("down"))
    callback = await _callback_settled(stubs, name)
    assert callback.state == opb.CALLBACK_STATE_DEAD_LETTER
    assert callback.attempts == len(SCHEDULE) + 1
    assert callback.last_error == "HTTP 500"
    assert len(receiver.seen["down"]) == len(SCHEDULE) + 1
    assert persistence.app is not None
    await wait_until(
        lambda: (
            persistence.app is not None
            and persistence.app.job_metrics.dead_letters._value.get() >= 1
        ),
        "the dead-letter gauge counts it",
    )


async def test_a_persistence_restart_between_completion_and_delivery_still_delivers(
    stubs: Stubs, receiver: Receiver, persistence: Persistence
) -> None:
    receiver.held.add("restart")
    name = await _submit(stubs, receiver.url("restart"))
    await wait_done(stubs[1], name)
    await wait_until(lambda: bool(receiver.seen.get("restart")), "a first attempt")
    await persistence.stop()
    await persistence.start()
    receiver.held.discard("restart")
    callback = await _callback_settled(stubs, name)
    assert callback.state == opb.CALLBACK_STATE_DELIVERED
    seen = receiver.seen["restart"]
    assert seen[-1][1] == 200 and [s for _, s, _ in seen].count(200) == 1
    assert len({webhook_id for webhook_id, _, _ in seen}) == 1


def test_secrets_file_format(tmp_path: Path) -> None:
    from inference_svc.operations.webhooks import WebhookSecrets, WebhookSecretsError

    path = tmp_path / "s.yaml"
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    path.write_text(yaml.safe_dump({"default": SECRET, "callers": {"alice": [other, SECRET]}}))
    loaded = WebhookSecrets.load(path)
    assert loaded.for_caller("alice") == (other, SECRET)
    assert loaded.for_caller("bob") == (SECRET,)
    path.write_text(json.dumps({"default": "not-a-secret"}))
    with pytest.raises(WebhookSecretsError):
        WebhookSecrets.load(path)


def test_a_changed_secrets_file_is_read_again(tmp_path: Path) -> None:
    from inference_svc.operations.webhooks import WebhookSecrets

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"default": SECRET}))
    loaded = WebhookSecrets.load(path)
    rotated = "whsec_" + base64.b64encode(b"r" * 32).decode()
    path.write_text(yaml.safe_dump({"default": [rotated, SECRET]}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    loaded.refresh()
    assert loaded.for_caller("anyone") == (rotated, SECRET)
    path.write_text("default: not-a-secret\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    loaded.refresh()  # a broken file keeps the last good secrets
    assert loaded.for_caller("anyone") == (rotated, SECRET)
