"""Request validation: turns what the caller sent into a validated InspectionRequest.

Every problem found is reported at once as a field violation, so a caller fixes the request in
one round trip instead of one error at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from inference_svc.domain.errors import FieldViolation, InspectionError, Reason, invalid_argument
from inference_svc.domain.models import ImageRole, ImageSource, InspectionRequest, Question
from inference_svc.domain.questions import parse_legacy_questions


@dataclass(frozen=True)
class RequestLimits:
    max_reference_images: int = 10
    max_pickup_images: int = 10
    max_questions: int = 50
    max_text_length: int = 1000
    max_legacy_questions_bytes: int = 65536
    max_uri_length: int = 4096
    allow_http: bool = False
    # Object-store schemes (s3, gs, az) allowed for image URIs: those ALLOWED_BUCKETS names.
    bucket_schemes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RawImage:
    uri: str | None = None
    content: bytes | None = None

    def __repr__(self) -> str:
        size = None if self.content is None else len(self.content)
        return f"RawImage(uri={self.uri!r}, inline_bytes={size})"


@dataclass(frozen=True)
class RawInspectRequest:
    """The request as received, before any check (transport-neutral)."""

    inspection_id: str = ""
    previous_inspection_id: str = ""
    shipping_id: str = ""
    product_id: str = ""
    product_name: str = ""
    reference_images: Sequence[RawImage] = field(default_factory=tuple)
    pickup_images: Sequence[RawImage] = field(default_factory=tuple)
    questions: Sequence[Question] = field(default_factory=tuple)
    legacy_questions_json: str = ""
    vendor_id: str = ""


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_images(
    name: str,
    role: ImageRole,
    images: Sequence[RawImage],
    maximum: int,
    limits: RequestLimits,
    violations: list[FieldViolation],
) -> tuple[ImageSource, ...]:
    if not images:
        violations.append(FieldViolation(name, f"at least 1 image is required (at most {maximum})"))
    elif len(images) > maximum:
        violations.append(FieldViolation(name, f"{len(images)} images given, at most {maximum}"))
    schemes: tuple[str, ...] = ("https", "http") if limits.allow_http else ("https",)
    schemes += limits.bucket_schemes
    sources: list[ImageSource] = []
    for i, image in enumerate(images):
        path = f"{name}[{i}]"
        if image.content is not None:
            # The size limit is the fetcher's, so an oversized inline image gets the same
            # reason (IMAGE_TOO_LARGE), field and message as an oversized download.
            if not image.content:
                violations.append(FieldViolation(f"{path}.content", "empty image content"))
            sources.append(ImageSource(role, i, content=image.content))
        elif image.uri:
            if len(image.uri) > limits.max_uri_length:
                violations.append(
                    FieldViolation(f"{path}.uri", f"longer than {limits.max_uri_length} characters")
                )
            else:
                try:
                    scheme = urlsplit(image.uri).scheme.lower()
                except ValueError:  # an unbalanced bracket ("Invalid IPv6 URL"), for one
                    violations.append(FieldViolation(f"{path}.uri", "not a valid URI"))
                    scheme = schemes[0]
                if scheme not in schemes:
                    violations.append(
                        FieldViolation(
                            f"{path}.uri",
                            f"scheme {scheme or '(none)'!r} not allowed; use "
                            + " or ".join(schemes),
                        )
                    )
            sources.append(ImageSource(role, i, uri=image.uri))
        else:
            violations.append(FieldViolation(path, "set either uri or content"))
    return tuple(sources)


def _check_text(
    name: str, value: str, required: bool, limits: RequestLimits, out: list[FieldViolation]
) -> str:
    value = value.strip()
    if required and not value:
        out.append(FieldViolation(name, "required"))
    if len(value) > limits.max_text_length:
        out.append(FieldViolation(name, f"longer than {limits.max_text_length} characters"))
    return value


def validate_request(raw: RawInspectRequest, limits: RequestLimits) -> InspectionRequest:
    """Checks everything that can be checked without fetching; raises INVALID_ARGUMENT with one
    field violation per problem."""
    violations: list[FieldViolation] = []
    inspection_id = raw.inspection_id.strip()
    if inspection_id and not _is_uuid(inspection_id):
        violations.append(FieldViolation("inspection_id", "must be a UUID (or empty)"))
    previous = raw.previous_inspection_id.strip()
    if previous and not _is_uuid(previous):
        violations.append(FieldViolation("previous_inspection_id", "must be a UUID (or empty)"))
    if previous and inspection_id and previous.lower() == inspection_id.lower():
        violations.append(
            FieldViolation("previous_inspection_id", "must differ from inspection_id")
        )
    shipping_id = _check_text("shipping_id", raw.shipping_id, True, limits, violations)
    product_name = _check_text("product_name", raw.product_name, True, limits, violations)
    product_id = _check_text("product_id", raw.product_id, False, limits, violations)
    vendor_id = _check_text("vendor_id", raw.vendor_id, False, limits, violations)
    reference = _check_images(
        "reference_images",
        ImageRole.REFERENCE,
        raw.reference_images,
        limits.max_reference_images,
        limits,
        violations,
    )
    pickup = _check_images(
        "pickup_images",
        ImageRole.PICKUP,
        raw.pickup_images,
        limits.max_pickup_images,
        limits,
        violations,
    )

    questions: list[Question] = []
    legacy = False
    if raw.questions:
        questions = list(raw.questions)
        for i, q in enumerate(questions):
            if not q.label.strip():
                violations.append(FieldViolation(f"questions[{i}].label", "required"))
            for attr in ("type", "label", "value_to_check"):
                if len(getattr(q, attr)) > limits.max_text_length:
                    violations.append(
                        FieldViolation(
                            f"questions[{i}].{attr}",
                            f"longer than {limits.max_text_length} characters",
                        )
                    )
    elif raw.legacy_questions_json.strip():
        legacy = True
        if len(raw.legacy_questions_json.encode()) > limits.max_legacy_questions_bytes:
            violations.append(
                FieldViolation(
                    "legacy_questions_json",
                    f"longer than {limits.max_legacy_questions_bytes} bytes",
                )
            )
        else:
            try:
                questions = parse_legacy_questions(raw.legacy_questions_json)
            except InspectionError as exc:
                violations.extend(
                    exc.violations or [FieldViolation("legacy_questions_json", exc.message)]
                )
    else:
        violations.append(
            FieldViolation("questions", "at least one question (or legacy_questions_json) required")
        )
    if len(questions) > limits.max_questions:
        violations.append(
            FieldViolation(
                "questions", f"{len(questions)} questions, at most {limits.max_questions}"
            )
        )
    labels = [q.label.strip().lower() for q in questions]
    if len(set(labels)) != len(labels):
        violations.append(
            FieldViolation("questions", "labels must be unique (answers are matched by label)")
        )

    if violations:
        reason = (
            Reason.QUESTIONS_INVALID
            if all(v.field.startswith(("questions", "legacy_questions_json")) for v in violations)
            else Reason.INVALID_ARGUMENT
        )
        raise invalid_argument(
            f"invalid request: {len(violations)} problem(s); first: "
            f"{violations[0].field}: {violations[0].description}",
            violations,
            reason=reason,
        )
    return InspectionRequest(
        inspection_id=(inspection_id or str(uuid.uuid4())).lower(),
        shipping_id=shipping_id,
        product_name=product_name,
        reference_images=reference,
        pickup_images=pickup,
        questions=tuple(
            Question(q.type.strip(), q.label.strip(), q.value_to_check.strip(), q.mandatory)
            for q in questions
        ),
        product_id=product_id,
        previous_inspection_id=previous.lower(),
        legacy_questions=legacy,
        vendor_id=vendor_id,
    )
