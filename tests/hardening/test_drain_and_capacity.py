"""Drain that health checks can see, and capacity checked before any fetch (issue 18 items 4
and 8), each reproduced first: a health prober running through SIGTERM, a full engine refusing
a request before its images are fetched."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage
from inference_svc.grpc_api.admission import Admission, refuse_unless_serving
from tests.support.e2e import MODEL_CACHE, QUESTIONS, ROOT, inference_settings
from tests.support.imaging import LoopbackServer
from tests.support.processes import free_port, spawn_service, wait_serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def request(uri: str = "https://metadata.internal/a.jpg") -> pb.InspectRequest:
    """A valid request; by default its images are refused by name, with no network use."""
    return pb.InspectRequest(
        shipping_id="SHIP-DRAIN",
        product_name="ACME mug",
        reference_images=[pb.Image(uri=uri)],
        pickup_images=[pb.Image(uri=uri)],
        questions=QUESTIONS,
    )


def error_details(exc: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """(ErrorInfo.reason, RetryInfo delay in seconds or None)."""
    status = rpc_status.from_call(exc)
    assert status is not None, "no google.rpc.Status"
    reason, delay = "", None
    for detail in status.details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return reason, delay


# -- drain (item 4)


def test_draining_refusal_is_retryable_and_says_why() -> None:
    refuse_unless_serving(True, draining=False)
    with pytest.raises(InspectionError) as err:
        refuse_unless_serving(False, draining=True)
    assert (err.value.kind, err.value.reason, err.value.stage) == (
        ErrorKind.UNAVAILABLE,
        Reason.DRAINING,
        Stage.ADMIT,
    )
    assert err.value.retry_after_seconds == 1.0


async def probe(target: str, seen: list[tuple[str, str]], stop: asyncio.Event) -> None:
    """Readiness ("") and liveness, in turn, until the server is gone; records each answer
    (a status name, or the gRPC error code when the call failed)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            for service in ("", "liveness"):
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=1
                    )
                    answer = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as exc:
                    answer = exc.code().name
                seen.append((service, answer))
            await asyncio.sleep(0.02)


