"""rpi-replay --rerun-model without a server: the request rebuilt from a stored inspection, and
the flags it refuses (the end-to-end test is tests/storage/test_replay_rerun.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.persistence.v1 import persistence_pb2 as ppb

from tools.replay import NotReplayableError, main
from tools.replay_parser import EXIT_USAGE
from tools.replay_rerun import rerun_request

QUESTIONS = [
    pb.Question(type="Brand", label="Brand visible?", value_to_check="Yes", mandatory=True),
    pb.Question(type="Colour", label="Colour?", value_to_check="Red"),
]


def _image(role: int, index: int, archived: bool = True) -> ppb.ImageRecord:
    uri = f"s3://evidence/images/{role}{index:063d}" if archived else ""
    return ppb.ImageRecord(role=role, index=index, inline=True, archived_uri=uri)


def _record(*images: ppb.ImageRecord, legacy: bool = False) -> ppb.InspectionRecord:
    return ppb.InspectionRecord(
        inspection_id="0d9a2c4e-5b7f-4e21-9a0c-1f2e3d4c5b6a",
        shipping_id="S1",
        status=ppb.INSPECTION_STATUS_COMPLETED,
        request=ppb.RequestReceived(
            shipping_id="S1",
            product_id="SKU-1",
            product_name="Blue mug",
            vendor_id="acme",
            questions=QUESTIONS,
            legacy_questions=legacy,
            images=list(images),
        ),
        result=pb.Inspection(decision=pb.DECISION_PICK),
    )


def test_the_request_names_the_archived_images_in_order() -> None:
    ref, pick = ppb.IMAGE_ROLE_REFERENCE, ppb.IMAGE_ROLE_PICKUP
    images = [_image(pick, 1), _image(ref, 0), _image(pick, 0)]
    request = rerun_request(_record(*images))
    assert request.previous_inspection_id == "0d9a2c4e-5b7f-4e21-9a0c-1f2e3d4c5b6a"
    assert not request.inspection_id  # the target picks a new one
    assert (request.shipping_id, request.product_id, request.product_name, request.vendor_id) == (
        "S1",
        "SKU-1",
        "Blue mug",
        "acme",
    )
    assert [i.uri for i in request.reference_images] == [images[1].archived_uri]
    assert [i.uri for i in request.pickup_images] == [
        images[2].archived_uri,
        images[0].archived_uri,
    ]
    assert list(request.questions) == QUESTIONS and not request.legacy_questions_json


def test_legacy_questions_are_sent_in_the_legacy_form() -> None:
    record = _record(_image(ppb.IMAGE_ROLE_REFERENCE, 0), _image(ppb.IMAGE_ROLE_PICKUP, 0))
    request = rerun_request(_record(*record.request.images, legacy=True))
    assert not request.questions
    assert json.loads(request.legacy_questions_json) == {
        "Question": [
            {
                "Type": "Brand",
                "Label": "Brand visible?",
                "ValueToCheck": "Yes",
                "IsMandatory": "Yes",
            },
            {"Type": "Colour", "Label": "Colour?", "ValueToCheck": "Red", "IsMandatory": "No"},
        ]
    }


def test_not_archived_and_not_completed_are_not_rerun() -> None:
    partly = _record(_image(ppb.IMAGE_ROLE_REFERENCE, 0), _image(ppb.IMAGE_ROLE_PICKUP, 0, False))
    with pytest.raises(NotReplayableError, match="not archived"):
        rerun_request(partly)
    pending = _record(_image(ppb.IMAGE_ROLE_REFERENCE, 0), _image(ppb.IMAGE_ROLE_PICKUP, 0))
    pending.status = ppb.INSPECTION_STATUS_FAILED
    with pytest.raises(NotReplayableError, match="not completed"):
        rerun_request(pending)


def test_flags_the_rerun_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    select = ["--shipping-id", "S1", "--persistence-target", "127.0.0.1:1"]
    assert main(["--rerun-model", *select]) == EXIT_USAGE
    assert "needs --inference-target" in capsys.readouterr().err
    policy = tmp_path / "p.yaml"
    policy.write_text("version: p-1\n")
    rerun = ["--rerun-model", "--inference-target", "127.0.0.1:1", *select]
    assert main([*rerun, "--policy", str(policy)]) == EXIT_USAGE
    assert "--policy does not apply" in capsys.readouterr().err
    assert main([*rerun, "--tls-cert", str(policy)]) == EXIT_USAGE  # a certificate, no key
    assert "mutual TLS needs both" in capsys.readouterr().err
    assert main(select) == EXIT_USAGE
    assert "give --policy" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*rerun, "--concurrency", "0"])
    assert exited.value.code == EXIT_USAGE
