"""Migration aid for callers of the replaced JSON API (``POST /process_request``).

``legacy_request_to_proto`` turns an old request body into an ``InspectRequest``;
``inspection_to_legacy_response`` renders an ``Inspection`` in the old response shape, so a
caller can switch transport first and its response handling later.

Reading of the seed (section 4 and the processing notes) where it leaves things open:

* ``ai_decision`` is "Pick" (PICK) or "Not Pick" (NOT_PICK), with ``StatusCode`` 200 / 202.
* ``finalAction``: the seed lists it beside ``ai_decision`` without another source; the old
  service had no override step between the model's recommendation and the response, so it is
  the same value as ``ai_decision``.
* The outcomes the old contract did not have (docs/policy.md) fall on the safe side: an old
  caller never picks up an item the service would not pick up on its own. RETAKE_IMAGES and
  NEEDS_REVIEW are ``ai_decision`` "Not Pick" (202) with ``finalAction`` "Retake Images" /
  "Needs Review", for a caller that knows them.
* ``status``: only successful responses had this shape (failures used
  ``{errorMsg, code, processingTime, previousuuid}``), so it is the constant "success".
  Both can be overridden by keyword for callers that stored something else.
* ``processing_time_ai`` is the server-side time of the inspection (``timings.total``, seconds);
  ``total_time`` is the caller's measured round trip when given (``total_time_s``), otherwise
  the same server-side total. Both are rounded to milliseconds.
* ``ai_match_score`` is ``match_score`` (0-100), an int when it has no fraction, as the model's
  ``overall_score`` usually was.
* ``timestamp`` is the inspection's ``create_time`` (now, when unset) in IST (UTC+05:30, no
  daylight saving, so a fixed offset is exact), formatted "YYYY-MM-DD HH:MM:SS".
* Per question: ``IsMandatory`` "Yes"/"No", ``isRetakeImage`` "true"/"false" (lower case, as the
  old service lowered it), ``Confidence`` an int 0-100, ``answer`` the final answer after the
  decision rules.
* In requests, ``skupickdone`` items that are not http(s) URLs are base64 (a
  ``data:image/...;base64,`` prefix, whitespace, missing padding and the URL-safe alphabet are
  tolerated) and are sent as inline bytes; ``pickupproductimage`` items must be URLs, as the old
  validator required. ``question`` (a JSON string) is passed through untouched in
  ``legacy_questions_json``; an already-decoded object is re-encoded as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from rpi.inspection.v1 import inspection_pb2

from clients.python.rpi_client.requests import RequestBuildError, is_url

IST = timezone(timedelta(hours=5, minutes=30), "IST")
LEGACY_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
STATUS_CODE_PICK = 200
STATUS_CODE_NOT_PICK = 202
_REQUIRED_KEYS = ("pickupproductimage", "skupickdone", "productname", "question", "shippingid")
_DATA_URI_PREFIX = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
_DECISION_TEXT = {
    inspection_pb2.DECISION_PICK: ("Pick", STATUS_CODE_PICK),
    inspection_pb2.DECISION_NOT_PICK: ("Not Pick", STATUS_CODE_NOT_PICK),
    inspection_pb2.DECISION_RETAKE_IMAGES: ("Not Pick", STATUS_CODE_NOT_PICK),
    inspection_pb2.DECISION_NEEDS_REVIEW: ("Not Pick", STATUS_CODE_NOT_PICK),
}
_FINAL_ACTION = {
    inspection_pb2.DECISION_RETAKE_IMAGES: "Retake Images",
    inspection_pb2.DECISION_NEEDS_REVIEW: "Needs Review",
}


class LegacyConversionError(RequestBuildError):
    """An old request or an inspection cannot be converted."""


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _string_list(old: Mapping[str, Any], key: str) -> list[str]:
    value = old[key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise LegacyConversionError(f"{key} must be a list of strings")
    return items


def decode_legacy_base64(value: str, where: str) -> bytes:
    """Decodes an old base64 image string, strictly (no silently dropped characters)."""
    text = "".join(_DATA_URI_PREFIX.sub("", value.strip()).split())
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        content = base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as error:
        raise LegacyConversionError(
            f"{where}: neither an http(s) URL nor valid base64 ({error})"
        ) from error
    if not content:
        raise LegacyConversionError(f"{where}: empty image")
    return content


def legacy_request_to_proto(old: Mapping[str, Any]) -> inspection_pb2.InspectRequest:
    """The old ``RequestItem`` JSON body as an ``InspectRequest``."""
    missing = [key for key in _REQUIRED_KEYS if old.get(key) in (None, "", [])]
    if missing:
        raise LegacyConversionError(f"missing required fields: {', '.join(missing)}")

    references: list[inspection_pb2.Image] = []
    for index, uri in enumerate(_string_list(old, "pickupproductimage")):
        if not is_url(uri.strip()):
            raise LegacyConversionError(f"pickupproductimage[{index}] must be an http(s) URL")
        references.append(inspection_pb2.Image(uri=uri.strip()))

    pickups: list[inspection_pb2.Image] = []
    for index, item in enumerate(_string_list(old, "skupickdone")):
        if is_url(item.strip()):
            pickups.append(inspection_pb2.Image(uri=item.strip()))
        else:
            content = decode_legacy_base64(item, f"skupickdone[{index}]")
            pickups.append(inspection_pb2.Image(content=content))

    question = old["question"]
    legacy_json = question if isinstance(question, str) else json.dumps(question)

    return inspection_pb2.InspectRequest(
        inspection_id=_text(old.get("uuid")),
        previous_inspection_id=_text(old.get("previousuuid")),
        shipping_id=_text(old["shippingid"]),
        product_id=_text(old.get("productid")),
        product_name=_text(old["productname"]),
        reference_images=references,
        pickup_images=pickups,
        legacy_questions_json=legacy_json,
    )


def legacy_timestamp(inspection: inspection_pb2.Inspection) -> str:
    if inspection.HasField("create_time"):
        created = inspection.create_time.ToDatetime(tzinfo=UTC)
    else:
        created = datetime.now(UTC)
    return created.astimezone(IST).strftime(LEGACY_TIMESTAMP_FORMAT)


def _legacy_answer(answer: inspection_pb2.Answer) -> dict[str, Any]:
    return {
        "Type": answer.type,
        "Label": answer.label,
        "answer": answer.answer,
        "ValueToCheck": answer.value_to_check,
        "IsMandatory": "Yes" if answer.mandatory else "No",
        "Evidence": answer.evidence,
        "Confidence": int(answer.confidence),
        "isRetakeImage": "true" if answer.retake_image else "false",
    }


def _score(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 2)


def inspection_to_legacy_response(
    inspection: inspection_pb2.Inspection,
    total_time_s: float | None = None,
    *,
    status: str = "success",
    final_action: str | None = None,
) -> dict[str, Any]:
    """The old ``ProcessingResponse`` dict for an inspection (see the module docstring)."""
    try:
        decision_text, status_code = _DECISION_TEXT[inspection.decision]
    except KeyError:
        raise LegacyConversionError(
            f"inspection {inspection.inspection_id!r} has no decision"
        ) from None
    server_total = inspection.timings.total.ToTimedelta().total_seconds()
    return {
        "shippingid": inspection.shipping_id,
        "uuid": inspection.inspection_id,
        "product_id": inspection.product_id,
        "processing_time_ai": round(server_total, 3),
        "Question": [_legacy_answer(answer) for answer in inspection.answers],
        "ai_decision": decision_text,
        "finalAction": final_action
        if final_action is not None
        else _FINAL_ACTION.get(inspection.decision, decision_text),
        "ai_match_score": _score(inspection.match_score),
        "analysis": {
            "test_product_description": inspection.analysis.pickup_description,
            "reference_product_description": inspection.analysis.reference_description,
            "comparison": inspection.analysis.comparison,
        },
        "status": status,
        "StatusCode": status_code,
        "total_time": round(total_time_s if total_time_s is not None else server_total, 3),
        "timestamp": legacy_timestamp(inspection),
    }
