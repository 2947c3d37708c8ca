"""sink.url with several nodes (plugins/mysql_hosts.py): parsed exactly,
connections go to the first node that answers and stay there, a failed
node sends the next connect to the one after it; against the real MariaDB
on 3306 and a port where nothing listens."""

from __future__ import annotations

import socket
import time

import pymysql
import pytest

from core.settings import ConfigError, load_settings
from plugins.mysql_hosts import MysqlTarget
from testkit.service import free_port


def test_the_url_names_every_node_and_the_credentials() -> None:
    target = MysqlTarget("mysql://ps:p%40ss%2Fw@10.0.0.1:3307,db2,[::1]:3309/persistence")
    assert target.hosts == [("10.0.0.1", 3307), ("db2", 3306), ("::1", 3309)]
    assert (target.user, target.password, target.database) == ("ps", "p@ss/w", "persistence")
    assert target.is_cluster and not MysqlTarget("mysql://root@127.0.0.1/db").is_cluster


def test_a_bad_port_in_any_node_is_refused_at_start(tmp_path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[sink]\nurl = "mysql://root@127.0.0.1:3306,127.0.0.1:x/db"\n')
    with pytest.raises(ConfigError, match="sink.url"):
        load_settings(str(config))


def test_connect_skips_a_dead_node_stays_put_and_moves_on_after_a_failure() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers: a hung node
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hung = silent.getsockname()[1]
        target = MysqlTarget(f"mysql://root@127.0.0.1:{hung},127.0.0.1:3306/test")
        started = time.monotonic()
        conn = target.connect(connect_timeout=1)
        assert conn.port == 3306 and time.monotonic() - started >= 0.9  # waited for the hung node first
        conn.close()
        started = time.monotonic()
        conn = target.connect(connect_timeout=1)  # sticky: the hung node is not tried again
        assert conn.port == 3306 and time.monotonic() - started < 0.5
        conn.close()
        target.failed()  # the node in use failed: the next connect starts after it (the hung one, then 3306)
        started = time.monotonic()
        conn = target.connect(connect_timeout=1)
        assert conn.port == 3306 and time.monotonic() - started >= 0.9
        conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        MysqlTarget(f"mysql://root@127.0.0.1:{free_port()}/test").connect(connect_timeout=1)
