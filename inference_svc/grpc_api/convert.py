"""Translation between protobuf messages and domain types (and nothing else)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from rpi.inspection.v1 import inspection_pb2 as pb

from inference_svc.domain import models as m
from inference_svc.domain.validation import RawImage, RawInspectRequest

_DECISION = {m.Decision.PICK: pb.DECISION_PICK, m.Decision.NOT_PICK: pb.DECISION_NOT_PICK}
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


def raw_request_from_proto(request: pb.InspectRequest) -> RawInspectRequest:
    def image(img: pb.Image) -> RawImage:
        which = img.WhichOneof("source")
        if which == "content":
            return RawImage(content=img.content)
        if which == "uri":
            return RawImage(uri=img.uri)
        return RawImage()

    return RawInspectRequest(
        inspection_id=request.inspection_id,
        previous_inspection_id=request.previous_inspection_id,
        shipping_id=request.shipping_id,
        product_id=request.product_id,
        product_name=request.product_name,
        reference_images=tuple(image(i) for i in request.reference_images),
        pickup_images=tuple(image(i) for i in request.pickup_images),
        questions=tuple(
            m.Question(q.type, q.label, q.value_to_check, q.mandatory) for q in request.questions
        ),
        legacy_questions_json=request.legacy_questions_json,
    )


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


def inspection_to_proto(i: m.Inspection) -> pb.Inspection:
    return pb.Inspection(
        inspection_id=i.inspection_id,
        previous_inspection_id=i.previous_inspection_id,
        shipping_id=i.shipping_id,
        product_id=i.product_id,
        decision=_DECISION[i.decision],
        model_recommendation=_RECOMMENDATION[i.recommendation],
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
        ),
        create_time=timestamp(i.created_at),
    )


def progress_to_proto(event: m.ProgressEvent) -> pb.InspectStreamResponse:
    match event:
        case m.Accepted():
            return pb.InspectStreamResponse(accepted=pb.Accepted(inspection_id=event.inspection_id))
        case m.ImagesFetched():
            return pb.InspectStreamResponse(
                images_fetched=pb.ImagesFetched(fetched=event.fetched, total=event.total)
            )
        case m.PreprocessingDone():
            return pb.InspectStreamResponse(
                preprocessing_done=pb.PreprocessingDone(
                    tiles=event.tiles, prompt_tokens=event.prompt_tokens
                )
            )
        case m.Queued():
            return pb.InspectStreamResponse(queued=pb.Queued(position=event.position))
        case m.GenerationProgress():
            return pb.InspectStreamResponse(
                generation_progress=pb.GenerationProgress(
                    attempt=event.attempt,
                    tokens_generated=event.tokens_generated,
                    max_new_tokens=event.max_new_tokens,
                )
            )
        case m.AnswerReady():
            return pb.InspectStreamResponse(
                answer_ready=pb.AnswerReady(
                    attempt=event.attempt,
                    label=event.label,
                    result=event.result,
                    evidence=event.evidence,
                    confidence=event.confidence,
                    retake_image=event.retake_image,
                )
            )
        case m.Completed():
            return pb.InspectStreamResponse(inspection=inspection_to_proto(event.inspection))
