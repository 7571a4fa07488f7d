"""Translation between the gRPC layer's protobuf messages and domain types (and nothing else).
The domain -> message converters the events adapter shares are in inference_svc.proto_convert."""

from __future__ import annotations

from rpi.inspection.v1 import inspection_pb2 as pb

from inference_svc.domain import models as m
from inference_svc.domain.validation import RawImage, RawInspectRequest
from inference_svc.proto_convert import inspection_to_proto

# inspection_to_proto is part of this module's interface too (the servicer answers with it).
__all__ = ["inspection_to_proto", "progress_to_proto", "raw_request_from_proto"]


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
        vendor_id=request.vendor_id,
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
