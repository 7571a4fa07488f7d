"""The README and docs/configuration.md stay true: their generated configuration blocks match
the settings classes, every setting is documented in its tier, the README stays short, its
first lines give the two commands and its links lead somewhere."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from inference_svc.settings import InferenceSettings
from persistence_svc.settings import PersistenceSettings
from svc_common.settings_fields import group_of, is_advanced
from tools import config_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
SETTINGS: tuple[type[BaseSettings], ...] = (InferenceSettings, PersistenceSettings)


def test_configuration_documents_are_current() -> None:
    assert config_table.stale() == [], "run `python -m tools.config_table --write`"
    assert config_table.main(["--check"]) == 0


def test_check_finds_a_stale_document_and_write_repairs_it(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(README, tmp_path / "README.md")
    shutil.copy(CONFIGURATION, tmp_path / "docs" / "configuration.md")
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("`GRPC_LISTEN` (`0.0.0.0:50051`)", "`X` (`1`)"))
    table = tmp_path / "docs" / "configuration.md"
    table.write_text(table.read_text().replace("| `MAX_BATCH_SIZE` | `16` |", "| `X` | `1` |"))
    problems = config_table.stale(tmp_path)
    assert len(problems) == 2, problems
    assert config_table.write(tmp_path) == []
    assert config_table.stale(tmp_path) == []
    assert readme.read_text() == README.read_text()


def test_check_reports_missing_markers(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# no markers\n")
    (tmp_path / "docs" / "configuration.md").write_text("# none here either\n")
    assert len(config_table.stale(tmp_path)) == 2
    assert len(config_table.write(tmp_path)) == 2


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.__name__)
def test_every_setting_has_a_group_a_description_and_a_row(settings: type[BaseSettings]) -> None:
    table = CONFIGURATION.read_text()
    readme = README.read_text()
    for name, field in settings.model_fields.items():
        group_of(field)  # raises for a field not declared with setting(...)
        assert field.description, f"{settings.__name__}.{name} has no description"
        assert f"| `{name.upper()}` |" in table, name
        if not is_advanced(field):
            assert f"`{name.upper()}` (" in readme, name


def test_advanced_settings_are_kept_out_of_the_readme() -> None:
    summary = config_table.summary()
    for name, field in InferenceSettings.model_fields.items():
        if is_advanced(field):
            assert f"`{name.upper()}` (" not in summary, name
    advanced = CONFIGURATION.read_text().split("### inference_svc: advanced", 1)[1]
    assert "| `PIXEL_BUFFER_MB` |" in advanced
    assert "| `MODEL_PATH` |" not in advanced.split("## persistence_svc", 1)[0]


def test_the_inference_service_has_at_most_35_operator_facing_settings() -> None:
    assert len(config_table.operator_facing(InferenceSettings)) <= 35


def test_first_lines_are_the_two_commands() -> None:
    head = README.read_text().splitlines()[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize(
    "document",
    [
        "README.md",
        "BENCHMARKS.md",
        "docs/architecture.md",
        "docs/configuration.md",
        "docs/operations.md",
        "docs/preprocessing.md",
    ],
)
def test_relative_links_lead_to_files_that_exist(document: str) -> None:
    path = ROOT / document
    for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{document}: broken link {target}"
