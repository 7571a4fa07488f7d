"""The grpcurl recipes of README.md, run as written against the live inference service with the
real grpcurl binary and no proto files (reflection only), so the documentation cannot rot.

Each fenced bash block between the grpcurl-recipes markers is one grpcurl command. The test
substitutes the live address for localhost:50051 and the test image server's URLs for the
example CDN URLs, runs the command with bash, and checks the outcome its kind promises.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from inference_svc.app import InferenceApp
from tests.support.e2e import ImageServer

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BEGIN, END = "<!-- grpcurl-recipes:begin -->", "<!-- grpcurl-recipes:end -->"
DOC_ADDRESS = "localhost:50051"
REFERENCE_URL = re.compile(r"https://cdn\.example\.com/catalogue/[\w./-]+")
PICKUP_URL = re.compile(r"https://cdn\.example\.com/pickups/[\w./-]+")
INVALID_ARGUMENT = 3
GRPCURL_STATUS_OFFSET = 64  # grpcurl exits with 64 + the gRPC status code

Run = Callable[..., Coroutine[Any, Any, subprocess.CompletedProcess[str]]]

KINDS = {"list", "list-methods", "describe", "inspect", "inspect-invalid", "stream", "health"}


@dataclass(frozen=True)
class Recipe:
    script: str

    def argv(self) -> list[str]:
        return shlex.split(self.script, comments=True)

    @property
    def request(self) -> dict[str, Any]:
        argv = self.argv()
        return dict(json.loads(argv[argv.index("-d") + 1])) if "-d" in argv else {}

    @property
    def kind(self) -> str:
        argv = self.argv()
        assert argv[0] == "grpcurl", f"a recipe is one grpcurl command: {self.script}"
        assert DOC_ADDRESS in argv, f"recipes address {DOC_ADDRESS}: {self.script}"
        assert "-plaintext" in argv
        rest = argv[argv.index(DOC_ADDRESS) + 1 :]
        if rest == ["list"]:
            return "list"
        if len(rest) == 2 and rest[0] == "list":
            return "list-methods"
        if len(rest) == 2 and rest[0] == "describe":
            return "describe"
        if rest == ["grpc.health.v1.Health/Check"]:
            return "health"
        if rest == ["rpi.inspection.v1.InspectionService/InspectStream"]:
            return "stream"
        if rest == ["rpi.inspection.v1.InspectionService/Inspect"]:
            return "inspect" if self.request.get("shipping_id") else "inspect-invalid"
        raise AssertionError(f"recipe of unknown kind; teach this test about it: {self.script}")

    def live(self, address: str, reference_url: str, pickup_url: str) -> str:
        script = self.script.replace(DOC_ADDRESS, address)
        script = REFERENCE_URL.sub(reference_url, script)
        script = PICKUP_URL.sub(pickup_url, script)
        assert "example.com" not in script, f"unsubstituted example URL in: {script}"
        return script


RunRecipe = Callable[[Recipe], Coroutine[Any, Any, subprocess.CompletedProcess[str]]]


def readme_recipes() -> list[Recipe]:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "README.md lost its grpcurl-recipes markers"
    section = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    return [Recipe(block.strip()) for block in blocks]


def recipe(kind: str) -> Recipe:
    found = [r for r in readme_recipes() if r.kind == kind]
    assert len(found) == 1, f"README.md should have exactly one {kind} recipe, has {len(found)}"
    return found[0]


def json_messages(stdout: str) -> list[dict[str, Any]]:
    """grpcurl prints one JSON document per response message, back to back."""
    decoder = json.JSONDecoder()
    messages: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(stdout) and stdout[position].isspace():
            position += 1
        if position == len(stdout):
            return messages
        message, position = decoder.raw_decode(stdout, position)
        messages.append(message)


@pytest.fixture(scope="module")
def run_recipe(
    run: Run,
    grpcurl: Path,
    inference_app: InferenceApp,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunRecipe:
    """Runs a recipe as a user would paste it into bash, with the tested grpcurl first on PATH,
    from an empty directory (no proto files anywhere near)."""
    workdir = tmp_path_factory.mktemp("grpcurl")
    env = dict(os.environ)
    env["PATH"] = f"{grpcurl.parent}{os.pathsep}{env.get('PATH', '')}"

    async def go(r: Recipe) -> subprocess.CompletedProcess[str]:
        script = r.live(
            f"127.0.0.1:{inference_app.port}",
            image_server.url("ref.jpg"),
            image_server.url("pickup.jpg"),
        )
        return await run("bash", "-c", f"set -e\n{script}", env=env, cwd=workdir)

    return go


@pytest_asyncio.fixture(scope="module")
async def inspections(
    run_recipe: RunRecipe,
) -> AsyncIterator[dict[str, asyncio.Task[subprocess.CompletedProcess[str]]]]:
    """Starts the unary and the streaming recipe together, so the server batches them into one
    generation; each test awaits its own."""
    tasks = {kind: asyncio.create_task(run_recipe(recipe(kind))) for kind in ("inspect", "stream")}
    yield tasks
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


def test_readme_recipes_cover_every_kind_and_need_no_proto_files() -> None:
    recipes = readme_recipes()
    kinds = [r.kind for r in recipes]
    assert sorted(kinds) == sorted(KINDS), kinds
    for r in recipes:
        argv = r.argv()
        assert not {"-proto", "-protoset", "-import-path"} & set(argv), r.script


async def test_list_shows_the_inspection_api_health_and_reflection(run_recipe: RunRecipe) -> None:
    result = await run_recipe(recipe("list"))
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"rpi.inspection.v1.InspectionService", "grpc.health.v1.Health"} <= services
    assert any(s.startswith("grpc.reflection.") for s in services), services


async def test_list_methods(run_recipe: RunRecipe) -> None:
    result = await run_recipe(recipe("list-methods"))
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "rpi.inspection.v1.InspectionService.Inspect",
        "rpi.inspection.v1.InspectionService.InspectStream",
    }


async def test_describe_request_message(run_recipe: RunRecipe) -> None:
    result = await run_recipe(recipe("describe"))
    assert result.returncode == 0, result.stderr
    assert "rpi.inspection.v1.InspectRequest is a message:" in result.stdout
    # Reflection carries the AIP-203 field behaviours with the fields.
    required = "[(.google.api.field_behavior) = REQUIRED];"
    optional = "[(.google.api.field_behavior) = OPTIONAL];"
    assert f"string shipping_id = 3 {required}" in result.stdout
    assert f"repeated .rpi.inspection.v1.Image reference_images = 6 {required}" in result.stdout
    assert f"repeated .rpi.inspection.v1.Question questions = 8 {optional}" in result.stdout


async def test_unary_inspect_returns_a_decision(
    inspections: dict[str, asyncio.Task[subprocess.CompletedProcess[str]]],
) -> None:
    r = recipe("inspect")
    result = await inspections["inspect"]
    assert result.returncode == 0, result.stderr
    (reply,) = json_messages(result.stdout)
    inspection = reply["inspection"]
    assert inspection["decision"] in {"DECISION_PICK", "DECISION_NOT_PICK"}
    assert inspection["shipping_id"] == r.request["shipping_id"]
    assert [a["label"] for a in inspection["answers"]] == [
        q["label"] for q in r.request["questions"]
    ]
    assert inspection["model"]["untrained"] is True


async def test_streamed_inspect_prints_events_then_the_inspection(
    inspections: dict[str, asyncio.Task[subprocess.CompletedProcess[str]]],
) -> None:
    result = await inspections["stream"]
    assert result.returncode == 0, result.stderr
    messages = json_messages(result.stdout)
    assert len(messages) >= 3
    assert "accepted" in messages[0]
    assert "inspection" in messages[-1]
    assert all("inspection" not in m for m in messages[:-1])
    assert messages[-1]["inspection"]["decision"] in {"DECISION_PICK", "DECISION_NOT_PICK"}
    assert messages[-1]["inspection"]["inspection_id"] == messages[0]["accepted"]["inspection_id"]


async def test_health_check_is_serving(run_recipe: RunRecipe) -> None:
    result = await run_recipe(recipe("health"))
    assert result.returncode == 0, result.stderr
    assert json_messages(result.stdout) == [{"status": "SERVING"}]


async def test_invalid_input_returns_invalid_argument(run_recipe: RunRecipe) -> None:
    result = await run_recipe(recipe("inspect-invalid"))
    assert result.returncode == GRPCURL_STATUS_OFFSET + INVALID_ARGUMENT, result.stderr
    assert "Code: InvalidArgument" in result.stderr
    # Reflection also resolves the google.rpc detail types, so grpcurl prints them.
    assert '"reason":"INVALID_ARGUMENT"' in result.stderr.replace(" ", "")
    assert '"field":"shipping_id"' in result.stderr.replace(" ", "")
