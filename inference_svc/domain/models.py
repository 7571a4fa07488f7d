"""Domain types of an inspection, independent of protobuf and of the model engine."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


class ImageRole(enum.Enum):
    REFERENCE = "reference"
    PICKUP = "pickup"


@dataclass(frozen=True)
class ImageSource:
    """An image as the caller gave it: a URI or inline encoded bytes (exactly one)."""

    role: ImageRole
    index: int
    uri: str | None = None
    content: bytes | None = None

    @property
    def field_path(self) -> str:
        """The request field that holds this image, for error messages."""
        name = "reference_images" if self.role is ImageRole.REFERENCE else "pickup_images"
        return f"{name}[{self.index}]"

    def __repr__(self) -> str:  # never print image bytes
        size = len(self.content) if self.content is not None else None
        return f"ImageSource({self.field_path}, uri={self.uri!r}, inline_bytes={size})"


@dataclass(frozen=True)
class Question:
    type: str
    label: str
    value_to_check: str
    mandatory: bool


@dataclass(frozen=True)
class InspectionRequest:
    """A validated request. ``inspection_id`` is always set (generated when the caller left it
    empty)."""

    inspection_id: str
    shipping_id: str
    product_name: str
    reference_images: tuple[ImageSource, ...]
    pickup_images: tuple[ImageSource, ...]
    questions: tuple[Question, ...]
    product_id: str = ""
    previous_inspection_id: str = ""
    legacy_questions: bool = False
    # Who asked (the authenticated caller's name; recorded, never a credential).
    caller: str = ""
    vendor_id: str = ""  # selects the decision policy; empty: the default
    # The object the result export writes (an async job's, fixed at submit); empty: the
    # service's RESULT_EXPORT_URI applies.
    export_uri: str = ""


@dataclass
class FetchedImage:
    """Encoded bytes of an image, obtained from its URI or inline content."""

    source: ImageSource
    data: bytes
    fetched_uri: str = ""  # after host rewrite; empty for inline images
    sha256: str = ""

    def __repr__(self) -> str:
        return f"FetchedImage({self.source.field_path}, {len(self.data)} bytes)"


@dataclass
class PreparedImage:
    """A decoded image cut into model tiles: uint8 RGB array (tiles, 3, size, size); the engine
    normalises it."""

    source: ImageSource
    tiles: object  # numpy.ndarray; kept untyped here so the domain does not import numpy
    num_tiles: int
    width: int
    height: int
    format: str
    size_bytes: int
    sha256: str
    fetched_uri: str = ""


class Decision(enum.Enum):
    """The outcome of an inspection. The decision rules give PICK or NOT_PICK; a decision
    policy (``domain.outcome``) may also send the photos back or the inspection to a person."""

    PICK = "PICK"
    NOT_PICK = "NOT_PICK"
    RETAKE_IMAGES = "RETAKE_IMAGES"
    NEEDS_REVIEW = "NEEDS_REVIEW"


class ReasonCode(enum.StrEnum):
    """Which rule decided (or also fired); docs/policy.md lists them."""

    MODEL_RECOMMENDATION = "MODEL_RECOMMENDATION"
    FORCED_PICK = "FORCED_PICK"
    MANDATORY_QUESTION_FAILED = "MANDATORY_QUESTION_FAILED"
    QUESTION_CONFIDENCE_LOW = "QUESTION_CONFIDENCE_LOW"
    OVERALL_CONFIDENCE_LOW = "OVERALL_CONFIDENCE_LOW"
    IMAGE_BLURRY = "IMAGE_BLURRY"
    IMAGE_UNDEREXPOSED = "IMAGE_UNDEREXPOSED"
    IMAGE_OVEREXPOSED = "IMAGE_OVEREXPOSED"
    IMAGE_LOW_RESOLUTION = "IMAGE_LOW_RESOLUTION"
    CATALOGUE_PHOTO = "CATALOGUE_PHOTO"  # pickup photo matches the catalogue photo
    REUSED_PHOTO = "REUSED_PHOTO"  # pickup photo reused from another shipment's inspection
    REUSE_CHECK_SKIPPED = "REUSE_CHECK_SKIPPED"  # the lookup did not answer in time


class QualityProblem(enum.StrEnum):
    BLURRY = "BLURRY"
    UNDEREXPOSED = "UNDEREXPOSED"
    OVEREXPOSED = "OVEREXPOSED"
    LOW_RESOLUTION = "LOW_RESOLUTION"


@dataclass(frozen=True)
class ImageRef:
    role: ImageRole
    index: int


@dataclass(frozen=True)
class OutcomeReason:
    code: ReasonCode
    decisive: bool  # behind the outcome, or information only
    question_label: str = ""
    question_index: int | None = None
    image: ImageRef | None = None
    related_inspection_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class QualityMeasures:
    width: int
    height: int
    sharpness: float  # variance of the Laplacian of the overview's luma
    mean_luma: float
    dark_fraction: float
    bright_fraction: float


@dataclass(frozen=True)
class QualityReport:
    image: ImageRef
    measures: QualityMeasures
    problems: tuple[QualityProblem, ...]


@dataclass(frozen=True)
class ImageSignal:
    """What the image intake measured of one image: its 64-bit perceptual hash (None when not
    computed) and, unless the quality gate is off, its quality report."""

    image: ImageRef
    phash: int | None
    quality: QualityReport | None = None


class Recommendation(enum.Enum):
    ACCEPT = "Accept"
    REJECT = "Reject"
    PARTIAL = "Partial"
    RETRY = "Retry"


class AnswerSource(enum.Enum):
    MODEL = "MODEL"
    MISSED = "MISSED"


@dataclass
class Answer:
    label: str
    type: str
    answer: str
    value_to_check: str
    mandatory: bool
    evidence: str
    confidence: int
    retake_image: bool
    source: AnswerSource


@dataclass
class Analysis:
    pickup_description: str = ""
    reference_description: str = ""
    comparison: str = ""


@dataclass
class ConfidenceFactors:
    image_quality: float = 0.0
    attribute_visibility: float = 0.0
    matching_confidence: float = 0.0


@dataclass
class StageTimings:
    """Seconds per stage."""

    fetch: float = 0.0
    preprocess: float = 0.0
    queue: float = 0.0
    generate: float = 0.0
    parse: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class OutputLimits:
    """Bounds of the strings the model is asked to write (grammar-constrained decoding). Part
    of the prompt template's contract: read from its header, defaults for a template without."""

    max_evidence_chars: int = 300
    max_analysis_chars: int = 600
    max_result_chars: int = 120