async def test_sigterm_drain_is_visible_to_health_checks(tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "GRPC_LISTEN": target,
        "METRICS_PORT": "-1",
        "PERSISTENCE_TARGET": "",
        "MODEL_CACHE_DIR": str(MODEL_CACHE),
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
        "ENGINE_PROCESS": "false",
        "DRAIN_PRESTOP_S": "2",
        "DRAIN_GRACE_S": "5",
        "LOG_LEVEL": "WARNING",
    }
    proc = await spawn_service("inference_svc", env, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_serving(target, proc, timeout_s=300)
        before: list[tuple[str, str]] = []
        seen: list[tuple[str, str]] = []
        stop = asyncio.Event()
        await probe_once(target, before)
        prober = asyncio.create_task(probe(target, seen, stop))
        await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        # A new inspection while draining: refused with a reason and a retry hint, not a
        # refused connection.
        refusal: grpc.aio.AioRpcError | None = None
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            for _ in range(100):
                try:
                    await stub.Inspect(request(), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    # Before the signal is handled a call may still be served (and fail on
                    # its image); the first refusal with details is the drain's.
                    if (
                        exc.code() == grpc.StatusCode.UNAVAILABLE
                        and rpc_status.from_call(exc) is not None
                    ):
                        refusal = exc
                        break
                await asyncio.sleep(0.02)
        code = await asyncio.wait_for(proc.wait(), timeout=60)
        stop.set()
        await prober
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        errors = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
    assert code == 0, errors[-3000:]
    assert "Traceback" not in errors, errors[-3000:]
    assert before == [("", "SERVING"), ("liveness", "SERVING")]
    assert refusal is not None
    assert error_details(refusal) == ("DRAINING", 1.0)
    readiness = [answer for service, answer in seen if service == ""]
    liveness = [answer for service, answer in seen if service == "liveness"]
    # Readiness turned NOT_SERVING and stayed answerable; liveness stayed SERVING meanwhile;
    # only after that did the server stop listening.
    assert "NOT_SERVING" in readiness, readiness
    first_not_serving = readiness.index("NOT_SERVING")
    assert all(a in ("SERVING", "NOT_SERVING") for a in readiness[: first_not_serving + 1])
    assert "SERVING" in liveness[first_not_serving:], liveness
    gone = [i for i, a in enumerate(readiness) if a not in ("SERVING", "NOT_SERVING")]
    assert not gone or gone[0] > first_not_serving
    assert readiness.count("NOT_SERVING") >= 3  # answered through the pre-stop period


async def probe_once(target: str, seen: list[tuple[str, str]]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "liveness"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            seen.append((service, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)))


# -- capacity before any fetch (item 8)


def test_admission_refuses_beyond_what_the_engine_can_hold() -> None:
    admission = Admission(limit=10, engine_capacity=2)
    rejects: list[str] = []
    admission.on_reject(rejects.append)
    with admission.slot(), admission.slot():
        with pytest.raises(InspectionError) as err, admission.slot():
            pass
        assert (err.value.kind, err.value.reason, err.value.stage) == (
            ErrorKind.RESOURCE_EXHAUSTED,
            Reason.OVERLOADED,
            Stage.ADMIT,
        )
        assert "queue is full (2 requests)" in err.value.message
    assert rejects == ["OVERLOADED"]
    with admission.slot():
        assert admission.inflight == 1


async def test_a_full_engine_refuses_before_fetching(tmp_path: Path) -> None:
    # The finding: requests the engine's full queue refuses were refused only after their
    # images were fetched and decoded. Here the engine holds two requests (one running, one
    # queued); two inspections hang in their fetch, and a third is refused without a fetch.
    release = asyncio.Event()
    images = LoopbackServer()

    async def hang(request: object) -> object:
        await release.wait()
        raise ConnectionResetError

    images.routes["/slow.jpg"] = hang  # type: ignore[assignment]
    await images.start()
    app = InferenceApp(
        inference_settings(
            tmp_path,
            "",
            max_concurrent_requests=8,
            max_queue_size=1,
            max_batch_size=1,
            fetch_min_bytes_per_s=0,
        )
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            uri = images.url("/slow.jpg")
            admitted = [
                asyncio.ensure_future(stub.Inspect(request(uri), timeout=30)) for _ in (1, 2)
            ]
            for _ in range(500):
                if images.hits["/slow.jpg"] >= 4:
                    break
                await asyncio.sleep(0.01)
            assert images.hits["/slow.jpg"] == 4
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Inspect(request(uri), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_details(err.value) == ("OVERLOADED", 1.0)
            # Refused in admission: its images were never requested.
            hits = images.hits["/slow.jpg"]
            release.set()
            await asyncio.gather(*admitted, return_exceptions=True)
            assert hits == 4  # two inspections x (reference + pickup), none for the third
    finally:
        release.set()
        await app.stop(0)
        await images.stop()


async def test_admission_reports_when_the_last_inspection_ends() -> None:
    admission = Admission(limit=2)
    assert await admission.wait_idle(0)
    with admission.slot():
        assert not await admission.wait_idle(0.01)
        waiter = asyncio.create_task(admission.wait_idle(5))
        await asyncio.sleep(0)
        assert not waiter.done()
    assert await waiter


def test_manifest_drain_numbers_are_consistent() -> None:
    # Read from the base manifest the overlays share: the drain as the pod sees it.
    manifest = ROOT / "deploy" / "k8s" / "base" / "inference-deployment.yaml"
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = next(x for x in pod["containers"] if x["name"] == "inference")
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    pre_stop_sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    prestop = float(env["DRAIN_PRESTOP_S"])
    drain = float(env["DRAIN_GRACE_S"])
    readiness, liveness = c["readinessProbe"], c["livenessProbe"]
    # The whole drain fits in the pod's grace, spool flush included.
    assert pod["terminationGracePeriodSeconds"] > pre_stop_sleep + prestop + drain
    # Readiness has a full failure window to see NOT_SERVING before the server stops
    # listening for new calls (a terminating pod also leaves the Endpoints at once).
    window = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert window <= pre_stop_sleep + prestop
    # Liveness asks the name that stays SERVING through the drain (the server listens until
    # in-flight work is done), so its shorter window never restarts a draining pod.
    assert liveness["grpc"]["service"] == "liveness"
    assert liveness["periodSeconds"] * liveness["failureThreshold"] < drain
