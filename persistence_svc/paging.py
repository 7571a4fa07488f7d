"""AIP-158 page tokens: opaque to callers, bound to the filter they were issued for.

A token is base64url of a small JSON document holding the keyset cursor (created_at in
microseconds, inspection_id), a fingerprint of the filter and a checksum over both. The
checksum catches corrupted or hand-edited tokens; it is not a secret signature (the cursor only
selects rows of a filter the caller may query anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime, timedelta
from uuid import UUID

from persistence_svc.errors import FieldViolation, InvalidArgumentError
from persistence_svc.records import PageCursor

_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TOKEN_CHARS = 512


def filter_fingerprint(shipping_id: str) -> str:
    return hashlib.sha256(b"shipping_id\x00" + shipping_id.encode()).hexdigest()[:16]


def _checksum(version: int, micros: int, inspection_id: str, fingerprint: str) -> str:
    text = f"{version}|{micros}|{inspection_id}|{fingerprint}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_page_token(cursor: PageCursor, fingerprint: str) -> str:
    delta = cursor.created_at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    iid = str(cursor.inspection_id)
    doc = {
        "v": _VERSION,
        "t": micros,
        "i": iid,
        "f": fingerprint,
        "c": _checksum(_VERSION, micros, iid, fingerprint),
    }
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _invalid(description: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"invalid page_token: {description}", [FieldViolation("page_token", description)]
    )


def decode_page_token(token: str, fingerprint: str) -> PageCursor:
    """The cursor of ``token``; InvalidArgumentError when it is malformed, tampered with or was
    issued for another filter."""
    if len(token) > _MAX_TOKEN_CHARS:
        raise _invalid("too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
        version = doc["v"]
        micros = doc["t"]
        iid = doc["i"]
        token_fingerprint = doc["f"]
        checksum = doc["c"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _invalid("not a token issued by this service") from None
    if not (
        isinstance(version, int)
        and isinstance(micros, int)
        and isinstance(iid, str)
        and isinstance(token_fingerprint, str)
        and isinstance(checksum, str)
    ):
        raise _invalid("not a token issued by this service")
    if version != _VERSION or checksum != _checksum(version, micros, iid, token_fingerprint):
        raise _invalid("corrupted or modified")
    if token_fingerprint != fingerprint:
        raise _invalid("issued for a different request: keep every field but page_token unchanged")
    try:
        created_at = _EPOCH + timedelta(microseconds=micros)
        inspection_id = UUID(iid)
    except (ValueError, OverflowError):
        raise _invalid("corrupted or modified") from None
    return PageCursor(created_at=created_at, inspection_id=inspection_id)


def resolve_page_size(requested: int, default: int, maximum: int) -> int:
    """AIP-158: 0 means the default, values above the maximum are reduced to it."""
    if requested < 0:
        raise InvalidArgumentError(
            "page_size must not be negative",
            [FieldViolation("page_size", "must not be negative")],
        )
    if requested == 0:
        return default
    return min(requested, maximum)
