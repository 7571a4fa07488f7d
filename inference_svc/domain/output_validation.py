"""Validation of the parsed model output against RESPONSE_SCHEMA, with errors short and specific
enough to put in front of the model on a retry.
"""

from __future__ import annotations

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from inference_svc.domain.models import ValidationOutcome
from inference_svc.domain.output_schema import RESPONSE_SCHEMA

MAX_REPORTED_ERRORS = 20

_VALIDATOR = Draft202012Validator(RESPONSE_SCHEMA)


def json_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate_output(obj: object) -> ValidationOutcome:
    """Check a parsed output against RESPONSE_SCHEMA; errors read "$.path: message"."""
    if not isinstance(obj, dict):
        return ValidationOutcome(
            parsed=None, valid=False, errors=["$: no JSON object found in the model output"]
        )
    errors = sorted(_VALIDATOR.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    messages = [f"{json_path(e)}: {_short(_message(e))}" for e in errors]
    if len(messages) > MAX_REPORTED_ERRORS:
        extra = len(messages) - MAX_REPORTED_ERRORS
        messages = [*messages[:MAX_REPORTED_ERRORS], f"... and {extra} more error(s)"]
    return ValidationOutcome(parsed=obj, valid=not messages, errors=messages)


def _message(error: ValidationError) -> str:
    # "is not valid under any of the given schemas" tells a model nothing; say what is wanted.
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator == "anyOf" and isinstance(description, str):
        return f"{error.instance!r} is not {description}"
    return error.message


def _short(message: str, limit: int = 200) -> str:
    # jsonschema quotes the whole offending instance; a long Evidence would flood the retry.
    return message if len(message) <= limit else message[: limit - 3] + "..."
