"""``rpi-replay --rerun-model``: the model run again on stored inspections' archived images.

Each selected inspection (as the policy replay selects them: --shipping-id, --since/--until)
becomes an ``InspectRequest`` rebuilt from its stored request: the shipment, product and vendor,
the questions (in the legacy JSON form when they came that way) and every image by the URI the
evidence archive keeps it under (``RequestReceived.images[i].archived_uri``). ``Inspect`` on
``--inference-target`` decides it again with that service's model and policy, and the report
compares the stored decision with the new one, as the policy replay does.

    rpi-replay --rerun-model --inference-target staging-inference:50051 --tls \\
        --persistence-target localhost:50052 --since 2026-11-01T00:00:00Z --fail-on-change

The target must be allowed to read the archive bucket (its ``ALLOWED_BUCKETS``). Each re-run is
an inspection of the target, recorded by its persistence service, naming the stored one as its
``previous_inspection_id``: use a staging service. An inspection with an image the archive does
not hold is skipped ("not archived"); a failed call is reported with its gRPC code and reason
and the others go on. Exit status as rpi-replay's, and 4 when any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2

from clients.python.rpi_client.channel import ChannelOptions
from clients.python.rpi_client.cli import UsageError, channel_options
from clients.python.rpi_client.client import AsyncInspectionClient
from clients.python.rpi_client.errors import InspectionFailed
from inference_svc.domain.models import ImageRef, OutcomeReason, ReasonCode
from tools.replay import (
    DECISION_OUTCOMES,
    IMAGE_ROLES,
    Change,
    NotReplayableError,
    ReplayReport,
    Window,
    format_report,
    read_records,
)
from tools.replay_parser import (
    DEFAULT_CONCURRENCY,
    EXIT_CHANGED,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)

NOT_ARCHIVED = "not archived"


@dataclass(frozen=True)
class Failure:
    """A re-run whose ``Inspect`` call failed."""

    inspection_id: str
    shipping_id: str
    error: InspectionFailed


@dataclass
class RerunReport:
    """The policy replay's report (``replayed`` counts the re-runs, ``skipped`` holds the
    inspections not archived), and the failed calls."""

    target: str
    report: ReplayReport = field(default_factory=lambda: ReplayReport(policy_version=""))
    failures: list[Failure] = field(default_factory=list)

    @property
    def not_archived(self) -> int:
        return self.report.skipped[NOT_ARCHIVED]


def rerun_request(record: persistence_pb2.InspectionRecord) -> inspection_pb2.InspectRequest:
    """The request that runs a completed inspection again on its archived images;
    NotReplayableError ("not archived" for an image the archive does not hold)."""
    if record.status != persistence_pb2.INSPECTION_STATUS_COMPLETED or not record.HasField(
        "result"
    ):
        raise NotReplayableError("not completed")
    if record.result.decision not in DECISION_OUTCOMES:
        raise NotReplayableError("unknown stored decision")
    stored = record.request
    if not stored.images or any(not image.archived_uri for image in stored.images):
        raise NotReplayableError(NOT_ARCHIVED)
    request = inspection_pb2.InspectRequest(
        previous_inspection_id=record.inspection_id,
        shipping_id=stored.shipping_id or record.shipping_id,
        product_id=stored.product_id,
        product_name=stored.product_name or record.product_name,
        vendor_id=stored.vendor_id,
    )
    if stored.legacy_questions:
        request.legacy_questions_json = _legacy_questions(stored.questions)
    else:
        request.questions.extend(stored.questions)
    for image in sorted(stored.images, key=lambda i: (i.role, i.index)):
        images = (
            request.reference_images
            if image.role == persistence_pb2.IMAGE_ROLE_REFERENCE
            else request.pickup_images
        )
        images.append(inspection_pb2.Image(uri=image.archived_uri))
    return request


def _legacy_questions(questions: Sequence[inspection_pb2.Question]) -> str:
    """The replaced API's question JSON, as the stored (parsed) questions came."""
    return json.dumps(
        {
            "Question": [
                {
                    "Type": q.type,
                    "Label": q.label,
                    "ValueToCheck": q.value_to_check,
                    "IsMandatory": "Yes" if q.mandatory else "No",
                }
                for q in questions
            ]
        },
        ensure_ascii=False,
    )