@dataclass(frozen=True)
class ModelInfo:
    name: str
    revision: str
    untrained: bool
    prompt_template_version: str = ""
    # "native", "converted" or "remote_code" (engine.api.EngineInfo.model_load_path).
    load_path: str = ""


@dataclass
class Inspection:
    """The complete outcome returned to the caller."""

    inspection_id: str
    shipping_id: str
    product_id: str
    previous_inspection_id: str
    decision: Decision
    recommendation: Recommendation | None  # None when no model ran (the quality gate)
    match_score: float
    answers: list[Answer]
    analysis: Analysis
    confidence_factors: ConfidenceFactors
    timings: StageTimings
    attempts: int
    model: ModelInfo
    created_at: datetime
    # The decision policy's account: reasons (decisive first), which policy decided, and what
    # was measured of each image.
    reasons: list[OutcomeReason] = field(default_factory=list)
    policy_name: str = ""
    policy_version: str = ""
    images: list[ImageSignal] = field(default_factory=list)


@dataclass
class AttemptRecord:
    """One model generation, recorded for audit."""

    attempt_number: int
    prompt: str
    prompt_sha256: str
    template_version: str
    template_sha256: str
    raw_output: str
    parsed_output: dict[str, object] | None
    valid: bool
    validation_errors: list[str]
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    constrained: bool


@dataclass
class DecidedOutcome:
    """What the decision rules produce from a valid model output."""

    decision: Decision
    recommendation: Recommendation
    match_score: float
    answers: list[Answer]
    analysis: Analysis
    confidence_factors: ConfidenceFactors


# Progress events a pipeline run emits (the servicer turns them into stream messages).
@dataclass(frozen=True)
class Accepted:
    inspection_id: str


@dataclass(frozen=True)
class ImagesFetched:
    fetched: int
    total: int


@dataclass(frozen=True)
class PreprocessingDone:
    tiles: int
    prompt_tokens: int


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class GenerationProgress:
    attempt: int
    tokens_generated: int
    max_new_tokens: int


@dataclass(frozen=True)
class AnswerReady:
    attempt: int
    label: str
    result: str
    evidence: str
    confidence: int
    retake_image: bool


@dataclass(frozen=True)
class Completed:
    inspection: Inspection


ProgressEvent = (
    Accepted
    | ImagesFetched
    | PreprocessingDone
    | Queued
    | GenerationProgress
    | AnswerReady
    | Completed
)

# Where a running inspection reports its progress (the stream's sink, a no-op for unary calls).
Emit = Callable[[ProgressEvent], None]


@dataclass
class ValidationOutcome:
    """Result of parsing and validating one raw model output."""

    parsed: dict[str, object] | None
    valid: bool
    errors: list[str] = field(default_factory=list)
