"""Domain types -> messages of the public API (rpi.inspection.v1), for every adapter that sends
them: the gRPC layer answers with them and the events adapter records them. Neutral ground, so
that neither adapter imports the other (the import contracts in pyproject.toml)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from rpi.inspection.v1 import inspection_pb2 as pb

from inference_svc.domain import models as m

_DECISION = {
    m.Decision.PICK: pb.DECISION_PICK,
    m.Decision.NOT_PICK: pb.DECISION_NOT_PICK,
    m.Decision.RETAKE_IMAGES: pb.DECISION_RETAKE_IMAGES,
    m.Decision.NEEDS_REVIEW: pb.DECISION_NEEDS_REVIEW,
}
_ROLE = {m.ImageRole.REFERENCE: pb.IMAGE_ROLE_REFERENCE, m.ImageRole.PICKUP: pb.IMAGE_ROLE_PICKUP}
_RECOMMENDATION = {
    m.Recommendation.ACCEPT: pb.RECOMMENDATION_ACCEPT,
    m.Recommendation.REJECT: pb.RECOMMENDATION_REJECT,
    m.Recommendation.PARTIAL: pb.RECOMMENDATION_PARTIAL,
    m.Recommendation.RETRY: pb.RECOMMENDATION_RETRY,
}
_SOURCE = {
    m.AnswerSource.MODEL: pb.ANSWER_SOURCE_MODEL,
    m.AnswerSource.MISSED: pb.ANSWER_SOURCE_MISSED,
}


def question_to_proto(q: m.Question) -> pb.Question:
    return pb.Question(
        type=q.type, label=q.label, value_to_check=q.value_to_check, mandatory=q.mandatory
    )


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def reason_to_proto(r: m.OutcomeReason) -> pb.OutcomeReason:
    message = pb.OutcomeReason(
        code=r.code.value,
        decisive=r.decisive,
        question_label=r.question_label,
        related_inspection_id=r.related_inspection_id,
        detail=r.detail,
    )
    if r.question_index is not None:
        message.question_index = r.question_index
    if r.image is not None:
        message.image_role = _ROLE[r.image.role]
        message.image_index = r.image.index
    return message


def image_check_to_proto(s: m.ImageSignal) -> pb.ImageCheck:
    message = pb.ImageCheck(role=_ROLE[s.image.role], index=s.image.index)
    if s.phash is not None:
        message.perceptual_hash = s.phash
    if s.quality is not None:
        q = s.quality.measures
        message.quality.CopyFrom(
            pb.ImageQuality(
                width=q.width,
                height=q.height,
                sharpness=q.sharpness,
                mean_luma=q.mean_luma,
                dark_fraction=q.dark_fraction,
                bright_fraction=q.bright_fraction,
                problems=[p.value for p in s.quality.problems],
            )
        )
    return message


def inspection_to_proto(i: m.Inspection) -> pb.Inspection:
    return pb.Inspection(
        inspection_id=i.inspection_id,
        previous_inspection_id=i.previous_inspection_id,
        shipping_id=i.shipping_id,
        product_id=i.product_id,
        decision=_DECISION[i.decision],
        model_recommendation=(
            pb.RECOMMENDATION_UNSPECIFIED
            if i.recommendation is None
            else _RECOMMENDATION[i.recommendation]
        ),
        match_score=i.match_score,
        answers=[
            pb.Answer(
                label=a.label,
                type=a.type,
                answer=a.answer,
                value_to_check=a.value_to_check,
                mandatory=a.mandatory,
                evidence=a.evidence,
                confidence=a.confidence,
                retake_image=a.retake_image,
                source=_SOURCE[a.source],
            )
            for a in i.answers
        ],
        analysis=pb.Analysis(
            pickup_description=i.analysis.pickup_description,
            reference_description=i.analysis.reference_description,
            comparison=i.analysis.comparison,
        ),
        confidence_factors=pb.ConfidenceFactors(
            image_quality=i.confidence_factors.image_quality,
            attribute_visibility=i.confidence_factors.attribute_visibility,
            matching_confidence=i.confidence_factors.matching_confidence,
        ),
        timings=pb.StageTimings(
            fetch=duration(i.timings.fetch),
            preprocess=duration(i.timings.preprocess),
            queue=duration(i.timings.queue),
            generate=duration(i.timings.generate),
            parse=duration(i.timings.parse),
            total=duration(i.timings.total),
        ),
        attempts=i.attempts,
        model=pb.ModelInfo(
            name=i.model.name,
            revision=i.model.revision,
            untrained=i.model.untrained,
            prompt_template_version=i.model.prompt_template_version,
            load_path=i.model.load_path,
        ),
        create_time=timestamp(i.created_at),
        reasons=[reason_to_proto(r) for r in i.reasons],
        policy_version=i.policy_version,
        policy_name=i.policy_name,
        image_checks=[image_check_to_proto(s) for s in i.images],
    )
