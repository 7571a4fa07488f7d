"""vendor_id on the way in: from the request message, validated like the other text fields."""

from __future__ import annotations

import pytest
from rpi.inspection.v1 import inspection_pb2 as pb

from inference_svc.domain.errors import InspectionError
from inference_svc.domain.validation import RequestLimits, validate_request
from inference_svc.grpc_api.convert import raw_request_from_proto


def message(vendor_id: str) -> pb.InspectRequest:
    return pb.InspectRequest(
        shipping_id="S1",
        product_name="mug",
        reference_images=[pb.Image(content=b"\xff\xd8\xffref")],
        pickup_images=[pb.Image(content=b"\xff\xd8\xffpick")],
        questions=[pb.Question(type="Brand", label="Brand?", value_to_check="Yes")],
        vendor_id=vendor_id,
    )


def test_vendor_id_reaches_the_request() -> None:
    request = validate_request(raw_request_from_proto(message("  acme ")), RequestLimits())
    assert request.vendor_id == "acme"
    assert validate_request(raw_request_from_proto(message("")), RequestLimits()).vendor_id == ""


def test_an_overlong_vendor_id_is_refused() -> None:
    limits = RequestLimits(max_text_length=10)
    with pytest.raises(InspectionError) as info:
        validate_request(raw_request_from_proto(message("v" * 11)), limits)
    assert [v.field for v in info.value.violations] == ["vendor_id"]
