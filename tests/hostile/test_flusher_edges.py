"""Hostile records through the whole write path: hypothesis generates
records with values at every edge (times near 0001 and 9999 with offsets,
integers around the column limits, floats, any Unicode, strings at their
length limits, deep and wide JSON) and posts them to a real service, on each
sink. Every answer is 202, 400 or 422 (never 5xx); after each example a
normal record must reach the database within one flush, nothing accepted may
be dead-lettered, and every accepted record reads back as it was sent."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from testkit.service import Service, session, task

# Per sink; each is 4 posts, a flush and the reads back. PS_EDGE_EXAMPLES=500 for a long hunt.
EXAMPLES = int(os.environ.get("PS_EDGE_EXAMPLES", "40"))
SESSION_DEFAULTS = {"game_info": None, "metadata": None, "total_tasks": 0, "completed_tasks": 0, "failed_tasks": 0,
                    "processing_tasks": 0}
_counter = itertools.count()

# -- values at the edges -------------------------------------------------------

def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """valid, and one time in 40 a value past the limit (a record has a dozen
    fields: any bad one refuses the whole batch)."""
    return st.integers(0, 39).flatmap(lambda roll: invalid if roll == 17 else valid)  # not an edge: drawn uniformly


BIG = 2**63 - 1
integers = mostly(st.one_of(st.sampled_from([0, 1, 2**31, 2**32, 2**53 + 1, BIG - 1, BIG]),
                            st.integers(min_value=0, max_value=BIG)),
                  st.sampled_from([-1, BIG + 1, 2**64, -(2**65)]))
floats = st.one_of(st.sampled_from([0.0, 1.0, -0.0, 5e-324, 1e-300, 0.99995, 0.00005, 1e308, -1e308]),
                   st.floats(allow_nan=False, allow_infinity=False))
confidences = mostly(st.one_of(st.sampled_from([0.0, 1.0, 5e-324, 0.99995, 0.00005, 0.99994999]),
                               st.floats(min_value=0, max_value=1)),
                     st.sampled_from([1.0000001, -1e-9, 2.0]))
offsets = st.builds(timezone, st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timedelta(minutes=m)))
instants = st.one_of(
    st.sampled_from([datetime(1, 1, 1), datetime(1, 1, 1, 0, 59, 59), datetime(9999, 12, 31, 23, 59, 59, 999999),
                     datetime(9999, 12, 31, 23, 0), datetime(1970, 1, 1), datetime(1969, 12, 31, 23, 59, 59)]),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)))
# Near 0001 or 9999 an offset may move the UTC value out of range: those are refused (422).
times = st.one_of(st.none(), st.builds(lambda moment, tz: moment.replace(tzinfo=tz).isoformat(), instants,
                                       st.one_of(st.none(), st.just(UTC), offsets)))
any_text = st.text(st.characters(codec="utf-8"), max_size=40)  # any Unicode but lone surrogates
wide = st.sampled_from(["x", "字", "😀", "\u0000", "\u2028", " ", "'", "\\", "%", "\u0308"])  # one code point each


def sized(limit: int, required: bool = True) -> st.SearchStrategy[str]:
    """Strings up to and right at a length limit, of 1- to 4-byte characters;
    now and then one past it (or empty where a value is required)."""
    fits = st.one_of(st.text(st.characters(codec="utf-8"), min_size=int(required), max_size=min(40, limit)),
                     st.builds(lambda ch, n: ch * n, wide, st.sampled_from([limit - 1, limit])))
    return mostly(fits, st.builds(lambda ch: ch * (limit + 1), wide) | st.just("") if required else
                  st.builds(lambda ch: ch * (limit + 1), wide))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), integers, floats, any_text),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)),
    max_leaves=30)


def deep(depth: int) -> dict:
    value: Any = "leaf"
    for level in range(depth - 1):
        value = {"k": value} if level % 2 else [value]
    return {"root": value}


json_objects = st.one_of(st.none(), st.dictionaries(any_text, json_values, max_size=6),
                         mostly(st.sampled_from([30, 31]), st.just(32)).map(deep))
# The most characters of each width that fit in 65,535 bytes of UTF-8.
_WIDEST = {"a": 65_535, "字": 21_845, "😀": 16_383}
long_text = st.one_of(any_text, st.sampled_from(sorted(_WIDEST)).flatmap(lambda ch: st.builds(
    lambda n: ch * n, mostly(st.sampled_from([_WIDEST[ch] - 1, _WIDEST[ch]]), st.just(_WIDEST[ch] + 1)))))


def _key(limit: int) -> st.SearchStrategy[str]:
    # A fresh prefix per record, so no example's write versions another's; the rest reaches the limit.
    return st.builds(lambda rest: f"{next(_counter):06d}{rest}"[:limit + 1], sized(limit - 6, required=False))


sessions = st.fixed_dictionaries(
    {"session_id": _key(36), "filename": sized(255), "file_path": sized(512),
     "status": st.sampled_from(["pending", "processing", "completed", "failed", "cancelled"]),
     "llm_provider": sized(50)},
    optional={"game_info": json_objects, "metadata": json_objects, "total_tasks": integers,
              "completed_tasks": integers, "failed_tasks": integers, "processing_tasks": integers,
              "updated_at": times})
tasks = st.fixed_dictionaries(
    {"task_id": _key(64), "batch_id": sized(64), "sheet_name": sized(255), "row_index": integers,
     "column_name": sized(255), "source_text": long_text,
     "status": st.sampled_from(["pending", "processing", "completed", "failed"])},
    optional={"target_text": st.none() | long_text, "context": st.none() | long_text,
              "confidence": st.none() | confidences, "error_message": st.none() | long_text,
              "retry_count": integers, "start_time": times, "end_time": times,
              "duration_ms": st.none() | integers, "updated_at": times})


@pytest.fixture(scope="module", params=["sqlite", "mysql"])
def edge_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp(f"edges-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'store.db'}"
    else:
        import uuid
        url = f"mysql://root@127.0.0.1:3306/ps_test_edges_{uuid.uuid4().hex[:10]}"
    service = Service(folder, url, max_delay=5.0)  # only POST /flush drains: one flush per example
    service.start()
    yield service
    service.kill()
    if request.param == "mysql":
        import pymysql
        conn = pymysql.connect(host="127.0.0.1", user="root", password="")
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{url.rsplit('/', 1)[1]}`")
        conn.close()


def _readable(key: str) -> bool:
    """A key with "/" is stored, but no URL path segment can name it (%2F is decoded before routing)."""
    return "/" not in key


def _utc(text: str | None) -> str | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(one_session=sessions, some_tasks=st.lists(tasks, min_size=1, max_size=3))
def test_edge_records_are_stored_or_refused_and_never_block_the_flusher(
        edge_service: Service, one_session: dict, some_tasks: list[dict]) -> None:
    svc = edge_service
    for item in some_tasks:
        item["session_id"] = one_session["session_id"][:36]
    posted_session = svc.post_sessions([one_session])
    posted_tasks = svc.post_tasks(some_tasks)
    event(f"session {posted_session.status_code}, tasks {posted_tasks.status_code}")
    for answer in (posted_session, posted_tasks):
        if answer.status_code == 422:
            for error in answer.json()["errors"]:
                event("refused: " + error["field"].split(".")[-1] + ": " + error["message"][:40])
    for answer in (posted_session, posted_tasks):
        assert answer.status_code in (202, 400, 422), answer.text
        if answer.status_code != 202:
            assert answer.json()["errors"] or answer.status_code == 400, answer.text
    marker = f"marker-{next(_counter)}"
    assert svc.post_sessions([session(marker)]).status_code == 202
    assert svc.post_tasks([task(marker, marker)]).status_code == 202
    flushed = svc.flush()
    assert flushed.status_code == 200, flushed.text
    assert flushed.json()["dead_lettered"] == 0, (flushed.json(), svc.http.get("/api/v1/system/dead-letters").text)
    assert svc.http.get(f"/api/v1/translation/tasks/{marker}").status_code == 200

    if posted_session.status_code == 202 and _readable(one_session["session_id"]):
        got = svc.http.get(f"/api/v1/translation/sessions/{quote(one_session['session_id'], safe='')}")
        assert got.status_code == 200, got.text
        stored = got.json()
        for field in ("filename", "file_path", "status", "llm_provider", "game_info", "metadata",
                      "total_tasks", "completed_tasks", "failed_tasks", "processing_tasks"):
            assert stored[field] == one_session.get(field, SESSION_DEFAULTS.get(field)), field
        if one_session.get("updated_at"):
            assert stored["updated_at"] == _utc(one_session["updated_at"])
    if posted_tasks.status_code == 202:
        for sent in some_tasks:
            if posted_session.status_code != 202 or not _readable(sent["task_id"]):
                continue  # an orphan: held for its session, not stored (and not dead-lettered)
            got = svc.http.get(f"/api/v1/translation/tasks/{quote(sent['task_id'], safe='')}")
            assert got.status_code == 200, got.text
            stored = got.json()
            for field in ("source_text", "target_text", "context", "error_message", "row_index",
                          "retry_count", "duration_ms", "batch_id", "sheet_name", "column_name"):
                if field in sent:
                    assert stored[field] == sent[field], field
            for field in ("start_time", "end_time"):
                assert stored[field] == _utc(sent.get(field)), field
            if sent.get("confidence") is not None:
                assert stored["confidence"] == pytest.approx(round(sent["confidence"], 4), abs=1e-4)