def _decisive_reasons(inspection: inspection_pb2.Inspection) -> tuple[OutcomeReason, ...]:
    reasons = []
    for r in inspection.reasons:
        if not r.decisive or r.code not in ReasonCode.__members__:
            continue  # information only, or a code newer than this tool: not shown
        role = IMAGE_ROLES.get(r.image_role)
        reasons.append(
            OutcomeReason(
                code=ReasonCode(r.code),
                decisive=True,
                question_label=r.question_label,
                question_index=r.question_index if r.HasField("question_index") else None,
                image=ImageRef(role, r.image_index) if role is not None else None,
                related_inspection_id=r.related_inspection_id,
                detail=r.detail,
            )
        )
    return tuple(reasons)


async def rerun(
    records: Sequence[persistence_pb2.InspectionRecord],
    target: str,
    options: ChannelOptions,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> RerunReport:
    """``Inspect`` each archived inspection on ``target``, at most ``concurrency`` at once, and
    compare the new decisions with the stored ones (the report keeps the records' order)."""
    result = RerunReport(target=target)
    report = result.report
    requests: list[tuple[persistence_pb2.InspectionRecord, inspection_pb2.InspectRequest]] = []
    for record in records:
        try:
            requests.append((record, rerun_request(record)))
        except NotReplayableError as exc:
            report.skipped[str(exc)] += 1
    slots = asyncio.Semaphore(concurrency)

    async with AsyncInspectionClient.connect(target, options) as client:

        async def one(
            request: inspection_pb2.InspectRequest,
        ) -> inspection_pb2.Inspection | InspectionFailed:
            async with slots:
                try:
                    return await client.inspect(request)
                except InspectionFailed as exc:
                    return exc

        answers = await asyncio.gather(*(one(request) for _, request in requests))

    for (record, _), answer in zip(requests, answers, strict=True):
        if isinstance(answer, InspectionFailed):
            result.failures.append(Failure(record.inspection_id, record.shipping_id, answer))
            continue
        old = DECISION_OUTCOMES[record.result.decision]
        new = DECISION_OUTCOMES.get(answer.decision)
        if new is None:
            report.skipped["re-run gave no known decision"] += 1
            continue
        report.replayed += 1
        report.transitions[(old, new)] += 1
        if new is not old:
            report.changes.append(
                Change(
                    inspection_id=record.inspection_id,
                    shipping_id=record.shipping_id,
                    old=old,
                    new=new,
                    policy_name=answer.policy_name,
                    reasons=_decisive_reasons(answer),
                )
            )
    return result


def format_rerun(result: RerunReport) -> str:
    """The policy replay's report under the re-run's counts, then each failed call."""
    report = result.report
    others = sum(report.skipped.values()) - result.not_archived
    headline = (
        f"model re-run on {result.target}: {report.replayed} re-run, {report.changed} "
        f"changed, {result.not_archived} not archived, {len(result.failures)} failed, "
        f"{others} skipped"
    )
    lines = [format_report(report, headline)]
    if result.failures:
        lines.append("")
        lines.append("failed:")
        lines.extend(
            f"  {f.inspection_id} shipment {f.shipping_id}: {f.error}" for f in result.failures
        )
    return "\n".join(lines)


async def _read_and_rerun(
    args: argparse.Namespace, window: Window | None, options: ChannelOptions
) -> RerunReport | None:
    try:
        records = [
            r async for r in read_records(args.persistence_target, args.shipping_ids, window)
        ]
    except Exception as exc:
        print(f"rpi-replay: cannot read inspections: {exc}", file=sys.stderr)
        return None
    return await rerun(records, args.inference_target, options, args.concurrency)


def rerun_main(args: argparse.Namespace, window: Window | None) -> int:
    """``rpi-replay --rerun-model``: what ``tools.replay.main`` hands over to."""
    if args.policy is not None:
        print(
            "rpi-replay: --policy does not apply to --rerun-model (the target's policy decides)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.inference_target:
        print("rpi-replay: --rerun-model needs --inference-target HOST:PORT", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = channel_options(args)
    except UsageError as exc:
        print(f"rpi-replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(_read_and_rerun(args, window, options))
    if result is None:
        return EXIT_UNAVAILABLE
    print(format_rerun(result))
    if result.failures:
        return EXIT_FAILED
    return EXIT_CHANGED if args.fail_on_change and result.report.changes else 0
