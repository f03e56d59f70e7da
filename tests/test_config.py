"""Config precedence: defaults < recsys.toml < RECSYS_* env < flags."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from recsys.config import load_settings


def test_defaults(home: Path) -> None:
    s = load_settings()
    assert s.home == home  # RECSYS_HOME from the fixture
    assert s.clip.precision == "float32"
    assert s.features.online_store == "sqlite"


def test_file_env_flag_precedence(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "recsys.toml").write_text(
        'seed = 7\n[clip]\nprecision = "bfloat16"\nbatch_size = 16\n[retrieval]\ndim = 32\n'
    )
    s = load_settings()
    assert (s.seed, s.clip.precision, s.clip.batch_size, s.retrieval.dim) == (7, "bfloat16", 16, 32)

    monkeypatch.setenv("RECSYS_SEED", "8")
    monkeypatch.setenv("RECSYS_CLIP__BATCH_SIZE", "32")
    s = load_settings()
    assert (s.seed, s.clip.batch_size, s.clip.precision) == (8, 32, "bfloat16")

    s = load_settings(**{"seed": 9, "clip.batch_size": 64})
    assert (s.seed, s.clip.batch_size) == (9, 64)
    assert s.clip.precision == "bfloat16"  # a flag for one key keeps the others
    assert s.retrieval.dim == 32


def test_unknown_key_is_named(home: Path, tmp_path: Path) -> None:
    (tmp_path / "recsys.toml").write_text("[clip]\nprecison = 'bfloat16'\n")
    with pytest.raises(ValidationError, match="precison"):
        load_settings()


def test_bad_value_is_named(home: Path) -> None:
    with pytest.raises(ValidationError, match="precision"):
        load_settings(**{"clip.precision": "float16"})
