"""Settings fields that carry their documentation tier.

Each service's settings class declares its fields with `setting(...)`: a pydantic `Field` whose
`json_schema_extra` records the group it belongs to (server, limits, model...) and whether it is
an advanced tuning knob. `tools/config_table.py` reads both to write the README summary (the
operator-facing settings only) and the full table in `docs/configuration.md`, so the tiers live
beside the defaults they describe and cannot drift from them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast, get_args

from pydantic import Field
from pydantic.fields import FieldInfo

Group = Literal[
    "server",
    "security",
    "observability",
    "limits",
    "image intake",
    "model",
    "engine",
    "events",
    "storage",
    "database",
    "async jobs",
]

GROUPS: tuple[Group, ...] = get_args(Group)
"""Every group, in the order the documents list them."""

_GROUP_KEY = "group"
_ADVANCED_KEY = "advanced"


def setting(
    default: Any = None,
    description: str = "",
    *,
    group: Group,
    advanced: bool = False,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A settings field: `Field(default, description=..., ge/gt/le=...)` plus its tier.

    `advanced=True` marks a tuning knob no operator should need: documented in
    docs/configuration.md, left out of the README. Returns `Any`, like `Field`, so the
    annotation on the class attribute stays the field's type.
    """
    if not description:
        raise ValueError("every setting needs a description")
    extra: dict[str, Any] = {_GROUP_KEY: group, _ADVANCED_KEY: advanced}
    if default_factory is not None:
        return Field(
            default_factory=default_factory,
            description=description,
            json_schema_extra=extra,
            ge=ge,
            gt=gt,
            le=le,
        )
    return Field(default, description=description, json_schema_extra=extra, ge=ge, gt=gt, le=le)


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    if not isinstance(extra, dict) or _GROUP_KEY not in extra:
        raise ValueError("field was not declared with setting(...): it has no group")
    return extra


def group_of(field: FieldInfo) -> Group:
    """The group a `setting(...)` field was declared in."""
    group = _extra(field)[_GROUP_KEY]
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    return cast(Group, group)


def is_advanced(field: FieldInfo) -> bool:
    """Whether a `setting(...)` field is an advanced tuning knob."""
    return bool(_extra(field)[_ADVANCED_KEY])
