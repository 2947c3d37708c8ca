"""The sink on a real three-node MariaDB Galera cluster (testkit/galera.py):
sink.url lists the three nodes; under a write load, kill -9 of the node the
service writes to and of another node, both rejoining by SST/IST; writes go
on, and afterwards every acknowledged task holds its last acknowledged
version on every node (read with wsrep_sync_wait)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from core.settings import SinkSettings
from plugins.direct_db import Mysql
from plugins.mysql import MysqlSink
from plugins.mysql_reader import MysqlReader
from testkit.galera import GaleraCluster, available
from testkit.nodes import VersionWriter, version_time
from testkit.service import Service, session, task

pytestmark = pytest.mark.skipif(not available(), reason="galera-4, rsync and a mysql user are needed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[GaleraCluster]:
    galera = GaleraCluster.create(3)
    try:
        galera.start()
        yield galera
    finally:
        galera.destroy()


def rows_on(cluster: GaleraCluster, index: int, database: str, session_id: str) -> dict[str, str]:
    rows = cluster.nodes[index].query(f"SELECT task_id, target_text FROM `{database}`.translation_tasks"
                                      " WHERE session_id = %s", (session_id,))
    return {r[0]: r[1] for r in rows}


def test_writes_survive_kill_9_of_galera_nodes(cluster: GaleraCluster, service_factory) -> None:
    database = f"ps_galera_{uuid.uuid4().hex[:8]}"
    service: Service = service_factory(cluster.url(database))
    session_id = "galera-1"
    task_ids = [f"g-{i}" for i in range(2000)]
    assert service.post_sessions([session(session_id)]).status_code == 202
    for start in range(0, len(task_ids), 1000):
        assert service.post_tasks([task(t, session_id, updated_at=version_time(0))
                                   for t in task_ids[start:start + 1000]]).status_code == 202
    assert service.flush().status_code == 200
    writer = VersionWriter(f"http://{service.host}:{service.ingest_port}", session_id, task_ids, batch=200,
                           pause=0.05)
    writer.start()
    try:
        time.sleep(2)
        victim = cluster.serving(database)
        cluster.kill(victim)  # the node the flusher writes to
        time.sleep(4)
        requests = writer.requests
        time.sleep(3)
        assert writer.requests > requests, "writes stopped being acknowledged"
        cluster.start_node(victim)  # rejoins by IST (or SST)
        other = next(n.index for n in cluster.nodes if n.index != cluster.serving(database))
        cluster.kill(other)
        time.sleep(3)
        cluster.start_node(other)
        time.sleep(2)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.requests > 20
    flushed = service.flush()
    assert flushed.status_code == 200, flushed.text
    assert cluster.size() == 3
    for node in cluster.nodes:
        stored = rows_on(cluster, node.index, database, session_id)
        assert set(stored) == set(task_ids), f"node{node.index} misses tasks"
        wrong = writer.wrong(stored)
        assert not wrong, f"node{node.index}: {len(wrong)} tasks not at their last acknowledged version: " \
                          f"{list(wrong.items())[:3]}"


def test_reads_on_a_cluster_wait_for_every_commit_before_them(cluster: GaleraCluster) -> None:
    """wsrep_sync_wait on the readers' and the direct writers' connections: a read on one node sees what
    another node committed just before (the service reads right after /flush, or after another node
    created a user)."""
    settings = SinkSettings(url=cluster.url(f"ps_sync_{uuid.uuid4().hex[:8]}"))
    MysqlSink(settings).migrate()
    reader = MysqlReader(settings)
    direct = Mysql(settings)
    try:
        waits = reader._run(lambda cur: (cur.execute("SELECT @@session.wsrep_sync_wait"), cur.fetchone())[1])
        assert waits == (1,)
        conn = direct.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT @@session.wsrep_sync_wait")
            assert cur.fetchone() == (1,)
        conn.close()
    finally:
        reader.close()
