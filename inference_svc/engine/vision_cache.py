"""The vision-feature cache: a repeated catalogue image skips the vision tower.

A returns operation inspects the same products again and again, so the vendor's catalogue
photos repeat while the pickup photos never do. The engine keeps the projector's output
(the features that replace an image's placeholder tokens) of images the pipeline marked as
cacheable, keyed by the pipeline's image key (content digest and tiling configuration,
``pipeline.images``) and the model's identity, bounded in bytes, least recently used first out.

The contract with the pipeline (``GenerationRequest.image_keys`` / ``by_reference``): an image
sent by reference has no tiles in ``pixel_values``; the engine resolves it when it prepares
the request, before queueing, and holds the features from then on (an eviction afterwards
cannot reach the request), or raises :class:`~.api.ImagesNotCached` naming the images it does
not hold, which the pipeline then sends as pixels. Features of the other cacheable images are
computed in the request's prefill and stored.

The vision tower encodes each tile independently, so an image's features do not depend on
which other images shared its batch (the engine tests check the answers are the same tokens
with the cache on and off).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .api import GenerationRequest, ImagesNotCached


class VisionFeatureCache:
    """Features by key, at most ``max_bytes`` of them, least recently used evicted first.

    Thread-safe: the helper thread that prepares requests reads it, the model threads that
    run prefills write it."""

    def __init__(self, max_bytes: int, model_identity: str) -> None:
        self.max_bytes = max_bytes
        self.model_identity = model_identity
        self._entries: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def key(self, image_key: str) -> str:
        return f"{self.model_identity}\0{image_key}"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            features = self._entries.get(key)
            if features is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return features

    def put(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            while self._entries and self.bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.numel() * evicted.element_size()
                self.evictions += 1
            self._entries[key] = features
            self.bytes += size

    def counters(self) -> dict[str, int]:
        return {
            "vision_cache_hits": self.hits,
            "vision_cache_misses": self.misses,
            "vision_cache_evictions": self.evictions,
            "vision_cache_bytes": self.bytes,
            "vision_cache_entries": len(self._entries),
        }


@dataclass(frozen=True)
class VisionPlan:
    """How one request's images become features: per image (placeholder order) the features
    already held, or None when its tiles are encoded in the prefill; the cache keys to store
    the encoded ones under ("" = not cached); tiles per image."""

    cached: tuple[torch.Tensor | None, ...]
    keys: tuple[str, ...]
    tiles: tuple[int, ...]

    @property
    def encodes(self) -> bool:
        return any(c is None for c in self.cached)


def plan_request(
    cache: VisionFeatureCache | None, request: GenerationRequest, tiles: tuple[int, ...]
) -> tuple[VisionPlan | None, list[slice]]:
    """The request's plan and the slices of ``pixel_values`` (by tile) still to encode, in
    image order. No plan (None, the whole array) when the request uses no cache; raises
    ImagesNotCached for images sent by reference that the cache does not hold."""
    by_reference = set(request.by_reference)
    if cache is None or not request.image_keys:
        if by_reference:
            raise ImagesNotCached(tuple(sorted(by_reference)))
        return None, [slice(0, sum(tiles))]
    if len(request.image_keys) != len(tiles):
        raise ValueError(
            f"{len(request.image_keys)} image keys for {len(tiles)} images in tiles_per_image"
        )
    keys = tuple(cache.key(k) if k else "" for k in request.image_keys)
    cached: list[torch.Tensor | None] = []
    missing: list[int] = []
    slices: list[slice] = []
    offset = 0
    for index, (key, count) in enumerate(zip(keys, tiles, strict=True)):
        features = cache.get(key) if key else None
        cached.append(features)
        if index in by_reference:
            if features is None:
                missing.append(index)
            continue
        if features is None:
            slices.append(slice(offset, offset + count))
        offset += count
    if missing:
        raise ImagesNotCached(tuple(missing))
    return VisionPlan(tuple(cached), keys, tiles), slices


def encoder_outputs(
    model: Any,
    cache: VisionFeatureCache | None,
    plan: VisionPlan,
    staged: torch.Tensor | None,
) -> dict[str, BaseModelOutputWithPooling]:
    """The request's image features for ``InternVLModel.forward(mm_encoder_outputs=...)``:
    the held ones, and ``staged`` (the tiles still to encode, normalised) through the vision
    tower and projector, stored in ``cache`` under their keys."""
    encoded: list[torch.Tensor] = []
    if staged is not None:
        features = model.model.get_image_features(pixel_values=staged, return_dict=True)
        encoded = list(torch.split(features.pooler_output, _encoded_tiles(plan)))
    parts: list[torch.Tensor] = []
    fresh = iter(encoded)
    for held, key in zip(plan.cached, plan.keys, strict=True):
        if held is not None:
            parts.append(held)
            continue
        features = next(fresh)
        if key and cache is not None:
            # A copy: the split is a view that would keep the whole batch's tensor alive.
            features = features.clone()
            cache.put(key, features)
        parts.append(features)
    return {"image": BaseModelOutputWithPooling(pooler_output=torch.cat(parts))}


def _encoded_tiles(plan: VisionPlan) -> list[int]:
    return [t for held, t in zip(plan.cached, plan.tiles, strict=True) if held is None]
