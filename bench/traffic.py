"""The traffic model of the workload benchmark: a seeded catalogue and a request stream.

A returns operation inspects the same products again and again: product popularity is Zipf
(rank ``r`` is drawn with probability proportional to ``1 / r**s``), so the vendor's
catalogue photos of the popular products repeat across inspections, while the agent's pickup
photos are new every time. Every request draws a product, that product's 1-3 catalogue photos
(square, small enough for one tile), 1-3 pickup photos (phone photos, half of them wide enough
for two tiles + a thumbnail) and 3-8 questions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from rpi.inspection.v1 import inspection_pb2 as pb

from .photos import photo_jpeg

# Catalogue photos: square, one tile at REFERENCE_MAX_TILES=1 (the service's default).
REFERENCE_SIZE = (512, 512)
# Pickup photos: 4:3 (one tile at PICKUP_MAX_TILES=2) or 2:1 (two tiles and a thumbnail).
PICKUP_SIZES = ((1280, 960), (1600, 800))

QUESTION_POOL: tuple[tuple[str, str, str], ...] = (
    ("Colour", "Is the colour of the product the same as in the catalogue?", "Yes"),
    ("Brand", "Is the brand name visible on the product?", "Yes"),
    ("Damage", "Is the product damaged?", "No"),
    ("Seal", "Is the seal of the box intact?", "Yes"),
    ("Quantity", "How many units are in the package?", "1"),
    ("Packaging", "Is the product in its original packaging?", "Yes"),
    ("Label", "Is the product label readable?", "Yes"),
    ("Usage", "Does the product look used?", "No"),
    ("Size", "Is the size printed on the label the same as ordered?", "Yes"),
    ("Design", "Does the design match the catalogue photo?", "Yes"),
)


@dataclass(frozen=True)
class TrafficModel:
    """The stated parameters of the workload."""

    products: int = 200
    zipf_s: float = 1.1
    seed: int = 24
    # Distinct pickup photos generated (cycled): pickups are never reused by the service
    # (their features are not cached), so their count only bounds the set-up time.
    pickup_pool: int = 24

    def describe(self) -> str:
        return (
            f"catalogue of {self.products} products, Zipf popularity s={self.zipf_s}, "
            f"1-3 catalogue photos {REFERENCE_SIZE[0]}x{REFERENCE_SIZE[1]} (1 tile) and 1-3 "
            f"pickup photos {' or '.join(f'{w}x{h}' for w, h in PICKUP_SIZES)} (1 tile, or "
            f"2 tiles + thumbnail) per request, 3-8 questions, seed {self.seed}"
        )


@dataclass(frozen=True)
class Inspection:
    """One request of the stream: which images (names on the image server) and questions."""

    product: int
    references: tuple[str, ...]
    pickups: tuple[str, ...]
    questions: tuple[int, ...]


class Traffic:
    """The catalogue and the request stream of a :class:`TrafficModel`."""

    def __init__(self, model: TrafficModel) -> None:
        self.model = model
        rng = np.random.default_rng(model.seed)
        ranks = np.arange(1, model.products + 1, dtype=np.float64)
        weights = ranks**-model.zipf_s
        self._popularity = weights / weights.sum()
        self._photos_per_product = rng.integers(1, 4, model.products)
        self._rng = rng
        self._pickups = 0

    def references_of(self, product: int) -> tuple[str, ...]:
        return tuple(f"ref-{product}-{k}.jpg" for k in range(self._photos_per_product[product]))

    def next(self) -> Inspection:
        rng = self._rng
        product = int(rng.choice(self.model.products, p=self._popularity))
        pickups = []
        for _ in range(int(rng.integers(1, 4))):
            pickups.append(f"pick-{self._pickups % self.model.pickup_pool}.jpg")
            self._pickups += 1
        count = int(rng.integers(3, 9))
        questions = tuple(int(q) for q in rng.choice(len(QUESTION_POOL), count, replace=False))
        return Inspection(product, self.references_of(product), tuple(pickups), questions)

    def stream(self, count: int) -> list[Inspection]:
        return [self.next() for _ in range(count)]


def images_for(inspections: Iterable[Inspection], pickup_pool: int) -> dict[str, bytes]:
    """Every image the inspections name, as JPEG bytes (deterministic per name)."""
    names = {name for i in inspections for name in i.references}
    out: dict[str, bytes] = {}
    for number, name in enumerate(sorted(names)):
        out[name] = photo_jpeg(REFERENCE_SIZE, seed=1000 + number, quality=90)
    for k in range(pickup_pool):
        size = PICKUP_SIZES[k % len(PICKUP_SIZES)]
        out[f"pick-{k}.jpg"] = photo_jpeg(size, seed=5000 + k, quality=90)
    return out


def request_for(inspection: Inspection, number: int, url: str) -> pb.InspectRequest:
    """The InspectRequest of one inspection; ``url`` is the image server's base URL."""
    return pb.InspectRequest(
        shipping_id=f"SHIP-W-{number}",
        product_id=f"SKU-{inspection.product}",
        product_name=f"Catalogue product {inspection.product}",
        reference_images=[pb.Image(uri=f"{url}/{n}") for n in inspection.references],
        pickup_images=[pb.Image(uri=f"{url}/{n}") for n in inspection.pickups],
        questions=[
            pb.Question(type=t, label=label, value_to_check=value, mandatory=True)
            for t, label, value in (QUESTION_POOL[q] for q in inspection.questions)
        ],
    )


@dataclass
class RepeatCounter:
    """The reference-image repeat rate a service sees: catalogue photos already sent to it
    before, over all catalogue photos sent."""

    seen: set[str]
    references: int = 0
    repeats: int = 0

    def add(self, inspections: Sequence[Inspection]) -> None:
        for inspection in inspections:
            for name in inspection.references:
                self.references += 1
                if name in self.seen:
                    self.repeats += 1
                self.seen.add(name)

    @property
    def rate(self) -> float:
        return self.repeats / self.references if self.references else 0.0
