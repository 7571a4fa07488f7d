"""The Go and Java example clients, built from protos/ with Debian's packages, call the live
inference service (unary, streaming and -async submit-and-poll) and print what it answered."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from rpi.inspection.v1 import inspection_pb2 as pb

from inference_svc.app import InferenceApp
from tests.support.e2e import ImageServer

Run = Callable[..., Coroutine[Any, Any, subprocess.CompletedProcess[str]]]

pytestmark = pytest.mark.slow

CLIENTS = ["go", "java"]
QUESTIONS = [
    ("Colour", "Is the colour red?", "Yes", True),
    ("Brand", "Is the brand ACME visible?", "Yes", True),
    ("Damage", "Is the product damaged?", "No", False),
]
ANSWER_LINE = re.compile(
    r'^answer: "(?P<label>[^"]*)" = "(?P<answer>[^"]*)" \(expected "(?P<expected>[^"]*)", '
    r"(?P<mandatory>mandatory|optional), confidence (?P<confidence>\d+)%, "
    r"source (?P<source>[A-Z]+), retake=(?:true|false)\)$"
)


@dataclass(frozen=True)
class Call:
    inspection_id: str
    shipping_id: str
    result: asyncio.Task[subprocess.CompletedProcess[str]]


def request_args(image_server: ImageServer, target: str, pickup_file: Path) -> list[str]:
    args = [
        "-target", target,
        "-product-name", "ACME mug, red",
        "-product-id", "SKU-1",
        "-reference", image_server.url("ref.jpg"),
        "-pickup", image_server.url("pickup.jpg"),
        # A local file is sent inline (Image.content) rather than fetched by the server.
        "-pickup", str(pickup_file),
    ]  # fmt: skip
    for qtype, label, value, mandatory in QUESTIONS:
        args += ["-question", f"{qtype}|{label}|{value}|{'yes' if mandatory else 'no'}"]
    return args


@pytest.fixture(scope="module")
def pickup_file(image_server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "pickup.jpg"
    path.write_bytes(image_server.images["pickup.jpg"])
    return path


@pytest_asyncio.fixture(scope="module")
async def calls(
    example_clients: dict[str, list[str] | str],
    run: Run,
    inference_app: InferenceApp,
    image_server: ImageServer,
    pickup_file: Path,
) -> AsyncIterator[dict[tuple[str, str], Call]]:
    """Starts every successful call at once (each client, unary and streaming), so the server
    batches them into a few generations instead of running them one after another; each test
    awaits and checks its own."""
    target = f"127.0.0.1:{inference_app.port}"
    started: dict[tuple[str, str], Call] = {}
    for client, argv in example_clients.items():
        if isinstance(argv, str):
            continue
        for mode in ("unary", "stream"):
            inspection_id = str(uuid.uuid4())
            shipping_id = f"SHIP-{client.upper()}-{mode.upper()}"
            command = [
                *argv,
                *request_args(image_server, target, pickup_file),
                "-shipping-id", shipping_id,
                "-inspection-id", inspection_id,
                *(["-stream"] if mode == "stream" else []),
            ]  # fmt: skip
            task = asyncio.create_task(run(*command))
            started[(client, mode)] = Call(inspection_id, shipping_id, task)
    yield started
    for call in started.values():
        if not call.result.done():
            call.result.cancel()
    await asyncio.gather(*(c.result for c in started.values()), return_exceptions=True)


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, example_clients: dict[str, list[str] | str]) -> str:
    built = example_clients[request.param]
    if isinstance(built, str):
        pytest.skip(built)
    return str(request.param)


def field(stdout: str, name: str) -> str:
    values = [
        line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(f"{name}: ")
    ]
    assert len(values) == 1, f"expected one '{name}:' line in:\n{stdout}"
    return values[0]


def assert_inspection_printed(stdout: str, inspection_id: str, shipping_id: str) -> None:
    assert field(stdout, "inspection_id") == inspection_id
    assert field(stdout, "shipping_id") == shipping_id
    assert field(stdout, "decision") in {"PICK", "NOT_PICK"}
    assert field(stdout, "model_recommendation") in {"ACCEPT", "REJECT", "PARTIAL", "RETRY"}
    assert int(field(stdout, "attempts")) >= 1
    assert "untrained=true" in field(stdout, "model")
    assert re.fullmatch(r"fetch=[\d.]+s .* total=[\d.]+s", field(stdout, "timings"))
    answers = [m for line in stdout.splitlines() if (m := ANSWER_LINE.match(line))]
    assert [a["label"] for a in answers] == [q[1] for q in QUESTIONS], stdout
    assert [a["expected"] for a in answers] == [q[2] for q in QUESTIONS]
    assert [a["mandatory"] == "mandatory" for a in answers] == [q[3] for q in QUESTIONS]
    assert all(0 <= int(a["confidence"]) <= 100 for a in answers)
    assert all(a["source"] in {"MODEL", "MISSED"} for a in answers)


async def test_unary_call_prints_decision_and_answers(
    client: str, calls: dict[tuple[str, str], Call]
) -> None:
    call = calls[(client, "unary")]
    result = await call.result
    assert result.returncode == 0, result.stderr
    assert not any(line.startswith("event ") for line in result.stdout.splitlines())
    assert_inspection_printed(result.stdout, call.inspection_id, call.shipping_id)
    assert "untrained demo model" in result.stderr


async def test_streaming_call_prints_events_in_order_then_the_result(
    client: str, calls: dict[tuple[str, str], Call]
) -> None:
    call = calls[(client, "stream")]
    result = await call.result
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [line for line in lines if line.startswith("event ")]
    kinds = [line.removeprefix("event ").split(":", 1)[0] for line in events]
    assert events[0] == f"event accepted: inspection_id={call.inspection_id}"
    assert kinds[-1] == "inspection"
    assert kinds.count("inspection") == 1
    assert "unknown" not in kinds
    # One reference and two pickup images: fetch progress counts up to 3 of 3.
    assert "event images_fetched: 3/3" in events
    assert {"images_fetched", "preprocessing_done", "generation_progress"} <= set(kinds)
    labels = {q[1] for q in QUESTIONS}
    for line in events:
        if line.startswith("event answer_ready: "):
            # Labelled as what the model said: the final answers come after the decision rules.
            assert line.startswith("event answer_ready: model's raw answer attempt="), line
            label = re.search(r'label="([^"]*)"', line)
            assert label is not None and label[1] in labels, line
    assert lines.index("final answers, after the decision rules:") < min(
        i for i, line in enumerate(lines) if line.startswith("answer: ")
    )
    # The result is printed after the last event.
    assert lines.index(events[-1]) < lines.index(f"inspection_id: {call.inspection_id}")
    assert_inspection_printed(result.stdout, call.inspection_id, call.shipping_id)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_invalid_request_exits_with_the_grpc_code(
    client: str,
    example_clients: dict[str, list[str] | str],
    run: Run,
    inference_app: InferenceApp,
    image_server: ImageServer,
    pickup_file: Path,
    stream: bool,
) -> None:
    argv = example_clients[client]
    assert isinstance(argv, list)
    # No -shipping-id: the clients send what they are given and the server rejects it.
    args = request_args(image_server, f"127.0.0.1:{inference_app.port}", pickup_file)
    result = await run(*argv, *args, *(["-stream"] if stream else []))
    assert result.returncode == 3  # INVALID_ARGUMENT's code number
    assert "rpc failed: INVALID_ARGUMENT: " in result.stderr
    # The google.rpc details travel with the status: ErrorInfo and the BadRequest violation.
    assert "  reason: INVALID_ARGUMENT (domain inspection.rpi.v1)" in result.stderr.splitlines()
    assert "  metadata stage=validate" in result.stderr.splitlines(), result.stderr
    assert re.search(r"^  field shipping_id: ", result.stderr, re.MULTILINE), result.stderr
    assert "decision:" not in result.stdout


async def test_image_host_failure_exits_14_with_the_error_info(
    client: str,
    example_clients: dict[str, list[str] | str],
    run: Run,
    inference_app: InferenceApp,
    image_server: ImageServer,
) -> None:
    argv = example_clients[client]
    assert isinstance(argv, list)
    args = [
        "-target", f"127.0.0.1:{inference_app.port}",
        "-product-name", "ACME mug, red", "-shipping-id", "SHIP-NATIVE-DNS",
        "-reference", image_server.url("ref.jpg"),
        # .invalid never resolves (RFC 6761): the image host is unavailable, retry later.
        "-pickup", "http://images.invalid/p.jpg",
        "-question", "Colour|Is the colour red?|Yes|yes",
    ]  # fmt: skip
    result = await run(*argv, *args)
    assert result.returncode == 14, result.stderr  # UNAVAILABLE
    lines = result.stderr.splitlines()
    assert any(line.startswith("rpc failed: UNAVAILABLE: pickup_images[0]: ") for line in lines)
    assert "  reason: IMAGE_SOURCE_UNAVAILABLE (domain inspection.rpi.v1)" in lines
    assert {
        "  metadata fetch_error=dns",
        "  metadata image=pickup_images[0]",
        "  metadata stage=fetch",
    } <= set(lines), result.stderr
    assert any(line.startswith("  metadata inspection_id=") for line in lines)
    assert any(line.startswith("  retry after: ") for line in lines)
    assert "cannot reach" not in result.stderr  # the server answered: no transport hint


async def test_unreachable_server_exits_14_and_names_it(
    client: str, example_clients: dict[str, list[str] | str], run: Run, unused_tcp_port: int
) -> None:
    argv = example_clients[client]
    assert isinstance(argv, list)
    target = f"127.0.0.1:{unused_tcp_port}"
    result = await run(*argv, "-target", target, "-pickup", "https://cdn.example.com/p.jpg")
    assert result.returncode == 14, result.stderr
    assert f"cannot reach {target}: check the address" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-bogus"], "flag provided but not defined: -bogus"),
        (["-timeout"], "flag needs an argument: -timeout"),
        (["-pickup", "/nonexistent/p.jpg"], 'cannot read image "/nonexistent/p.jpg"'),
        (["-question", "only|three|parts"], "want type|label|value_to_check|mandatory"),
    ],
    ids=["unknown-flag", "missing-value", "missing-file", "bad-question"],
)
async def test_usage_errors_exit_64_with_a_clear_message(
    client: str,
    example_clients: dict[str, list[str] | str],
    run: Run,
    args: list[str],
    message: str,
) -> None:
    argv = example_clients[client]
    assert isinstance(argv, list)
    # Nothing listens there: a usage error must be reported before any connection.
    result = await run(*argv, "-target", "127.0.0.1:9", *args)
    assert result.returncode == 64, result.stderr
    assert message in result.stderr
    assert "rpc failed" not in result.stderr


async def test_async_submits_and_polls_the_operation_to_its_inspection(
    client: str,
    example_clients: dict[str, list[str] | str],
    run: Run,
    inference_app: InferenceApp,
    image_server: ImageServer,
    pickup_file: Path,
) -> None:
    argv = example_clients[client]
    assert isinstance(argv, list)
    inspection_id = str(uuid.uuid4())
    shipping_id = f"SHIP-{client.upper()}-ASYNC"
    result = await run(
        *argv,
        *request_args(image_server, f"127.0.0.1:{inference_app.port}", pickup_file),
        "-shipping-id", shipping_id,
        "-inspection-id", inspection_id,
        "-async", "-request-id", f"{client}-{uuid.uuid4()}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("operation: operations/"), result.stdout
    assert "state: OPERATION_STATE_SUCCEEDED" in lines
    assert_inspection_printed(result.stdout, inspection_id, shipping_id)
    # The service agrees: the operation it printed is done with that inspection.
    name = lines[0].removeprefix("operation: ")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference_app.port}") as channel:
        operation = await lro_grpc.OperationsStub(channel).GetOperation(
            lro.GetOperationRequest(name=name)
        )
    assert operation.done and operation.HasField("response")
    inspection = pb.Inspection()
    assert operation.response.Unpack(inspection)
    assert inspection.inspection_id == inspection_id


@pytest.fixture
def java(example_clients: dict[str, list[str] | str]) -> list[str]:
    built = example_clients["java"]
    if isinstance(built, str):
        pytest.skip(built)
    return built


async def test_java_async_failed_operation_prints_its_error_info_and_exits_with_its_code(
    java: list[str], run: Run, inference_app: InferenceApp, image_server: ImageServer
) -> None:
    result = await run(
        *java,
        "-target", f"127.0.0.1:{inference_app.port}", "-async",
        "-product-name", "ACME mug, red", "-shipping-id", "SHIP-JAVA-ASYNC-DNS",
        "-reference", image_server.url("ref.jpg"),
        # .invalid never resolves (RFC 6761): the job fails fetching it.
        "-pickup", "http://images.invalid/p.jpg",
        "-question", "Colour|Is the colour red?|Yes|yes",
    )  # fmt: skip
    assert result.returncode == 14, result.stderr  # UNAVAILABLE, the operation's error code
    assert result.stdout.splitlines()[0].startswith("operation: operations/"), result.stdout
    assert "state: OPERATION_STATE_FAILED" in result.stdout.splitlines()
    lines = result.stderr.splitlines()
    failed = "operation failed: UNAVAILABLE: pickup_images[0]: "
    assert any(line.startswith(failed) for line in lines), result.stderr
    assert "  reason: IMAGE_SOURCE_UNAVAILABLE (domain inspection.rpi.v1)" in lines
    assert "  metadata fetch_error=dns" in lines, result.stderr
    assert "decision:" not in result.stdout


async def test_java_async_callback_is_sent_and_refused_without_a_webhook_secret(
    java: list[str], run: Run, inference_app: InferenceApp, image_server: ImageServer
) -> None:
    # The shared inference service has no WEBHOOK_SECRETS_FILE: a callback is refused at submit.
    result = await run(
        *java,
        "-target", f"127.0.0.1:{inference_app.port}", "-async",
        "-callback", "https://hooks.example.com/rpi",
        "-product-name", "ACME mug, red", "-shipping-id", "SHIP-JAVA-ASYNC-CALLBACK",
        "-reference", image_server.url("ref.jpg"), "-pickup", image_server.url("pickup.jpg"),
        "-question", "Colour|Is the colour red?|Yes|yes",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # INVALID_ARGUMENT
    lines = result.stderr.splitlines()
    assert any(line.startswith("rpc failed: INVALID_ARGUMENT: ") for line in lines), lines
    assert "  reason: CALLBACK_URL_FORBIDDEN (domain inspection.rpi.v1)" in lines
    assert "operation:" not in result.stdout
