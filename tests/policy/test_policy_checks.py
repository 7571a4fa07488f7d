"""Per-image signals from a prepared image (the intake's output), and the Signals they make."""

from __future__ import annotations

from PIL import ImageFilter

from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.domain.outcome import ImageRef, ImageSignal, QualityProblem, signals_of
from inference_svc.domain.policy import QualityThresholds
from inference_svc.imaging.checks import image_signal
from inference_svc.imaging.phash import dhash, hamming
from inference_svc.imaging.tiling import prepare_image
from tests.support.imaging import encode, textured


def test_signal_of_a_prepared_image() -> None:
    photo = textured(1344, 1008, seed=3)
    sharp = prepare_image(
        FetchedImage(ImageSource(ImageRole.PICKUP, 2, content=b"x"), encode(photo, "JPEG")), 6
    )
    signal = image_signal(sharp, QualityThresholds())
    assert signal.image == ImageRef(ImageRole.PICKUP, 2)
    assert signal.quality is not None and signal.quality.problems == ()
    assert (signal.quality.measures.width, signal.quality.measures.height) == (1344, 1008)
    assert signal.phash is not None and hamming(signal.phash, dhash(photo)) <= 4

    blurred = encode(photo.filter(ImageFilter.GaussianBlur(4)), "JPEG")
    soft = prepare_image(
        FetchedImage(ImageSource(ImageRole.REFERENCE, 0, content=b"x"), blurred), 6
    )
    soft_signal = image_signal(soft, QualityThresholds())
    assert soft_signal.quality is not None
    assert soft_signal.quality.problems == (QualityProblem.BLURRY,)
    # Gate off: the hash only.
    assert image_signal(soft, None).quality is None


def test_signals_are_ordered_by_role_and_index() -> None:
    def sig(role: ImageRole, index: int, value: int | None) -> ImageSignal:
        return ImageSignal(ImageRef(role, index), value)

    signals = signals_of(
        [
            sig(ImageRole.PICKUP, 1, 11),
            sig(ImageRole.REFERENCE, 0, 1),
            sig(ImageRole.PICKUP, 0, None),
        ]
    )
    assert signals.reference_hashes == (1,)
    assert signals.pickup_hashes == (None, 11)
    assert signals.quality == ()
    assert signals.reuse is None
