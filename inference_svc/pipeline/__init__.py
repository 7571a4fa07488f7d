"""One inspection, end to end (see ``core``); intake, attempts and stream events in their own
modules."""

from inference_svc.domain.models import Emit
from inference_svc.pipeline.attempts import AttemptsOutcome
from inference_svc.pipeline.config import PipelineConfig
from inference_svc.pipeline.core import CancelCause, InspectionPipeline
from inference_svc.pipeline.images import ImagePreparer, ImageSourceFetcher
from inference_svc.pipeline.observer import NullObserver, PipelineObserver

__all__ = [
    "AttemptsOutcome",
    "CancelCause",
    "Emit",
    "ImagePreparer",
    "ImageSourceFetcher",
    "InspectionPipeline",
    "NullObserver",
    "PipelineConfig",
    "PipelineObserver",
]
