"""Image intake: fetching (SSRF-hardened), decoding (hostile-input safe) and InternVL tiling."""

from inference_svc.imaging.decode import ALLOWED_FORMATS, decode_image
from inference_svc.imaging.fetch import FetchConfig, ImageFetcher
from inference_svc.imaging.tiling import (
    choose_grid,
    find_closest_aspect_ratio,
    image_to_tiles,
    prepare_image,
    target_ratios,
)

__all__ = [
    "ALLOWED_FORMATS",
    "FetchConfig",
    "ImageFetcher",
    "choose_grid",
    "decode_image",
    "find_closest_aspect_ratio",
    "image_to_tiles",
    "prepare_image",
    "target_ratios",
]
