"""What the image intake remembers of reference images whose features the engine caches.

A catalogue photo seen before need not be decoded or tiled again when the engine holds its
vision features (``engine.vision_cache``): the intake sends it by reference and keeps here
what the rest of the pipeline needs from it (its tile count for the prompt, its size and
format for the records, the decision policy's measures of it). The engine's key for the image
is its content digest with everything that decides its tiles (the preparer's arguments: tile
size, resize method, preprocessing mode... and the role's tile limit), so a configuration
change never reuses features made another way.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from inference_svc.domain.models import ImageRef, ImageSignal, ImageSource, PreparedImage

# Entries are a few hundred bytes each; the engine's byte bound decides what is really reused.
MAX_ENTRIES = 8192


def fingerprint(fn: Callable[..., object] | None) -> str | None:
    """A stable description of a callable and its bound arguments (a ``functools.partial``
    of a module-level function, as the service builds its preparer and analyser); None when it
    has none (a lambda or closure could hide its configuration)."""
    if fn is None:
        return ""
    args: tuple[object, ...] = ()
    keywords: dict[str, object] = {}
    target: object = fn
    if isinstance(fn, functools.partial):
        target, args, keywords = fn.func, fn.args, dict(fn.keywords)
    name = getattr(target, "__qualname__", "")
    if not name or "<" in name:
        return None
    module = getattr(target, "__module__", "")
    return f"{module}.{name}{args!r}{sorted(keywords.items())!r}"


@dataclass(frozen=True)
class Sketch:
    """A prepared reference image without its tiles, and its signal (for one analyser)."""

    num_tiles: int
    width: int
    height: int
    format: str
    signal: ImageSignal | None


class ReferenceReuse:
    """Sketches by (image key, analyser), least recently used out past ``max_entries``."""

    def __init__(self, tiling: str, max_entries: int = MAX_ENTRIES) -> None:
        self._tiling = tiling
        self._max = max_entries
        self._entries: collections.OrderedDict[tuple[str, str], Sketch] = collections.OrderedDict()

    def image_key(self, sha256: str, max_tiles: int) -> str:
        """The engine's cache key of an image's features."""
        text = f"{sha256}\0{max_tiles}\0{self._tiling}"
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, image_key: str, analysis: str) -> Sketch | None:
        sketch = self._entries.get((image_key, analysis))
        if sketch is not None:
            self._entries.move_to_end((image_key, analysis))
        return sketch

    def put(
        self, image_key: str, analysis: str, prepared: PreparedImage, signal: ImageSignal | None
    ) -> None:
        p = prepared
        sketch = Sketch(p.num_tiles, p.width, p.height, p.format, signal)
        self._entries[(image_key, analysis)] = sketch
        self._entries.move_to_end((image_key, analysis))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def rebind(sketch: Sketch, source: ImageSource) -> ImageSignal | None:
    """The sketch's signal as this request's image (its role and index)."""
    signal = sketch.signal
    if signal is None:
        return None
    ref = ImageRef(source.role, source.index)
    quality = signal.quality
    if quality is not None:
        quality = dataclasses.replace(quality, image=ref)
    return dataclasses.replace(signal, image=ref, quality=quality)
