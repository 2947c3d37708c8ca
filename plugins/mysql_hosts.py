"""Where the MySQL/MariaDB sink is: one server, or several nodes of one
cluster (MariaDB Galera) listed in sink.url:

    mysql://user:pass@10.0.0.1:3306,10.0.0.2:3306,10.0.0.3:3306/db

Connections go to one node at a time: the first that answers, kept while it
works (one writing node keeps the service's own transactions from failing
each other's certification). When a node fails (refuses connections, or
answers that it is not part of the primary component), the next connect
starts with the node after it, so the flusher, the readers and the query
process's writes all move on by themselves."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql

DEFAULT_PORT = 3306
CONNECT_TIMEOUT_S = 10  # pymysql's default


def _host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:3306
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.partition(":")
    if port and not port.isdigit():
        raise ValueError("a port is not a number")
    return host or "127.0.0.1", int(port) if port else DEFAULT_PORT


class MysqlTarget:
    """The user, password, database and nodes of sink.url; connect() picks the node."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        self.user = unquote(user or "root")
        self.password = unquote(password)
        self.database = parts.path.strip("/")
        self.hosts = [_host_port(h) for h in hosts.split(",")] if hosts else [("127.0.0.1", DEFAULT_PORT)]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def is_cluster(self) -> bool:
        return len(self.hosts) > 1

    def connect(self, database: str | None = "", **params: Any) -> pymysql.connections.Connection:
        """A connection to the node in use, else the next that answers; database "" = sink.url's."""
        with self._lock:
            start = self._current
        last: pymysql.err.MySQLError | None = None
        for step in range(len(self.hosts)):
            index = (start + step) % len(self.hosts)
            host, port = self.hosts[index]
            try:
                # A node that accepts the TCP connection and never greets (stopped, or its machine hung) must
                # cost connect_timeout, not read_timeout: the handshake reads with the first, queries the second.
                options = {**params, "read_timeout": params.get("connect_timeout", CONNECT_TIMEOUT_S)}
                conn = pymysql.connect(host=host, port=port, user=self.user, password=self.password,
                                       database=self.database if database == "" else database, **options)
                conn._read_timeout = params.get("read_timeout")  # pymysql applies it at each read
            except pymysql.err.OperationalError as exc:
                last = exc
                continue
            with self._lock:
                self._current = index
            return conn
        assert last is not None
        raise last

    def failed(self) -> None:
        """The node in use failed: the next connect starts with the one after it."""
        if self.is_cluster:
            with self._lock:
                self._current = (self._current + 1) % len(self.hosts)
