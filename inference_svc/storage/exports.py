"""Where an asynchronous inspection's result is exported, decided at submit.

A SubmitInspection may name its own prefix (``result_export_uri``); it must be a bucket URI
whose bucket is in ALLOWED_EXPORT_BUCKETS, so a caller cannot make the service write to any
bucket its credentials reach. Without one the job uses RESULT_EXPORT_URI, if set. Either way
the object's URI is fixed at submit and travels with the job, so whichever replica runs it
writes the same object.
"""

from __future__ import annotations

from inference_svc.domain.errors import FieldViolation, InspectionError, Reason, invalid_argument
from inference_svc.storage.evidence import export_target
from inference_svc.storage.stores import BadBucketUri, BucketUri, bucket_allowed, parse_bucket_uri

FIELD = "result_export_uri"


class ExportTargets:
    def __init__(self, default: BucketUri | None, allowed: tuple[str, ...]) -> None:
        for entry in allowed:
            if parse_bucket_uri(entry, key_required=False).key:
                raise ValueError(
                    f"ALLOWED_EXPORT_BUCKETS entry {entry!r}: scheme://bucket, no path"
                )
        self._default = default
        self._allowed = allowed

    def target(self, prefix: str, shipping_id: str, inspection_id: str) -> str:
        """The export object's URI ('' for none); EXPORT_URI_FORBIDDEN for a prefix the
        service may not write."""
        if not prefix:
            if self._default is None:
                return ""
            return export_target(self._default, shipping_id, inspection_id).geturl()
        try:
            uri = parse_bucket_uri(prefix, key_required=False)
        except BadBucketUri as exc:
            raise _forbidden(str(exc)) from None
        if not bucket_allowed(uri, self._allowed):
            raise _forbidden(f"bucket {uri.bucket_ref} is not in ALLOWED_EXPORT_BUCKETS")
        return export_target(uri, shipping_id, inspection_id).geturl()


def _forbidden(why: str) -> InspectionError:
    return invalid_argument(
        f"{FIELD}: {why}", [FieldViolation(FIELD, why)], reason=Reason.EXPORT_URI_FORBIDDEN
    )
