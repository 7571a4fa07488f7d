"""SIGTERM drains the inference service: the in-flight call completes, its events reach
Postgres, and the process exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.domain.models import OutputLimits
from persistence_svc.app import PersistenceApp
from tests.support.e2e import (
    MODEL_CACHE,
    ImageServer,
    make_request,
    template_with_limits,
    wait_for_record,
)
from tests.support.processes import free_port, spawn_service, wait_serving


async def test_sigterm_lets_inflight_call_finish_and_delivers_its_events(
    persistence_app: PersistenceApp,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "GRPC_LISTEN": f"127.0.0.1:{port}",
        "METRICS_PORT": "-1",
        "PERSISTENCE_TARGET": persistence_app.target,
        "MODEL_CACHE_DIR": str(MODEL_CACHE),
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
        "ALLOW_HTTP": "true",
        "ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "MAX_NEW_TOKENS": "1200",
        # Long enough strings that generation is still running when SIGTERM arrives.
        "PROMPT_TEMPLATE_PATH": str(
            template_with_limits(
                tmp_path,
                OutputLimits(max_evidence_chars=120, max_analysis_chars=120, max_result_chars=16),
            )
        ),
        "DRAIN_GRACE_S": "60",
        "LOG_LEVEL": "WARNING",
    }
    proc = await spawn_service("inference_svc", env, stderr=asyncio.subprocess.PIPE)
    try:
        target = f"127.0.0.1:{port}"
        await wait_serving(target, proc, timeout_s=300)
        kinds: list[str] = []
        inspection_id = ""
        sent_sigterm = False
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            async for message in stub.InspectStream(make_request(image_server), timeout=120):
                kind = message.WhichOneof("event")
                kinds.append(kind)
                if kind == "accepted":
                    inspection_id = message.accepted.inspection_id
                if kind == "generation_progress" and not sent_sigterm:
                    proc.send_signal(signal.SIGTERM)
                    sent_sigterm = True
        assert sent_sigterm, kinds
        assert kinds[-1] == "inspection", kinds
        # The call was in flight when SIGTERM arrived.
        assert kinds.index("generation_progress") < len(kinds) - 1
        code = await asyncio.wait_for(proc.wait(), timeout=60)
        assert code == 0
        record = await wait_for_record(
            persistence_stub, inspection_id, ppb.INSPECTION_STATUS_COMPLETED
        )
        assert record.result.inspection_id == inspection_id
        assert len(record.attempts) == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stderr is not None:
            errors = (await proc.stderr.read()).decode(errors="replace")
            assert "Traceback" not in errors, errors[-3000:]
