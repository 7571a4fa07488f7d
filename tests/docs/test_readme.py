"""The README stays true: its configuration tables match the settings classes, and its first
lines give the two commands."""

from __future__ import annotations

from pathlib import Path

from inference_svc.settings import InferenceSettings
from persistence_svc.settings import PersistenceSettings
from tools import config_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_tables_are_current() -> None:
    text = README.read_text()
    assert config_table.render() in text, (
        "README configuration tables are stale: "
        "run `python -m tools.config_table --write README.md`"
    )


def test_every_setting_is_documented_with_a_description() -> None:
    text = README.read_text()
    for settings in (InferenceSettings, PersistenceSettings):
        for name, field in settings.model_fields.items():
            assert f"`{name.upper()}`" in text
            assert field.description, f"{settings.__name__}.{name} has no description"


def test_first_lines_are_the_two_commands() -> None:
    head = README.read_text().splitlines()[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)
