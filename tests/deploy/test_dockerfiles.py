"""Structural lint of the container build files (no Docker engine is needed or used).

Checks what a reviewer would: base images pinned to exact versions (never `latest`), the
inference image on a CUDA base with a pinned torch build, Python 3.11 as the project requires,
a non-root numeric user that matches the manifests, the repository installed with
`pip install .` (the inference image with its `inference` extra, the persistence image without
it and without torch), the inference image's smoke step run from the installed wheel,
exec-form entrypoints (so SIGTERM reaches Python and starts the drain), and
exposed ports equal to the services' default settings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from inference_svc.settings import InferenceSettings
from persistence_svc.settings import PersistenceSettings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
BASE = REPO / "deploy" / "k8s" / "base"
SERVICES = ("inference", "persistence")
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile, line continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 4 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=parts[0], name=name))
            continue
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        assert stages, f"{path.name}: {keyword} before the first FROM"
        stages[-1].instructions.append((keyword, rest))
    return args, stages


def dockerfile(service: str) -> Path:
    return DOCKER / f"{service}.Dockerfile"


def runs(stages: list[Stage]) -> list[str]:
    return [rest for stage in stages for kw, rest in stage.instructions if kw == "RUN"]


def last(stage: Stage, keyword: str) -> str:
    values = [rest for kw, rest in stage.instructions if kw == keyword]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


@pytest.mark.parametrize("service", SERVICES)
def test_base_images_are_pinned_to_exact_versions(service: str) -> None:
    _, stages = parse(dockerfile(service))
    names = {s.name for s in stages if s.name}
    external = [s.image for s in stages if s.image not in names]
    assert external
    for image in external:
        assert "$" not in image, f"{image}: resolve base images in the FROM line itself"
        assert "latest" not in image
        reference = image.rsplit("/", 1)[-1]
        if "@sha256:" in reference:
            continue
        assert ":" in reference, f"{image} has no tag"
        assert EXACT_VERSION.search(reference.split(":", 1)[1]), f"{image}: not an exact tag"
    assert "latest" not in dockerfile(service).read_text()


def test_inference_image_runs_on_cuda_with_a_pinned_torch_build() -> None:
    args, stages = parse(dockerfile("inference"))
    assert stages[-1].image.startswith("nvidia/cuda:")
    cuda_version = re.match(r"nvidia/cuda:(\d+)\.(\d+)", stages[-1].image)
    assert cuda_version
    assert "runtime" in stages[-1].image or "base" in stages[-1].image, "no compilers at run time"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    # The torch wheel's CUDA line matches the base image's (cu130 <-> 13.0).
    index = args["TORCH_INDEX_URL"]
    assert index.endswith(f"/cu{cuda_version.group(1)}{cuda_version.group(2)}")
    assert any('"torch==${TORCH_VERSION}"' in r and "${TORCH_INDEX_URL}" in r for r in runs(stages))


def test_persistence_image_is_python_311_slim_without_torch() -> None:
    args, stages = parse(dockerfile("persistence"))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stages[-1].image)
    assert "TORCH_VERSION" not in args
    assert not any("torch==" in r or "download.pytorch.org" in r for r in runs(stages))
    # The build itself fails if torch or transformers got installed after all.
    assert any("find_spec" in r and "'torch'" in r and "sys.exit(" in r for r in runs(stages))


def test_both_images_use_python_311_as_the_project_requires() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11,<3.12"' in pyproject
    _, inference = parse(dockerfile("inference"))
    assert any(re.search(r"uv python install 3\.11\.\d+\b", r) for r in runs(inference))


@pytest.mark.parametrize(
    ("service", "target"), [("inference", '".[inference]"'), ("persistence", ".")]
)
def test_repository_is_installed_with_pip_install_dot(service: str, target: str) -> None:
    _, stages = parse(dockerfile(service))
    installs = [
        r for r in runs(stages) if re.search(rf"pip install [^&]*\s{re.escape(target)}(\s|$)", r)
    ]
    assert installs
    assert all("--constraint deploy/docker/constraints.txt" in r for r in installs)
    assert not any(re.search(r"\s-e\s", r) for r in installs), "no editable installs in images"


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_runs_as_the_non_root_uid_of_the_manifests(service: str) -> None:
    _, stages = parse(dockerfile(service))
    user = last(stages[-1], "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric uid, so Kubernetes' runAsNonRoot can verify it"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    manifest = yaml.safe_load((BASE / f"{service}-deployment.yaml").read_text())
    pod_security = manifest["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_is_exec_form_python_module(service: str) -> None:
    _, stages = parse(dockerfile(service))
    entrypoint = json.loads(last(stages[-1], "ENTRYPOINT"))
    assert entrypoint == ["python", "-m", f"{service}_svc"]


@pytest.mark.parametrize(
    ("service", "settings_cls"),
    [("inference", InferenceSettings), ("persistence", PersistenceSettings)],
)
def test_exposed_ports_are_the_default_settings(
    service: str, settings_cls: type[InferenceSettings | PersistenceSettings]
) -> None:
    _, stages = parse(dockerfile(service))
    exposed = {int(p) for p in last(stages[-1], "EXPOSE").split()}
    # Field defaults, not this process's environment.
    grpc_listen: str = settings_cls.model_fields["grpc_listen"].default
    metrics_port: int = settings_cls.model_fields["metrics_port"].default
    assert exposed == {int(grpc_listen.rsplit(":", 1)[1]), metrics_port}


@pytest.mark.parametrize("service", SERVICES)
def test_build_context_leaves_out_local_state(service: str) -> None:
    ignore_file = DOCKER / f"{service}.Dockerfile.dockerignore"
    entries = {
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", "**/__pycache__"} <= entries


def test_constraints_pin_exact_versions_and_leave_torch_to_the_dockerfiles() -> None:
    lines = [
        line.strip()
        for line in (DOCKER / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), line
    names = {line.split("==")[0].lower() for line in lines}
    assert "torch" not in names
    assert {"grpcio", "transformers", "asyncpg"} <= names


def test_inference_image_smoke_runs_the_installed_wheel_in_the_shipped_stage() -> None:
    _, stages = parse(dockerfile("inference"))
    final = stages[-1]
    keywords = [kw for kw, _ in final.instructions]
    smoke = [
        i
        for i, (kw, rest) in enumerate(final.instructions)
        if kw == "RUN" and "tools.image_smoke" in rest
    ]
    assert len(smoke) == 1, "one smoke step, in the final stage"
    index = smoke[0]
    # After the venv is in place and as the image's own user.
    copied = [
        i for i, (kw, rest) in enumerate(final.instructions) if kw == "COPY" and "/opt/venv" in rest
    ]
    assert copied and copied[0] < index
    assert "USER" in keywords[:index]
    # Not from a source tree: the final stage copies none, and its working directory holds none.
    assert not any(kw == "COPY" and rest.split()[0] == "." for kw, rest in final.instructions)
    workdir = [rest for kw, rest in final.instructions[:index] if kw == "WORKDIR"]
    assert workdir and workdir[-1] != "/src"
