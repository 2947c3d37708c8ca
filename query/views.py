"""Rows as the API answers them: ISO 8601 UTC times with Z, JSON fields
embedded as they are stored, and the derived session fields of API.md."""

from __future__ import annotations

from datetime import datetime
from typing import get_args

from msgspec import Raw, Struct

from persistence_api.translation import (ListPage, Performance, RecoveryStatus, SessionCounts, SessionDetail, SessionStatus,
                                         SessionSummary, SessionTaskPage, Stats, Storage, TaskCounts, TaskStatus,
                                         TaskView)
from core.times import iso_z, to_us
from plugins.reader import OPEN_STATUSES, RecoveryCounts, StoreStats

SESSION_STATUSES: tuple[str, ...] = get_args(SessionStatus)
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
_MAX_US = to_us(datetime(9999, 12, 31, 23, 59, 59))


def iso(stored: str) -> str:
    """Storage text 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC) as ISO 8601 with Z."""
    return f"{stored[:10]}T{stored[11:]}Z"


def iso_or_none(stored: str | None) -> str | None:
    return None if stored is None else iso(stored)


def stored_us(stored: str) -> int:
    return to_us(datetime.fromisoformat(stored))


def pending_tasks(total: int, completed: int, failed: int, processing: int) -> int:
    return max(0, total - completed - failed - processing)


def progress(total: int, completed: int) -> float:
    return round(100 * completed / total, 1) if total else 0.0


def session_summary(row: tuple) -> SessionSummary:
    (session_id, filename, _path, status, _llm, _game, _meta, total, completed, failed,
     processing, created_at, updated_at) = row
    return SessionSummary(session_id, filename, status, total, completed, failed, processing,
                          pending_tasks(total, completed, failed, processing),
                          progress(total, completed), iso(created_at), iso(updated_at))


def session_detail(row: tuple, now: int) -> SessionDetail:
    (session_id, filename, file_path, status, llm, game_info, metadata, total, completed, failed,
     processing, created_at, updated_at) = row
    eta = estimated_completion(status, total, completed, failed, stored_us(created_at), now)
    return SessionDetail(
        session_id, filename, file_path, status, llm, _raw(game_info), _raw(metadata), total,
        completed, failed, processing, pending_tasks(total, completed, failed, processing),
        progress(total, completed), iso(created_at), iso(updated_at), eta)


def estimated_completion(status: str, total: int, completed: int, failed: int,
                         created_us: int, now: int) -> str | None:
    """now + remaining / (completed / (now - created_at)); None for a finished
    session or while nothing is completed yet."""
    elapsed_us = now - created_us
    if status not in OPEN_STATUSES or completed <= 0 or elapsed_us <= 0:
        return None
    remaining = max(0, total - completed - failed)
    eta_us = now + int(remaining * elapsed_us / completed)
    return iso_z(eta_us) if eta_us <= _MAX_US else None


def task_view(row: tuple) -> TaskView:
    (task_id, session_id, batch_id, sheet, row_index, column, source, target, context, status,
     confidence, error, retries, start, end, duration, created_at, updated_at) = row
    return TaskView(task_id, session_id, batch_id, sheet, row_index, column, source, target,
                    context, status, confidence, error, retries, iso_or_none(start),
                    iso_or_none(end), duration, iso(created_at), iso(updated_at))


def _raw(stored_json: str | None) -> Raw | None:
    return None if stored_json is None else Raw(stored_json)


def total_pages(total: int, page_size: int) -> int:
    return -(-total // page_size)


def stats_body(stats: StoreStats, computed_us: int) -> Stats:
    sessions = {s: stats.sessions_by_status.get(s, 0) for s in SESSION_STATUSES}
    tasks = {s: stats.tasks_by_status.get(s, 0) for s in TASK_STATUSES}
    finished = tasks["completed"] + tasks["failed"]
    session_rows = sum(stats.sessions_by_status.values())
    task_rows = sum(stats.tasks_by_status.values())
    return Stats(
        sessions=SessionCounts(total=session_rows, **sessions),
        tasks=TaskCounts(total=task_rows, **tasks),
        performance=Performance(
            average_session_time=round(stats.average_session_s or 0.0, 3),
            average_task_time=round((stats.average_task_ms or 0.0) / 1000, 3),
            success_rate=round(100 * tasks["completed"] / finished, 2) if finished else 0.0),
        storage=Storage(database_size_mb=round(stats.database_bytes / (1024 * 1024), 2),
                        sessions_table_rows=session_rows, tasks_table_rows=task_rows),
        computed_at=iso_z(computed_us))


def recovery_status_body(counts: RecoveryCounts, now: int) -> RecoveryStatus:
    sessions = {s: counts.sessions_by_status.get(s, 0) for s in OPEN_STATUSES}
    tasks = {s: counts.open_tasks_by_status.get(s, 0) for s in OPEN_STATUSES}
    return RecoveryStatus(incomplete_sessions=sum(sessions.values()), sessions_by_status=sessions,
                          open_tasks=sum(tasks.values()), tasks_by_status=tasks, checked_at=iso_z(now))
