"""Property: any batch of valid tasks is accepted; breaking any one field of
any one item rejects the whole batch and names exactly that item and field."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kinds import TASKS
from ingest.validation import BatchInvalid, validate_batch

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


def _bounded(low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=low, max_size=high)


valid_task = st.fixed_dictionaries(
    {"task_id": _bounded(1, 64), "session_id": _bounded(1, 36), "batch_id": _bounded(1, 64),
     "sheet_name": _bounded(1, 40), "row_index": st.integers(0, 2**63 - 1), "column_name": _bounded(1, 40),
     "source_text": text, "status": st.sampled_from(["pending", "processing", "completed", "failed"])},
    optional={"target_text": st.one_of(st.none(), text), "confidence": st.one_of(st.none(), st.floats(0, 1)),
              "retry_count": st.integers(0, 1000), "duration_ms": st.one_of(st.none(), st.integers(0, 10**9)),
              "start_time": st.datetimes().map(lambda d: d.isoformat() + "Z")})

BREAKERS: dict[str, list[object]] = {
    "task_id": ["", "x" * 65, 5, None],
    "session_id": ["", "s" * 37, []],
    "row_index": [-1, "1", 1.5, True],
    "status": ["done", "", 3],
    "confidence": [1.5, -0.01, "high"],
    "source_text": [None, 7, "字" * 21846],
    "start_time": ["soon", 12],
}


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_task, min_size=1, max_size=20))
def test_valid_batches_are_accepted(tasks: list[dict]) -> None:
    assert len(validate_batch(TASKS, msgspec.json.encode({"tasks": tasks}))) == len(tasks)


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_task, min_size=1, max_size=20), st.data())
def test_one_broken_field_is_named(tasks: list[dict], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(tasks) - 1))
    field = data.draw(st.sampled_from(sorted(BREAKERS)))
    tasks[index][field] = data.draw(st.sampled_from(BREAKERS[field]))
    try:
        validate_batch(TASKS, msgspec.json.encode({"tasks": tasks}))
    except BatchInvalid as exc:
        assert [e.field for e in exc.errors] == [f"tasks[{index}].{field}"]
    else:
        raise AssertionError(f"tasks[{index}].{field} = {tasks[index][field]!r} was accepted")
