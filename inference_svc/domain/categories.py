"""Question categories, from keywords in a question's label or type; the category decides the
Result/Evidence instruction in the prompt.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from inference_svc.domain.models import Question


class Category(enum.Enum):
    """Question category; decides the Result/Evidence instruction in the prompt."""

    DAMAGE = "damage"
    USAGE = "usage"
    SKU = "sku_verification"
    PRICE = "price_verification"
    SEAL = "seal_verification"
    QUANTITY = "quantity_verification"
    BRAND = "brand_verification"
    COLOUR = "color_verification"
    SIZE = "size_verification"
    PACKAGING = "packaging_verification"
    LABEL = "label_verification"
    DESIGN = "design_matching"
    CATEGORY = "category_verification"
    PRODUCT_MATCHING = "product_matching"
    GENERAL = "general"


# Checked in this order, first hit wins: damage and usage first because their expected healthy
# answer is the negative whatever else the label mentions ("Is the brand label torn?"); then the
# most specific words before the generic ones ("model number" is a SKU, not a design).
_KEYWORDS: tuple[tuple[Category, tuple[str, ...]], ...] = (
    (
        Category.DAMAGE,
        (
            "damage",
            "damaged",
            "damages",
            "broken",
            "break",
            "crack",
            "cracked",
            "scratch",
            "scratched",
            "scratches",
            "dent",
            "dented",
            "torn",
            "tear",
            "defect",
            "defective",
            "stain",
            "stained",
            "leak",
            "leakage",
            "leaking",
            "burnt",
            "rust",
            "rusted",
        ),
    ),
    (
        Category.USAGE,
        (
            "used",
            "usage",
            "worn",
            "washed",
            "soiled",
            "dirty",
            "signs of use",
            "second hand",
            "pre-owned",
        ),
    ),
    (
        Category.SKU,
        (
            "sku",
            "item code",
            "product code",
            "model number",
            "model no",
            "serial",
            "serial number",
            "imei",
            "ean",
            "upc",
            "barcode",
            "article number",
            "style code",
        ),
    ),
    (Category.PRICE, ("price", "mrp", "cost", "rate", "price tag")),
    (
        Category.SEAL,
        ("seal", "sealed", "unsealed", "seal intact", "tamper", "tampered", "unopened", "opened"),
    ),
    (
        Category.QUANTITY,
        (
            "quantity",
            "qty",
            "count",
            "number of",
            "how many",
            "pieces",
            "piece",
            "pcs",
            "units",
            "unit",
            "pack of",
            "set of",
            "pair",
            "pairs",
        ),
    ),
    (Category.BRAND, ("brand", "brand name", "logo", "manufacturer", "make", "trademark")),
    (Category.COLOUR, ("colour", "color", "colours", "colors", "shade", "hue")),
    (
        Category.SIZE,
        (
            "size",
            "sizes",
            "dimension",
            "dimensions",
            "length",
            "width",
            "height",
            "capacity",
            "volume",
            "weight",
        ),
    ),
    (
        Category.PACKAGING,
        (
            "packaging",
            "package",
            "packed",
            "packing",
            "box",
            "carton",
            "wrapper",
            "pouch",
            "original packaging",
        ),
    ),
    (Category.LABEL, ("label", "labels", "tag", "tags", "sticker", "stickers")),
    (Category.DESIGN, ("design", "pattern", "print", "printed", "style", "shape", "model")),
    (Category.CATEGORY, ("category", "product type", "type of product", "kind of product")),
    (
        Category.PRODUCT_MATCHING,
        (
            "match",
            "matches",
            "matching",
            "same product",
            "correct product",
            "identical",
            "product name",
            "same item",
            "correct item",
        ),
    ),
)


def _word_regex(words: Sequence[str]) -> re.Pattern[str]:
    # Word boundaries so that "use" does not fire on "house" nor "rate" on "accurate".
    alternatives = sorted((re.escape(w).replace(r"\ ", r"\s+") for w in words), key=len)
    return re.compile(r"\b(?:" + "|".join(reversed(alternatives)) + r")\b", re.IGNORECASE)


_PATTERNS: tuple[tuple[Category, re.Pattern[str]], ...] = tuple(
    (category, _word_regex(words)) for category, words in _KEYWORDS
)


def categorise(question: Question) -> Category:
    """The category of a question, from keywords in its label, then in its type."""
    for text in (question.label, question.type):
        for category, pattern in _PATTERNS:
            if pattern.search(text):
                return category
    return Category.GENERAL


def is_negative_expected(question: Question) -> bool:
    """Damage and usage questions: the healthy answer is the negative ("No damage")."""
    return categorise(question) in (Category.DAMAGE, Category.USAGE)
