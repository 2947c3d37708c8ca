"""Shared fixtures: real service processes, real databases, real files."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from testkit.mariadb import PrivateMariaDB
from testkit.seaweed import SeaweedS3
from testkit.service import MYSQL_HOST, MYSQL_PORT, Service


SHARED_REDIS = "redis://127.0.0.1:6379/11"  # a database of the tests' own on the shared Redis


@pytest.fixture
def shared_redis() -> Iterator[str]:
    """The Redis on 127.0.0.1:6379, in the tests' database, emptied before and after."""
    client = redis.Redis.from_url(SHARED_REDIS)
    client.flushdb()
    yield SHARED_REDIS
    client.flushdb()
    client.close()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh database on the shared MariaDB (127.0.0.1:3306), dropped after.
    A missing MariaDB fails the test: CI has one, and a skip would hide a broken sink."""
    name = f"ps_test_{uuid.uuid4().hex[:12]}"
    yield f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture
def private_db(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A private mariadbd (own datadir and port) for tests that stop or kill the database."""
    db = PrivateMariaDB(tmp_path / "mariadb", options={"innodb_buffer_pool_size": "128M",
                                                        "innodb_log_file_size": "48M"})
    db.start()
    yield db
    db.kill()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real SeaweedFS S3 server for the whole run (started in ~3 s); tests use their own prefixes."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.kill()  # a graceful stop takes ~15 s and keeps nothing we need


@pytest.fixture(params=["sqlite", "mysql"])
def sink_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("mysql_url")


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator:
    started: list[Service] = []

    def make(sink_url: str, **overrides: object) -> Service:
        service = Service(tmp_path / f"svc{len(started)}", sink_url, **overrides)
        started.append(service)
        service.start()
        return service

    yield make
    for service in started:
        service.kill()


@pytest.fixture
def service(service_factory, sink_url: str) -> Service:
    return service_factory(sink_url)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded generator; the seed is printed so a failure can be replayed
    with PS_TEST_SEED=<seed>."""
    seed = int(os.environ.get("PS_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n{request.node.nodeid}: PS_TEST_SEED={seed}")
    return random.Random(seed)


def pytest_report_header() -> str:
    return f"persistence-service tests; MariaDB at {MYSQL_HOST}:{MYSQL_PORT}; pid {os.getpid()}"
