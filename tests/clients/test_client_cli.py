"""``rpi-inspect`` end to end: main([...]) against the loopback server, output via capsys."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clients.python.rpi_client.cli import main
from clients.python.rpi_client.render import UNTRAINED_WARNING

if TYPE_CHECKING:
    from tests.clients.conftest import CannedServer

QUESTIONS_YAML = """
- type: Colour
  label: Is the mug blue?
  value_to_check: Yes
  mandatory: Yes
- type: Quantity
  label: How many mugs?
  value_to_check: 2
  mandatory: No
"""


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    reference = tmp_path / "reference.jpg"
    reference.write_bytes(b"reference-bytes")
    pickup = tmp_path / "pickup.jpg"
    pickup.write_bytes(b"pickup-bytes")
    questions = tmp_path / "questions.yaml"
    questions.write_text(QUESTIONS_YAML)
    return {"reference": reference, "pickup": pickup, "questions": questions}


def inspect_args(target: str, inputs: dict[str, Path], shipping_id: str) -> list[str]:
    return [
        "inspect",
        "--target", target,
        "--reference", str(inputs["reference"]),
        "--reference", "https://cdn.example.com/ref2.jpg",
        "--pickup", str(inputs["pickup"]),
        "--questions", str(inputs["questions"]),
        "--product-name", "Blue mug",
        "--shipping-id", shipping_id,
        "--product-id", "P-9",
        "--inspection-id", "cli-1",
        "--timeout", "30",
    ]  # fmt: skip


@pytest.mark.parametrize("style", ["--stream", "--unary"])
def test_inspect_json_output_parses(
    server: CannedServer,
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    style: str,
) -> None:
    code = main([*inspect_args(server.target, inputs, "ok"), style, "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    inspection = json.loads(out)
    assert inspection["decision"] == "DECISION_PICK"
    assert inspection["inspectionId"] == "cli-1"
    assert [a["label"] for a in inspection["answers"]] == ["Is the mug blue?", "How many mugs?"]
    assert UNTRAINED_WARNING not in err
    sent = server.inspection.requests[-1]
    assert sent.reference_images[0].content == b"reference-bytes"
    assert sent.reference_images[1].uri == "https://cdn.example.com/ref2.jpg"
    assert sent.pickup_images[0].content == b"pickup-bytes"
    assert sent.questions[0].value_to_check == "Yes"
    assert sent.questions[0].mandatory
    assert not sent.questions[1].mandatory
    assert sent.product_id == "P-9"


def test_inspect_stream_table_shows_progress_answers_and_decision(
    server: CannedServer, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(inspect_args(server.target, inputs, "not-pick"))
    out, err = capsys.readouterr()
    assert code == 0
    assert "model's raw answer Is the mug blue?: Yes (confidence 90%)" in err
    assert "Answers (final, after the decision rules)" in out
    assert "done" in err
    assert "NOT PICK" in out
    assert "Is the mug blue?" in out
    assert "Timings (s)" in out
    assert "NOT PICK" not in err


def test_inspect_untrained_model_warns_loudly(
    server: CannedServer, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*inspect_args(server.target, inputs, "untrained"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["model"]["untrained"] is True
    assert "UNTRAINED DEMO MODEL" in err
    assert "WARNING" in err


def test_inspect_legacy_json_output(
    server: CannedServer, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*inspect_args(server.target, inputs, "ok"), "--unary", "--legacy-json"])
    out, _ = capsys.readouterr()
    assert code == 0
    legacy = json.loads(out)
    assert (legacy["ai_decision"], legacy["StatusCode"]) == ("Pick", 200)
    assert legacy["timestamp"] == "2025-01-02 01:30:00"


@pytest.mark.parametrize("style", ["--stream", "--unary"])
def test_inspect_rpc_failure_exits_with_the_grpc_code_and_reason(
    server: CannedServer,
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    style: str,
) -> None:
    code = main([*inspect_args(server.target, inputs, "too-large"), style, "--json"])
    out, err = capsys.readouterr()
    assert code == 3  # INVALID_ARGUMENT
    assert out == ""
    assert "INVALID_ARGUMENT IMAGE_TOO_LARGE pickup_images[1]: image is 12.0 MB" in err
    assert "violation pickup_images[1]: image is 12.0 MB, limit 10 MB" in err


def test_inspect_stream_failure_midway_exits_with_its_code(
    server: CannedServer, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(inspect_args(server.target, inputs, "fail-midway"))
    _, err = capsys.readouterr()
    assert code == 13  # INTERNAL
    assert "INTERNAL MODEL_OUTPUT_INVALID" in err


def test_inspect_unreachable_server_exits_14_and_says_so(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str], unused_tcp_port: int
) -> None:
    target = f"127.0.0.1:{unused_tcp_port}"
    code = main([*inspect_args(target, inputs, "ok"), "--unary"])
    _, err = capsys.readouterr()
    assert code == 14  # UNAVAILABLE
    assert "UNAVAILABLE" in err
    assert f"rpi-inspect: cannot reach {target}: check the address" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--questions", "/nonexistent/q.yaml"], "cannot read questions file"),
        (["--pickup", "/nonexistent/p.jpg"], "cannot read image"),
    ],
)
def test_inspect_bad_local_input_is_a_usage_error(
    server: CannedServer,
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    change: list[str],
    message: str,
) -> None:
    code = main([*inspect_args(server.target, inputs, "ok"), *change])
    _, err = capsys.readouterr()
    assert code == 64
    assert message in err
    assert server.inspection.requests == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["inspect", "--target", "x:1"],
        ["frobnicate"],
        ["list", "--shipping-id", "S"],
        [
            "inspect",
            "--reference",
            "a",
            "--pickup",
            "b",
            "--questions",
            "q",
            "--product-name",
            "n",
            "--shipping-id",
            "s",
            "--stream",
            "--unary",
        ],
    ],
)
def test_usage_errors_exit_64(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RPI_PERSISTENCE_TARGET", raising=False)
    assert main(argv) == 64
    assert capsys.readouterr().err


def test_get_prints_record_json(server: CannedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["get", "--persistence-target", server.target, "rec-0"])
    out, _ = capsys.readouterr()
    assert code == 0
    record = json.loads(out)
    assert record["inspectionId"] == "rec-0"
    assert record["status"] == "INSPECTION_STATUS_COMPLETED"


def test_get_missing_exits_5(server: CannedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["get", "--persistence-target", server.target, "nope"])
    _, err = capsys.readouterr()
    assert code == 5  # NOT_FOUND
    assert "NOT_FOUND" in err


def test_list_json_and_table(
    server: CannedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPI_PERSISTENCE_TARGET", server.target)
    code = main(["list", "--persistence-target", server.target, "--shipping-id", "S-LIST",
                 "--page-size", "2", "--json"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert [r["inspectionId"] for r in json.loads(out)] == [f"rec-{i}" for i in range(5)]
    # The target from the environment, and a table this time.
    assert main(["list", "--shipping-id", "S-LIST", "--limit", "1"]) == 0
    out, _ = capsys.readouterr()
    assert "rec-0" in out
    assert "rec-1" not in out
    assert "COMPLETED" in out


def test_health(server: CannedServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--target", server.target]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    # NOT_SERVING: as unavailable as a server that does not answer.
    assert main(["health", "--target", server.target, "--service", "draining"]) == 14
    assert capsys.readouterr().out.strip() == "NOT_SERVING"


def test_legacy_convert_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = {
        "pickupproductimage": ["https://xbeestest.s3.amazonaws.com/r.jpg"],
        "skupickdone": [base64.b64encode(b"jpeg!").decode(), "https://a.example.com/p.jpg"],
        "productname": "Kettle",
        "question": '{"Question": []}',
        "shippingid": "S-7",
        "uuid": "u-7",
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert main(["legacy-convert", str(path)]) == 0
    converted = json.loads(capsys.readouterr().out)
    assert converted["shippingId"] == "S-7"
    assert converted["inspectionId"] == "u-7"
    assert base64.b64decode(converted["pickupImages"][0]["content"]) == b"jpeg!"
    assert converted["pickupImages"][1]["uri"] == "https://a.example.com/p.jpg"
    assert converted["legacyQuestionsJson"] == '{"Question": []}'


def test_legacy_convert_inspection_to_old_response(
    server: CannedServer,
    inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*inspect_args(server.target, inputs, "not-pick"), "--json"]) == 0
    path = tmp_path / "inspection.json"
    path.write_text(capsys.readouterr().out)
    assert main(["legacy-convert", "--inspection", str(path)]) == 0
    legacy = json.loads(capsys.readouterr().out)
    assert (legacy["ai_decision"], legacy["StatusCode"], legacy["uuid"]) == (
        "Not Pick",
        202,
        "cli-1",
    )


def test_legacy_convert_bad_input_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"productname": "x"}))
    assert main(["legacy-convert", str(path)]) == 64
    assert "missing required fields" in capsys.readouterr().err


def test_stream_progress_stage_line_follows_events() -> None:
    from io import StringIO

    from rich.console import Console
    from rpi.inspection.v1 import inspection_pb2 as pb

    from clients.python.rpi_client.render import StreamProgress

    events = [
        pb.InspectStreamResponse(accepted=pb.Accepted(inspection_id="abc")),
        pb.InspectStreamResponse(images_fetched=pb.ImagesFetched(fetched=1, total=3)),
        pb.InspectStreamResponse(preprocessing_done=pb.PreprocessingDone(tiles=7, prompt_tokens=9)),
        pb.InspectStreamResponse(queued=pb.Queued(position=2)),
        pb.InspectStreamResponse(queued=pb.Queued(position=0)),
        pb.InspectStreamResponse(
            generation_progress=pb.GenerationProgress(
                attempt=2, tokens_generated=40, max_new_tokens=500
            )
        ),
        pb.InspectStreamResponse(
            answer_ready=pb.AnswerReady(
                label="Sealed?", result="No", confidence=55, retake_image=True
            )
        ),
        pb.InspectStreamResponse(inspection=pb.Inspection()),
    ]
    buffer = StringIO()
    stages = []
    with StreamProgress(Console(file=buffer, width=200)) as progress:
        for event in events:
            progress.on_event(event)
            stages.append(progress.current_stage)
    assert stages == [
        ("accepted abc", 0, None),
        ("images fetched 1/3", 1, 3),
        ("preprocessing done: 7 tiles, 9 prompt tokens", 0, None),
        ("queued at position 2", 0, None),
        ("generation starting", 0, None),
        ("attempt 2: tokens 40/500", 40, 500),
        ("attempt 2: tokens 40/500", 40, 500),
        ("done", 1, 1),
    ]
    assert "model's raw answer Sealed?: No (confidence 55%) [retake photo]" in buffer.getvalue()


def test_runs_as_module_reading_stdin() -> None:
    import subprocess
    import sys

    old = {
        "pickupproductimage": ["https://cdn.example.com/r.jpg"],
        "skupickdone": ["https://cdn.example.com/p.jpg"],
        "productname": "Kettle",
        "question": "{}",
        "shippingid": "S-1",
    }
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "clients.python.rpi_client", "legacy-convert", "-"],
        input=json.dumps(old),
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["shippingId"] == "S-1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cert", "/nonexistent/c.pem"], "mutual TLS needs both"),
        (["--ca-file", "/nonexistent/ca.pem"], "TLS:"),
        (["--max-message-mb", "0"], "--max-message-mb must be positive"),
    ],
)
def test_bad_connection_options_are_usage_errors(
    server: CannedServer, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["health", "--target", server.target, *extra]) == 64
    assert message in capsys.readouterr().err
