"""A full spool refuses new batches with 503 + Retry-After, keeps everything
it acknowledged, and accepts again once the flusher has drained."""

from __future__ import annotations

from testkit.service import session, sink_rows, task


def test_full_spool_answers_503_and_recovers(service_factory, tmp_path) -> None:
    svc = service_factory(f"sqlite:///{tmp_path / 'store.db'}", spool_max_bytes=1024 * 1024,
                          max_delay=3600, batch_rows=100_000)
    assert svc.post_sessions([session("s-1")]).status_code == 202
    accepted: list[str] = []
    refused = None
    for i in range(40):
        batch = [task(f"t-{i}-{j}", "s-1", source_text="字" * 2000) for j in range(10)]  # ~60 KB
        r = svc.post_tasks(batch)
        if r.status_code == 503:
            refused = r
            break
        assert r.status_code == 202, r.text
        accepted.extend(t["task_id"] for t in batch)
    assert refused is not None, "the spool never filled"
    assert refused.json()["error_code"] == "SPOOL_FULL"
    assert int(refused.headers["Retry-After"]) > 0
    health = svc.http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"

    assert svc.flush().status_code == 200  # the flusher writes now, without waiting for max_delay
    stored = {r["task_id"] for r in sink_rows(svc.sink_url, "translation_tasks", "task_id")}
    assert stored == set(accepted)  # everything acknowledged, nothing of the refused batch
    assert svc.post_tasks([task("t-after", "s-1")]).status_code == 202
    assert svc.http.get("/health").status_code == 200


def test_a_backlog_longer_than_max_lag_answers_429_and_drains(service_factory, tmp_path) -> None:
    """Back-pressure by time: once the flusher has measured its drain rate, a
    batch that would leave more than spool.max_lag seconds of drain waiting
    gets 429 + Retry-After, and the backlog stays near that bound."""
    import os
    import signal

    from testkit.load import pause_flusher
    from wal.spool import LAG_ADMIT

    # max_delay long: the flusher drains only full 1,000-record batches (or on /flush), so it
    # measures its rate on busy cycles whatever the speed of this machine.
    svc = service_factory(f"sqlite:///{tmp_path / 'store.db'}", max_lag=0.5, max_delay=3600)
    assert svc.post_sessions([session("s-1")]).status_code == 202
    for i in range(30):  # enough busy cycles for the flusher to measure its rate
        assert svc.post_tasks([task(f"w-{i}-{j}", "s-1") for j in range(100)]).status_code == 202
    assert svc.flush().status_code == 200
    rate = svc.http.get("/health").json()["buffer"]["drain_rate"]
    assert rate > 0, "no drain rate was measured"

    flusher = pause_flusher(svc)  # the backlog now only grows
    try:
        accepted, refused = 0, None
        for i in range(2_000):
            r = svc.post_tasks([task(f"t-{i}-{j}", "s-1") for j in range(100)])
            if r.status_code == 429:
                refused = r
                break
            assert r.status_code == 202, r.text
            accepted += 100
        assert refused is not None, f"never refused ({accepted} records waiting, {rate} rows/s)"
        assert refused.json()["error_code"] == "SPOOL_LAGGING" and int(refused.headers["Retry-After"]) >= 1
        # Admitted up to LAG_ADMIT of max_lag (room for the drain to slow), at most one batch past that.
        assert accepted <= rate * 0.5 * LAG_ADMIT + 100, (accepted, rate)
        health = svc.http.get("/health").json()
        assert health["status"] != "unhealthy", health
        assert health["buffer"]["estimated_lag_seconds"] > 0.5 * LAG_ADMIT * 0.8, health
    finally:
        os.kill(flusher, signal.SIGCONT)
    assert svc.flush().status_code == 200
    assert len(sink_rows(svc.sink_url, "translation_tasks", "task_id")) == 3_000 + accepted
    assert svc.post_tasks([task("t-after", "s-1")]).status_code == 202
