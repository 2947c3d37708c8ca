"""Configuration: one file, env overrides, relative paths, clear errors."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from core.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_matches_the_defaults(tmp_path: Path) -> None:
    shipped = load_settings(ROOT / "config.toml", environ={})
    (tmp_path / "empty.toml").write_text("")
    defaults = load_settings(tmp_path / "empty.toml", environ={})
    # Same values except for the paths, which resolve against each file's folder.
    assert shipped.flush == defaults.flush and shipped.ingest == defaults.ingest
    assert shipped.query == defaults.query and shipped.retention == defaults.retention
    assert shipped.sink.connect_timeout == defaults.sink.connect_timeout
    assert msgspec.structs.replace(shipped.service, metrics_dir="") == msgspec.structs.replace(
        defaults.service, metrics_dir="")
    assert msgspec.structs.replace(shipped.spool, path="") == msgspec.structs.replace(defaults.spool, path="")
    assert shipped.service.metrics_dir == str(ROOT / "data" / "metrics")
    assert shipped.spool.path == str(ROOT / "data" / "spool.db")
    assert shipped.sink.url == f"sqlite:///{ROOT / 'data' / 'store.db'}"


def test_env_overrides_are_typed(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[flush]\nbatch_rows = 10\n")
    env = {"PS_FLUSH_BATCH_ROWS": "500", "PS_FLUSH_MAX_DELAY": "0.25", "PS_SPOOL_SYNC": "normal",
           "PS_SINK_URL": "mysql://u:p@db:3306/x"}
    settings = load_settings(tmp_path / "c.toml", environ=env)
    assert settings.flush.batch_rows == 500 and settings.flush.max_delay == 0.25
    assert settings.spool.sync == "normal" and settings.sink.url == "mysql://u:p@db:3306/x"


def test_ps_config_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text('[spool]\npath = "s/spool.db"\n')
    settings = load_settings(environ={"PS_CONFIG": str(tmp_path / "other.toml")})
    assert settings.spool.path == str(tmp_path / "s" / "spool.db")
    assert settings.source == str(tmp_path / "other.toml")


@pytest.mark.parametrize(("text", "env", "needle"), [
    ("[flush]\nbatch_rows = 0\n", {}, "batch_rows"),
    ("[spool]\nsync = \"sometimes\"\n", {}, "sync"),
    ("[flush]\nbatchrows = 5\n", {}, "batchrows"),
    ("", {"PS_INGEST_PORT": "eighty"}, "port"),
    ("", {"PS_SINK_URL": "postgres://x/y"}, "sink.url"),
    ("", {"PS_SINK_URL": "mysql://root@host:3306"}, "database"),
    ("[flush\n", {}, "TOML"),
])
def test_invalid_values_name_the_key(tmp_path: Path, text: str, env: dict, needle: str) -> None:
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings(tmp_path / "c.toml", environ=env)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})
