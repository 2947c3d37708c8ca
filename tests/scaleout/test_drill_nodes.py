"""The several-nodes drill (loadtests/drill_nodes.py), short: 30 s of
writes, updates and deletes through HAProxy over three nodes on a Galera
cluster, with kill -9 of a service node, of the Galera node written to and
of Redis. It passes only if every acknowledged task holds its last
acknowledged version on every Galera node, no deleted session is back, the
login session is still valid and a file reads back through another node."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testkit import galera, haproxy

pytestmark = pytest.mark.skipif(not (galera.available() and haproxy.available()),
                                reason="galera-4, rsync and haproxy are needed")


def test_the_short_drill_passes() -> None:
    run = subprocess.run([sys.executable, "-m", "loadtests.drill_nodes", "--skip-scaling", "--seconds", "30"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "FAIL" not in run.stdout and run.stdout.count("PASS:") == 9, run.stdout
