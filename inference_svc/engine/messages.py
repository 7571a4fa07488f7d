"""Every message between the server process and the engine process (both directions).

Frozen dataclasses, pickled through a ``multiprocessing`` pipe; nothing else crosses it.
Server -> engine: :class:`Generate`, :class:`Cancel`, :class:`Stop`, :class:`SlabOffer`
(followed on the pipe by the slab's descriptor). Engine -> server: :class:`Ready`,
:class:`Failed`, :class:`Queued`, :class:`Started`, :class:`Tokens`, :class:`Done`,
:class:`Errored`, :class:`Cancelled`, :class:`Released`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .api import EngineStats, GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from .devices import Runtime


@dataclass(frozen=True)
class SlabRef:
    """Where a request's tiles wait in shared memory: slab number, array shape and dtype."""

    slab: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class RemoteModel:
    """What the server knows about the model loaded in the engine process."""

    name: str
    revision: str
    untrained: bool
    tokens_per_image_tile: int
    image_size: int
    runtime: Runtime
    runner: str
    tokenizer_dir: str
    load_path: str = ""


# --- server -> engine ----------------------------------------------------------------------
@dataclass(frozen=True)
class Generate:
    call_id: int
    # With ``slab`` set, its pixel_values are empty: the tiles wait in that slab.
    request: GenerationRequest
    wants_text: bool
    slab: SlabRef | None = None


@dataclass(frozen=True)
class Cancel:
    call_id: int


@dataclass(frozen=True)
class Stop:
    """Finish the rows being generated, then exit."""


@dataclass(frozen=True)
class SlabOffer:
    """A new shared-memory slab; its descriptor follows on the pipe."""

    number: int
    size: int


ToEngine = Generate | Cancel | Stop | SlabOffer


# --- engine -> server ----------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    model: RemoteModel
    stats: EngineStats


@dataclass(frozen=True)
class Failed:
    """The engine could not start."""

    reason: str


@dataclass(frozen=True)
class Queued:
    call_id: int
    position: int


@dataclass(frozen=True)
class Started:
    call_id: int


@dataclass(frozen=True)
class Tokens:
    call_id: int
    count: int
    text: str


@dataclass(frozen=True)
class Done:
    call_id: int
    result: GenerationResult
    stats: EngineStats


@dataclass(frozen=True)
class Errored:
    call_id: int
    # The exception itself when it survives pickling, else a RuntimeError with its text.
    error: Exception
    stats: EngineStats


@dataclass(frozen=True)
class Cancelled:
    call_id: int
    stats: EngineStats


@dataclass(frozen=True)
class Released:
    """The engine copied a request's tiles out of this slab: it is free again."""

    slab: int


FromEngine = Ready | Failed | Queued | Started | Tokens | Done | Errored | Cancelled | Released
