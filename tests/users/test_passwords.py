"""Passwords: stored only as Argon2id hashes, rehashed at login when the
parameters change, and a failed login costs about what a good one costs,
whatever the reason it failed."""

from __future__ import annotations

import sqlite3
import statistics
import time
from pathlib import Path

from tests.users.conftest import USERS, new_user

ROUNDS = 12


def _stored_hash(store: Path, user_id: str) -> str:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT password_hash FROM users WHERE user_id = ?", (user_id,)).fetchone()[0]


def test_passwords_are_argon2id_and_rehashed_when_the_parameters_change(service_factory, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    sessions = f'[user_sessions]\nurl = "sqlite:///{tmp_path / "sessions.db"}"\n'
    first = service_factory(f"sqlite:///{store}", extra_toml=f"[users]\nhash_time_cost = 1\nhash_memory_kib = 8192\n{sessions}")
    ann = new_user(first, "ann", password="correct horse")
    stored = _stored_hash(store, ann["user_id"])
    assert stored.startswith("$argon2id$") and ",t=1," in stored and "correct horse" not in stored
    assert "correct horse" not in first.tail(500)
    first.kill()
    second = service_factory(f"sqlite:///{store}", extra_toml=f"[users]\nhash_time_cost = 2\nhash_memory_kib = 8192\n{sessions}")
    wrong = second.http.post(f"{USERS}/authenticate", json={"login": "ann", "password": "wrong horse"})
    assert wrong.status_code == 401 and _stored_hash(store, ann["user_id"]) == stored
    assert second.http.post(f"{USERS}/authenticate",
                            json={"login": "ann", "password": "correct horse"}).status_code == 200
    rehashed = _stored_hash(store, ann["user_id"])
    assert ",t=2," in rehashed and rehashed != stored
    assert second.http.post(f"{USERS}/authenticate",
                            json={"login": "ann", "password": "correct horse"}).status_code == 200


def test_unknown_login_wrong_password_and_disabled_user_take_about_as_long(service_factory, tmp_path: Path) -> None:
    # The shipped memory cost (19 MiB) makes the hash dominate the answer time, as in production.
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}",
                              extra_toml=f'[users]\nmax_failures = 1000\n[user_sessions]\nurl = "sqlite:///{tmp_path / "s.db"}"\n')
    new_user(service, "ann", password="correct horse")
    new_user(service, "off", password="correct horse", status="disabled")
    cases = {"wrong password": ("ann", "wrong horse"), "unknown login": ("nobody", "correct horse"),
             "disabled user": ("off", "correct horse")}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, (login, password) in cases.items():  # interleaved: the machine's noise hits all alike
            started = time.perf_counter()
            answer = service.http.post(f"{USERS}/authenticate", json={"login": login, "password": password})
            times[name].append(time.perf_counter() - started)
            assert answer.status_code == 401
    medians = {name: statistics.median(values) for name, values in times.items()}
    assert max(medians.values()) < 1.6 * min(medians.values()), medians
