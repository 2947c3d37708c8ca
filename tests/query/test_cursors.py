"""Keyset cursors: walking a list page by page while writes go on misses no
row that existed before the walk and repeats none."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from testkit.service import session, task
from tests.query.support import Api, now_iso, unique

WRITER_ROUNDS_BEFORE_RESUMING = 2


@contextmanager
def writes_going_on(api: Api, write_round: Callable[[int], None]) -> Iterator[Callable[[], None]]:
    """Runs write_round(n) (write, then flush) in a thread until the block
    ends. Yields `wait_for_rounds()`, which returns once a few rounds landed."""
    stop = threading.Event()
    landed = threading.Semaphore(0)
    errors: list[BaseException] = []

    def run() -> None:
        n = 0
        try:
            while not stop.is_set():
                write_round(n)
                n += 1
                landed.release()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
            landed.release()

    def wait_for_rounds() -> None:
        for _ in range(WRITER_ROUNDS_BEFORE_RESUMING):
            assert landed.acquire(timeout=30), "the writer made no progress"
        assert not errors, errors

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield wait_for_rounds
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors


def walk_during(api: Api, path: str, page_size: int, wait: Callable[[], None], **params: Any) -> list[dict]:
    """Walk by cursor; after the second page, let the writer land some rounds."""
    body = api.ok(path, page_size=page_size, **params)
    total, items, number = body["total"], list(body["items"]), 1
    while body["next_cursor"] is not None:
        if number == 2:
            wait()
        number += 1
        body = api.ok(path, page_size=page_size, cursor=body["next_cursor"], **params)
        assert (body["page"], body["total"], body["page_size"]) == (number, total, page_size)
        items += body["items"]
    return items


def test_session_walk_misses_and_repeats_nothing(api: Api, rng: random.Random) -> None:
    start = now_iso()
    before: list[str] = []
    for batch in range(6):  # batches of ties on created_at, split across pages
        ids = [unique(f"cw{batch}") for _ in range(rng.randint(1, 12))]
        api.write(sessions=[session(sid) for sid in ids], flush=False)
        before += ids
    assert api.service.flush().status_code == 200

    def write_round(n: int) -> None:
        changed = [session(sid, status=rng.choice(["completed", "failed"]), completed_tasks=n)
                   for sid in rng.sample(before, 5)]
        api.write(sessions=changed + [session(unique(f"new{n}")) for _ in range(3)])

    with writes_going_on(api, write_round) as wait:
        # Newest first: new sessions land before the cursor, where page numbers would shift.
        items = walk_during(api, "/sessions", 7, wait, from_date=start)
    seen = [item["session_id"] for item in items]
    assert len(seen) == len(set(seen)), "a session was repeated"
    assert set(before) <= set(seen), f"missed: {set(before) - set(seen)}"
    keys = [(item["created_at"], item["session_id"]) for item in items]
    assert keys == sorted(keys, reverse=True)


def test_session_task_walk_misses_and_repeats_nothing(api: Api, rng: random.Random) -> None:
    sid = unique("ctw")
    before = [task(f"{sid}-{s}-{r}-{c}", sid, sheet_name=s, row_index=r, column_name=c)
              for s in ("A", "B", "C") for r in range(20) for c in ("X", "Y")]
    api.write(sessions=[session(sid)], tasks=before)

    def write_round(n: int) -> None:
        changed = [dict(t, status="completed") for t in rng.sample(before, 10)]
        new = [task(f"{sid}-new-{n}-{i}", sid, sheet_name=rng.choice("ABCD"), row_index=rng.randrange(25),
                    column_name="Z") for i in range(5)]
        api.write(tasks=changed + new)

    with writes_going_on(api, write_round) as wait:
        items = walk_during(api, f"/sessions/{sid}/tasks", 9, wait)
    seen = [t["task_id"] for t in items]
    assert len(seen) == len(set(seen)), "a task was repeated"
    assert {t["task_id"] for t in before} <= set(seen)
    keys = [(t["sheet_name"], t["row_index"], t["column_name"], t["task_id"]) for t in items]
    assert keys == sorted(keys)


def test_task_list_walk_newest_first_misses_and_repeats_nothing(api: Api) -> None:
    sid = unique("gtw")
    api.write(sessions=[session(sid)], flush=False)
    before = []
    for batch in range(5):
        tasks = [task(f"{sid}-{batch}-{i}", sid) for i in range(13)]
        api.write(tasks=tasks, flush=False)
        before += tasks
    assert api.service.flush().status_code == 200

    def write_round(n: int) -> None:
        api.write(tasks=[task(f"{sid}-late-{n}-{i}", sid) for i in range(4)])

    with writes_going_on(api, write_round) as wait:
        items = walk_during(api, "/tasks", 6, wait, session_id=sid)
    seen = [t["task_id"] for t in items]
    assert len(seen) == len(set(seen))
    assert {t["task_id"] for t in before} <= set(seen)
    keys = [(t["created_at"], t["task_id"]) for t in items]
    assert keys == sorted(keys, reverse=True)


def test_a_cursor_works_only_for_the_list_that_issued_it(api: Api) -> None:
    ids = [unique("cur") for _ in range(3)]
    start = now_iso()
    api.write(sessions=[session(sid) for sid in ids])
    cursor = api.ok("/sessions", from_date=start, page_size=1)["next_cursor"]
    assert cursor
    second = api.ok("/sessions", from_date=start, page_size=1, cursor=cursor)
    assert second["page"] == 2 and len(second["items"]) == 1
    # page is ignored next to a cursor: the cursor knows where it is.
    assert api.ok("/sessions", from_date=start, page_size=1, cursor=cursor, page=9) == second
    for path, params in [("/sessions", {"from_date": start, "status": "pending"}),
                         ("/sessions", {"from_date": start, "order": "asc"}),
                         ("/tasks", {}), ("/sessions", {"cursor": "not-a-cursor"}),
                         ("/sessions", {"cursor": "W10"})]:
        r = api.get(path, **{"cursor": cursor, **params})
        assert r.status_code == 422, (path, params, r.text)
        assert r.json()["error_code"] == "VALIDATION_ERROR"
        assert [e["field"] for e in r.json()["errors"]] == ["cursor"]
