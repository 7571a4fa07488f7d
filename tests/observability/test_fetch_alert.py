"""The ImageFetchFailing alert counts exactly the fetch-failure causes that callers are told are
the image host's (UNAVAILABLE, IMAGE_SOURCE_UNAVAILABLE), and only causes the metric exports."""

from __future__ import annotations

import re

import yaml

from inference_svc.imaging.fetch_errors import UNAVAILABLE_CAUSES
from svc_common.inference_metrics import FETCH_ERROR_REASONS

from .conftest import OBSERVABILITY_DIR


def test_the_alert_counts_the_unavailable_causes() -> None:
    groups = yaml.safe_load((OBSERVABILITY_DIR / "alerts.yaml").read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "ImageFetchFailing"]
    selectors = re.findall(
        r'rpi_inference_image_fetch_errors_total\{reason=~"([^"]+)"\}', rule["expr"]
    )
    assert selectors, rule["expr"]
    for selector in selectors:
        assert set(selector.split("|")) == UNAVAILABLE_CAUSES
    assert set(FETCH_ERROR_REASONS) >= UNAVAILABLE_CAUSES
