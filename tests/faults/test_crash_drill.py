"""A short crash drill (testkit/drill.py): under a write load, kill -9 six
processes of the service at random (every role at least once: an ingest
worker, the granian ingest main process, the flusher, the query server, the
supervisor, which the drill then starts again on the same folder) and restart
its MariaDB once; every fault must be recovered from, and the database must
hold exactly the acknowledged records, last version per key.

The long version with figures: `python -m loadtests.crash_drill`.
Replay a failure with PS_TEST_SEED=<the printed seed>."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from testkit.drill import ROLES, Drill, DrillConfig, plan


def test_plan_covers_every_role_and_spreads_restarts() -> None:
    actions = plan(6, 1, random.Random(7))
    assert sorted(set(actions)) == sorted({*ROLES, "db-restart"}) and len(actions) == 7
    assert actions[0] != "db-restart" and actions[-1] != "db-restart"
    twenty = plan(20, 2, random.Random(7))
    assert all(twenty.count(role) == 4 for role in ROLES) and twenty.count("db-restart") == 2


@pytest.mark.slow
def test_crash_drill(tmp_path: Path, rng: random.Random) -> None:
    config = DrillConfig(kills=6, db_restarts=1, db_down=4.0, interval=1.5, seed=rng.randrange(2**31),
                         warmup_records=1_000, recover_timeout=30.0, max_seconds=45.0, flush_timeout=60.0)
    drill = Drill(tmp_path / "drill", config)
    try:
        result = drill.run()
    finally:
        drill.close()
    figures = result.figures
    assert result.passed, f"{result.failures}\n\n{result.report()}"
    assert figures["rows_lost"] == 0 and figures["rows_duplicated"] == 0, figures
    kills = [s for s in result.steps if s.event in ROLES]
    assert len(kills) == 6 and {s.event for s in kills} == set(ROLES), result.report()
    assert all(s.accepted_s is not None and s.restored_s is not None for s in result.steps
               if s.event != "db-restart"), result.report()
    assert figures["task_keys_acknowledged"] > 5_000, figures
    assert figures["session_writes_acknowledged"] > 21, figures  # 21 sessions created, then rewritten
