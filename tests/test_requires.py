"""``tests.support.requires``: a missing prerequisite skips on a workstation, fails in CI."""

from __future__ import annotations

import pytest

from tests.support.requires import in_ci, require


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE"])
def test_ci_set_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="prerequisite missing in CI: no tool"):
        require(False, "no tool")


@pytest.mark.parametrize("value", [None, "", "false", "0", "no"])
def test_ci_unset_skips(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="no tool"):
        require(False, "no tool")


def test_present_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(True, "never shown")
