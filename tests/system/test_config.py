"""GET /api/v1/system/config: every section of the effective configuration,
secrets replaced by '***'; and a password in sink.url never shows: not in the
service's log, not in /health, /metrics or the config, not in any error body."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.redact import REDACTED, redact, redact_url, scrub_text
from core.settings import ConfigError, Settings, load_settings
from testkit.service import MYSQL_HOST, MYSQL_PORT, free_port, session, wait_for

SECRET = "s3cret-pw"
CONFIG = "/api/v1/system/config"


@pytest.mark.parametrize("url, shown", [
    ("mysql://user:pass@host:3306/db", "mysql://user:***@host:3306/db"),
    ("mysql://root@127.0.0.1:3306/db", "mysql://root@127.0.0.1:3306/db"),
    ("mysql://u:p%40ss%3Aw@h/db", "mysql://u:***@h/db"),
    ("mysql://:only-password@h/db", "mysql://:***@h/db"),
    ("mysql://root:s3cret/pw@h:3306/db", "mysql://root:***@h:3306/db"),
    ("mysql://root:s3cret#pw@h:3306/db", "mysql://root:***@h:3306/db"),
    ("sqlite:////var/lib/store.db", "sqlite:////var/lib/store.db"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact({"sink": {"url": url}}) == {"sink": {"url": shown}}


def test_redact_keys_named_like_secrets_and_urls_in_text() -> None:
    raw = {"a": {"password": "x", "db_passwd": 1, "api_token": ["t"], "client_secret": None, "API_KEY": "k",
                 "timeout": 5, "nested": [{"refresh_token": "r", "name": "n"}]}}
    assert redact(raw) == {"a": {"password": REDACTED, "db_passwd": REDACTED, "api_token": REDACTED,
                                 "client_secret": REDACTED, "API_KEY": REDACTED, "timeout": 5,
                                 "nested": [{"refresh_token": REDACTED, "name": "n"}]}}
    text = "cannot connect to mysql://root:p@ss:w/rd@db.local:3306/x (refused); see http://host/doc"
    assert scrub_text(text) == "cannot connect to mysql://root:***@db.local:3306/x (refused); see http://host/doc"


def _closed_port() -> int:
    return free_port()  # bound and released at once: nothing listens there


@pytest.mark.parametrize("database", ["closed-port", "wrong-password"])
def test_a_sink_password_never_shows(service_factory, database: str) -> None:
    port = _closed_port() if database == "closed-port" else MYSQL_PORT
    url = f"mysql://root:{SECRET}@{MYSQL_HOST}:{port}/ps_never_created"
    service = service_factory(url, flush_timeout=1.0, shutdown_grace=0.5)
    q = f"http://127.0.0.1:{service.query_port}"

    # The database refuses: the flusher and the query process say so, and keep retrying.
    health = wait_for(lambda: (h := service.http.get("/health").json())["flusher"]["sink_error"] and h, 60,
                      "the flusher to report the database error")
    assert health["database"] == "unhealthy" and health["status"] == "degraded"
    wait_for(lambda: "cannot prepare the database" in service.log.read_text(), 15, "the query process's warning")

    answers = [service.http.get("/health"), service.http.get("/metrics"), service.http.get("/openapi.json")]
    for base in ("", q):
        config = service.http.get(f"{base}{CONFIG}")
        assert config.status_code == 200, config.text
        assert config.json()["sink"]["url"] == f"mysql://root:***@{MYSQL_HOST}:{port}/ps_never_created"
        answers.append(config)
    assert service.post_sessions([session("s-1")]).status_code == 202
    answers += [
        service.flush(),  # 503: the database cannot be reached; its error text is in the detail
        service.http.get("/api/v1/translation/sessions"),  # 503 from the reader
        service.http.get("/api/v1/translation/sessions/s-1"),
        service.http.get("/api/v1/translation/stats"),
        service.http.post("/api/v1/translation/recovery/restore/s-1"),
        service.http.request("DELETE", "/api/v1/translation/sessions/s-1"),  # 202 queued behind the write
        service.http.get("/api/v1/translation/sessions", params={"page": 0}),  # 422
        service.http.get("/nowhere"),  # 404
        service.http.post("/api/v1/translation/tasks/batch", content=b"{", headers={"content-type": "application/json"}),
        service.http.get(f"{q}/api/v1/system/dead-letters"),
    ]
    statuses = [a.status_code for a in answers]
    assert statuses.count(503) >= 4 and 404 in statuses and 422 in statuses, statuses
    for answer in answers:
        assert SECRET not in answer.text, f"{answer.request.method} {answer.request.url} -> {answer.text}"
    service.stop()
    log = service.log.read_text()
    assert "mysql error" in log  # the database's error text is logged ...
    assert SECRET not in log  # ... and the password is not


def test_config_has_every_section(service_factory, tmp_path: Path) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}")
    config = service.http.get(CONFIG).json()
    assert set(config) == set(Settings.__struct_fields__)
    assert config["sink"]["url"] == f"sqlite:///{tmp_path / 'store.db'}"
    assert config["ingest"]["port"] == service.ingest_port and config["query"]["port"] == service.query_port
    assert config["spool"]["path"] == str(service.spool_path)
    assert config["source"] == str(service.config)


@pytest.mark.parametrize("password", ["s3cret/pw", "s3cret#pw", "s3cret?pw"])
def test_an_unencoded_password_is_refused_at_start_without_showing_it(tmp_path: Path, password: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[sink]\nurl = "mysql://root:{password}@127.0.0.1:3306/db"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert "percent-encode" in str(caught.value)
    assert "s3cret" not in str(caught.value) and caught.value.__cause__ is None


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_spool_sync_is_in_force_in_every_ingest_writer(service_factory, tmp_path: Path, sync: str) -> None:
    """spool.sync = "full" promises that an acknowledged batch survives power
    loss: each ingest worker's spool connection must really run with SQLite's
    synchronous=FULL (and WAL), as SQLite itself reports to that connection."""
    svc = service_factory(f"sqlite:///{tmp_path / 'store.db'}", sync=sync, workers=2)
    assert svc.post_sessions([session("s-1")]).status_code == 202
    expected = f"spool writer open: journal_mode=wal synchronous={sync}"

    def reporting_pids() -> set[int]:
        lines = [line for line in svc.log.read_text().splitlines() if expected in line]
        return {int(line.split('"pid":')[1].split(",")[0]) for line in lines}

    reported = wait_for(lambda: len(pids := reporting_pids()) >= 2 and pids, 10,
                        "both ingest workers to report their spool connection")
    assert reported <= set(svc.children()["ingest"]), reported
    assert "synchronous=" + ("normal" if sync == "full" else "full") not in svc.log.read_text()


def test_file_store_secrets_never_show(service_factory, tmp_path: Path) -> None:
    files = ('[files]\nurl = "s3://bucket/p?endpoint=http://127.0.0.1:1"\naccess_key = "AKIDSHOWN"\n'
             'secret_key = "s3-secret-value"\nsigning_secret = "hmac-secret-value"\n')
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}", extra_toml=files)
    answer = service.http.get(CONFIG)
    shown = answer.json()["files"]
    assert shown["secret_key"] == REDACTED and shown["signing_secret"] == REDACTED
    assert shown["access_key"] == "AKIDSHOWN"  # an identifier, like a user name
    assert "s3-secret-value" not in answer.text and "hmac-secret-value" not in answer.text
    # Nothing answers on that endpoint: /health reports the store failing, without the secret.
    store = wait_for(lambda: service.http.get("/health").json().get("blob_store"), 30, "a store check")
    assert store["store"] == "s3" and store["status"] == "unhealthy" and store["error"]
    health = service.http.get("/health")
    assert health.json()["status"] == "degraded" and "s3-secret-value" not in health.text
    assert "s3-secret-value" not in service.log.read_text()
