"""Model outputs and policies shared by the policy tests."""

from __future__ import annotations

from typing import Any

from inference_svc.domain.models import Question
from inference_svc.domain.policy import SelectedPolicy, parse_policy

BRAND = Question("Brand", "Is the brand visible?", "Yes", False)
SEAL = Question("Seal", "Is the seal intact?", "Yes", False)
COUNT = Question("Quantity", "How many units?", "2", False)
COLOUR = Question("Colour", "What is the colour?", "Red", False)
QUESTIONS = [BRAND, SEAL, COUNT, COLOUR]


def item(label: str, result: object, confidence: object = 90) -> dict[str, object]:
    return {
        "Label": label,
        "Result": result,
        "Evidence": f"evidence for {label}",
        "Confidence": confidence,
        "isRetakeImage": False,
    }


def output(
    results: list[Any], recommendation: str = "Reject", overall_score: object = 70
) -> dict[str, Any]:
    return {
        "image_analysis": {"pickup_images": "p", "vendor_image": "v", "comparison": "c"},
        "verification_results": results,
        "pickup_confidence": {
            "overall_score": overall_score,
            "confidence_factors": {
                "image_quality": 60,
                "attribute_visibility": 60,
                "matching_confidence": 60,
            },
            "recommendation": recommendation,
        },
    }


def selected(yaml_text: str = "version: t1\n", vendor: str = "") -> SelectedPolicy:
    return parse_policy(yaml_text, "<test>").select(vendor)
