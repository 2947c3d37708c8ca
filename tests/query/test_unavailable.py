"""With the database away, reads answer 503 DATABASE_UNAVAILABLE at once,
and /health still answers: the query process never waits on it to start."""

from __future__ import annotations

import httpx

from testkit.service import free_port, wait_for
from tests.query.support import BASE


def test_reads_are_503_while_the_database_is_down(service_factory) -> None:
    service = service_factory(f"mysql://root@127.0.0.1:{free_port()}/nowhere")
    query = httpx.Client(base_url=f"http://127.0.0.1:{service.query_port}", timeout=30)
    try:
        wait_for(lambda: query.get("/health").status_code in (200, 503), 30, "the query process")
        for client in (query, service.http):
            for method, path in [("GET", "/sessions"), ("GET", "/sessions/x"), ("GET", "/stats"),
                                 ("POST", "/recovery/restore/x")]:
                r = client.request(method, BASE + path)
                assert r.status_code == 503, r.text
                assert r.json()["error_code"] == "DATABASE_UNAVAILABLE" and r.headers["retry-after"]
    finally:
        query.close()
