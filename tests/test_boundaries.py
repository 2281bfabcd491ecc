from pathlib import Path

from tests.check_boundaries import check


def test_package_boundaries_hold() -> None:
    assert check() == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    (tmp_path / "logger" / "mbus").mkdir(parents=True)
    (tmp_path / "logger" / "store").mkdir(parents=True)
    (tmp_path / "logger" / "mbus" / "x.py").write_text("import typing\nimport logger.bus\n")
    (tmp_path / "logger" / "store" / "y.py").write_text("import serial\n")
    problems = check(tmp_path)
    assert any("MicroPython-clean (typing)" in p for p in problems)
    assert any("imports logger.bus" in p for p in problems)
    assert any("logger/store must not import serial" in p for p in problems)
