"""`setting(...)` keeps a field's pydantic behaviour (default, factory, bounds) and records
its group and tier; a field declared without it has no tier and the documents refuse it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from svc_common.settings_fields import GROUPS, group_of, is_advanced, setting


class Example(BaseModel):
    port: int = setting(9000, "A port.", group="server", ge=1, le=65535)
    hosts: list[str] = setting(
        description="Hosts.", group="image intake", advanced=True, default_factory=list
    )
    plain: int = Field(3, description="Declared the old way.")


def test_defaults_factories_and_bounds_behave_as_with_field() -> None:
    first, second = Example(), Example()
    assert first.port == 9000
    assert first.hosts == [] and first.hosts is not second.hosts
    with pytest.raises(ValidationError):
        Example(port=0)
    with pytest.raises(ValidationError):
        Example(port=70000)


def test_group_and_tier_are_recorded() -> None:
    fields = Example.model_fields
    assert group_of(fields["port"]) == "server" and not is_advanced(fields["port"])
    assert group_of(fields["hosts"]) == "image intake" and is_advanced(fields["hosts"])
    assert fields["port"].description == "A port."


def test_a_field_without_a_tier_is_refused() -> None:
    with pytest.raises(ValueError, match="setting"):
        group_of(Example.model_fields["plain"])
    with pytest.raises(ValueError, match="setting"):
        is_advanced(Example.model_fields["plain"])


def test_a_setting_needs_a_description() -> None:
    with pytest.raises(ValueError, match="description"):
        setting(1, "", group="server")


def test_the_documents_order_lists_every_group_once() -> None:
    assert len(GROUPS) == len(set(GROUPS))
    assert GROUPS[0] == "server"
