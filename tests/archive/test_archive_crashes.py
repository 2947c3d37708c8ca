"""kill -9 of the flusher while it archives and restores, on each sink: at
every moment (read in one snapshot of the database) each session is in the
hot tables with all its tasks or in the archive, never in neither and never
half; afterwards every session is archived exactly once with every task as
it was written, and a restore killed midway finishes on replay."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from urllib.parse import urlsplit

import pymysql

from testkit.service import Service, wait_for
from tests.archive.test_archive import ARCHIVE, SESSIONS, archived_view, fill, hot_view

SESSION_COUNT = 120
TASKS_EACH = 40


def snapshot(sink_url: str) -> tuple[dict[str, int], set[str]]:
    """In one read snapshot: task count per hot session, and the ids the archive holds."""
    url = urlsplit(sink_url)
    hot_sql = ("SELECT s.session_id, (SELECT COUNT(*) FROM translation_tasks t WHERE t.session_id = s.session_id)"
               " FROM translation_sessions s")
    archived_sql = "SELECT session_id FROM archived_sessions WHERE state = 'archived'"
    if url.scheme == "sqlite":
        conn = sqlite3.connect(sink_url[len("sqlite:///"):], isolation_level=None)
        try:
            conn.execute("BEGIN")
            hot = {r[0]: r[1] for r in conn.execute(hot_sql)}
            archived = {r[0] for r in conn.execute(archived_sql)}
            conn.execute("COMMIT")
        finally:
            conn.close()
        return hot, archived
    conn = pymysql.connect(host=url.hostname, port=url.port or 3306, user=url.username or "root", password="",
                           database=url.path.strip("/"))
    try:
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute(hot_sql)
            hot = {r[0]: r[1] for r in cur.fetchall()}
            cur.execute(archived_sql)
            archived = {(r[0].decode() if isinstance(r[0], bytes) else r[0]) for r in cur.fetchall()}
            conn.commit()
    finally:
        conn.close()
    return hot, archived


def check_every_session_somewhere(sink_url: str, ids: set[str]) -> tuple[int, int]:
    hot, archived = snapshot(sink_url)
    assert ids <= set(hot) | archived, f"in neither: {sorted(ids - set(hot) - archived)[:5]}"
    half = {sid: n for sid, n in hot.items() if sid not in archived and n != TASKS_EACH}
    assert not half, f"hot with missing tasks and not archived: {half}"
    return len(hot), len(archived)


def kill_flusher(service: Service) -> bool:
    pids = service.children()["flusher"]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return bool(pids)


def test_kill_9_while_archiving_and_restoring_loses_no_session(service_factory, sink_url: str) -> None:
    service = service_factory(sink_url, extra_toml="[archive]\ntasks_per_run = 200\n")
    ids = {f"s{n:03d}" for n in range(SESSION_COUNT)}
    for n, sid in enumerate(sorted(ids)):
        fill(service, sid, "completed" if n % 4 else "failed", 100 + n / 10, TASKS_EACH)
    assert service.flush().status_code == 200
    views = {sid: hot_view(service, sid) for sid in sorted(ids)[:10]}

    # Queue the run (it continues itself 200 tasks at a time); kill the flusher over and over meanwhile.
    started = threading.Thread(target=lambda: service.http.post(f"{ARCHIVE}/run", json={"after_days": 90}),
                               daemon=True)
    started.start()
    # At most 6 kills: the supervisor gives up on a role restarted 10 times within a minute (the restores add 3).
    kills = checks = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and kills < 6:
        time.sleep(0.3 + (kills % 4) * 0.15)  # at different points of a run (each takes ~0.1-0.3 s)
        kills += kill_flusher(service)
        hot, archived = check_every_session_somewhere(sink_url, ids)
        checks += 1
        if archived == SESSION_COUNT:
            break
    started.join(30)
    assert kills >= 3 and checks >= 3

    # A kill between a run and its continuation stops the chain: runs again (as the schedule would) finish it.
    def all_archived() -> bool:
        answer = service.http.post(f"{ARCHIVE}/run", json={"after_days": 90})
        check_every_session_somewhere(sink_url, ids)
        return answer.status_code == 200 and answer.json()["sessions"] == 0 and not answer.json()["more"]
    wait_for(all_archived, 120, "every due session archived", interval=0.5)
    hot_now, archived_now = snapshot(sink_url)
    assert hot_now == {} and archived_now == ids
    for sid, (detail, tasks) in views.items():
        assert archived_view(service, sid)[:2] == (detail, tasks)
    listed = service.http.get(f"{ARCHIVE}/sessions", params={"limit": 1000}).json()["items"]
    assert sorted(i["session_id"] for i in listed) == sorted(ids)  # each once

    # A restore killed midway: the session is in both meanwhile, and the replayed command finishes it.
    for sid in sorted(ids)[:3]:
        restoring = threading.Thread(target=service.http.post, args=(f"{ARCHIVE}/sessions/{sid}/restore",),
                                     daemon=True)
        restoring.start()
        time.sleep(0.05)
        kill_flusher(service)
        check_every_session_somewhere(sink_url, ids)
        restoring.join(30)
        wait_for(lambda: service.http.get(f"{SESSIONS}/{sid}").status_code == 200, 60, f"{sid} restored")
        wait_for(lambda: service.http.get(f"{ARCHIVE}/sessions/{sid}").status_code == 404, 60,
                 f"{sid} out of the archive")
        if sid in views:
            assert hot_view(service, sid) == views[sid]
    check_every_session_somewhere(sink_url, ids)
