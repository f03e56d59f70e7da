"""The `recsys` executable: bad input is one clear message and exit code 1, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_recsys(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from recsys.cli import main; sys.argv = ['recsys', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_bad_input_is_a_message_naming_file_and_columns(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id\nu1,i1\n")
    result = run_recsys("import", "impressions", str(log), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "log.csv" in result.stderr and "event_timestamp" in result.stderr
    assert "click-only" in result.stderr


def test_verbose_shows_the_traceback(home: Path, tmp_path: Path) -> None:
    result = run_recsys("-v", "import", "impressions", str(tmp_path / "missing.csv"), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "file not found" in result.stderr


def test_imports_quarantine_setting_decides_without_a_flag(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,description,category,price\na,A,d,c,1\nb,B,d,c,no\n")
    monkeypatch.setenv("RECSYS_IMPORTS__QUARANTINE", "false")
    strict = run_recsys("import", "items", str(items), cwd=tmp_path)
    assert strict.returncode == 1 and "price" in strict.stderr
    refused = run_recsys("import", "items", str(items), "--quarantine", cwd=tmp_path)  # 1 of 2 rows bad
    assert refused.returncode == 1 and "max_bad_share" in refused.stderr and "Traceback" not in refused.stderr
    lenient = run_recsys("import", "items", str(items), "--quarantine", "--allow-partial", cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stderr
