"""Settings: TOML file, OTF_* environment overrides, and refusals of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from astro_otf.config import Settings
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("OTF_"):
            monkeypatch.delenv(key)


def test_defaults_without_a_file() -> None:
    s = Settings()
    assert s.executor == "local" and s.auth_mode == "anonymous"
    assert s.effective_database_url == f"sqlite:///{s.data_dir / 'otf.sqlite3'}"
    assert s.data_dir.is_absolute()


def test_toml_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "otf.toml"
    cfg.write_text(
        'data_dir = "/srv/otf"\nworkers = 6\nauth_mode = "token"\n[tokens]\n"secret-a" = "alice"\n'
    )
    monkeypatch.setenv("OTF_CONFIG", str(cfg))
    s = Settings()
    tokens = {k.get_secret_value(): v for k, v in s.tokens.items()}
    assert (s.data_dir, s.workers, tokens) == (Path("/srv/otf"), 6, {"secret-a": "alice"})
    monkeypatch.setenv("OTF_WORKERS", "3")
    monkeypatch.setenv("OTF_DATABASE_URL", "postgresql://otf:pw-b@db/otf")
    s = Settings()
    assert s.workers == 3 and s.effective_database_url == "postgresql://otf:pw-b@db/otf"
    assert s.redacted()["tokens"] == "<1 tokens>"


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bearer tokens and the database URL (its password) are SecretStr: a repr, a dump for
    a log or an error message shows neither."""
    monkeypatch.setenv("OTF_TOKENS", '{"secret-a": "alice"}')
    monkeypatch.setenv("OTF_DATABASE_URL", "postgresql://otf:pw-b@db/otf")
    s = Settings()
    for shown in (repr(s), str(s), str(s.model_dump(mode="json")), str(s.redacted())):
        assert "secret-a" not in shown and "pw-b" not in shown
    assert "alice" in repr(s)  # the owner is no secret


def test_shipped_sample_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTF_CONFIG", str(REPO_ROOT / "otf.toml"))
    s = Settings()
    assert s.workers == 2 and s.max_upload_bytes == 2 * 1024**3


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTF_CONFIG", "/nonexistent/otf.toml")
    with pytest.raises(FileNotFoundError, match="OTF_CONFIG"):
        Settings()


@pytest.mark.parametrize(
    ("key", "value"),
    [("OTF_WORKERS", "0"), ("OTF_EXECUTOR", "kubernetes"), ("OTF_AUTH_MODE", "open")],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_unknown_keys_in_the_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "otf.toml"
    cfg.write_text("wrokers = 4\n")
    monkeypatch.setenv("OTF_CONFIG", str(cfg))
    with pytest.raises(ValidationError, match="wrokers"):
        Settings()
