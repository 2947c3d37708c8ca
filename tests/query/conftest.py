"""One service per sink for the whole package: the read tests write disjoint
data (their own ids, their own created_at window) into it, so the starts are
paid once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymysql
import pytest

from testkit.service import MYSQL_HOST, MYSQL_PORT, Service
from tests.query.support import Api


@pytest.fixture(scope="package", params=["sqlite", "mysql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp(f"query-{request.param}")
    database = f"ps_test_{uuid.uuid4().hex[:12]}"
    url = (f"sqlite:///{folder / 'store.db'}" if request.param == "sqlite"
           else f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{database}")
    service = Service(folder, url)
    service.start()
    api = Api(service)
    try:
        api.wait_ready()
        yield api
    finally:
        api.close()
        service.kill()
        if request.param == "mysql":
            _drop(database)


def _drop(database: str) -> None:
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="")
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        conn.close()
