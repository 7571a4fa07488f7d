"""The bucket lifecycle rules shipped under deploy/storage/: the S3 file is accepted by a real
S3 endpoint (moto) and reads back the same; both files expire the archive and export prefixes
the services write (IMAGE_ARCHIVE_URI/RESULT_EXPORT_URI ending in images/ and results/)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.storage.conftest import S3

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "storage"


def test_the_s3_lifecycle_file_is_accepted_by_an_s3_endpoint(s3: S3) -> None:
    rules = json.loads((DEPLOY / "s3-lifecycle.json").read_text())
    client = s3.client()
    client.create_bucket(Bucket="lifecycle-check")
    client.put_bucket_lifecycle_configuration(
        Bucket="lifecycle-check", LifecycleConfiguration=rules
    )
    stored = client.get_bucket_lifecycle_configuration(Bucket="lifecycle-check")["Rules"]
    expiring = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in stored if "Expiration" in r}
    assert expiring == {"images/": 365, "results/": 365}


def test_the_gcs_lifecycle_file_expires_the_same_prefixes() -> None:
    rules = json.loads((DEPLOY / "gcs-lifecycle.json").read_text())["rule"]
    deleting = {
        prefix: r["condition"]["age"]
        for r in rules
        if r["action"]["type"] == "Delete"
        for prefix in r["condition"]["matchesPrefix"]
    }
    assert deleting == {"images/": 365, "results/": 365}
