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
