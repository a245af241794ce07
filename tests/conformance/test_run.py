"""Unit tests for run.py's summary collection and comparison (no suite run needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


def write_checks(raw: Path, dirname: str, checks: list[dict]) -> None:
    (raw / dirname).mkdir(parents=True)
    (raw / dirname / "checks.json").write_text(json.dumps(checks))


def test_collect_flattens_and_disambiguates(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_checks(
        raw,
        "server-tools-list-2026-11-24T04-30-48-226Z",
        [{"id": "tools-list", "status": "SUCCESS"}, {"id": "wire-schema-valid", "status": "SUCCESS"}],
    )
    write_checks(
        raw,
        "server-server-stateless-2026-11-24T04-30-49-001Z",
        [{"id": "x", "status": "SUCCESS"}, {"id": "x", "status": "FAILURE"}, {"id": "x", "status": "SUCCESS"}],
    )
    assert run.collect(raw) == {
        "server-stateless/x": "SUCCESS",
        "server-stateless/x#2": "FAILURE",
        "server-stateless/x#3": "SUCCESS",
        "tools-list/tools-list": "SUCCESS",
        "tools-list/wire-schema-valid": "SUCCESS",
    }


def test_compare_exit_codes(tmp_path: Path, capsys) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"s/one": "SUCCESS", "s/two": "FAILURE"}))
    b.write_text(json.dumps({"s/one": "SUCCESS", "s/two": "FAILURE"}))
    assert run.main(["compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip().endswith("2 passed, 0 failed")

    b.write_text(json.dumps({"s/one": "FAILURE", "s/three": "SUCCESS"}))
    assert run.main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "s/one" in out and "s/two" in out and "s/three" in out and "MISSING" in out
    assert out.strip().endswith("0 passed, 3 failed")


def test_compare_ignores_one_sided_info_unless_strict(tmp_path: Path, capsys) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"s/ok": "SUCCESS", "s/event": "INFO", "s/event#2": "INFO"}))
    b.write_text(json.dumps({"s/ok": "SUCCESS", "s/event": "INFO"}))
    assert run.main(["compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip().endswith("2 passed, 0 failed")
    assert run.main(["compare", "--strict", str(a), str(b)]) == 1
