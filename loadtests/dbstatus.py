"""What MariaDB was asked to do: SHOW GLOBAL STATUS snapshots of the private
instance, turned into statements per 1000 rows with a Com_* breakdown."""

from __future__ import annotations

import pymysql
from msgspec import Struct

from testkit.mariadb import PrivateMariaDB

STATUS_SQL = ("SHOW GLOBAL STATUS WHERE Variable_name = 'Questions' OR Variable_name LIKE 'Com\\_%'"
              " OR Variable_name IN ('Innodb_rows_inserted', 'Innodb_rows_updated', 'Innodb_data_fsyncs',"
              " 'Innodb_os_log_written', 'Bytes_received')")


class Monitor:
    """One autocommit connection for status snapshots, row counts and drops.
    Each status() is itself one statement in Questions (see statements())."""

    def __init__(self, mariadb: PrivateMariaDB) -> None:
        self.conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True,
                                    charset="utf8mb4")

    def status(self) -> dict[str, int]:
        with self.conn.cursor() as cur:
            cur.execute(STATUS_SQL)
            return {name: int(value) for name, value in cur.fetchall() if str(value).lstrip("-").isdigit()}

    def version(self) -> str:
        with self.conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            return str(cur.fetchone()[0])

    def count(self, database: str, table: str) -> int:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{database}`.`{table}`")
            return int(cur.fetchone()[0])

    def checksum(self, database: str, table: str) -> int:
        """CHECKSUM TABLE: equal for two tables of the same definition holding the same rows."""
        with self.conn.cursor() as cur:
            cur.execute(f"CHECKSUM TABLE `{database}`.`{table}`")
            return int(cur.fetchone()[1])

    def drop(self, database: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")

    def close(self) -> None:
        self.conn.close()


class Statements(Struct):
    rows: int
    questions: int
    com: dict[str, int]
    innodb: dict[str, int]

    @property
    def per_1000(self) -> float:
        return 1000 * self.questions / self.rows if self.rows else float("nan")

    def breakdown(self) -> str:
        """Com_* counters per 1000 rows, largest first."""
        per = sorted(((k.removeprefix("Com_"), 1000 * v / max(1, self.rows)) for k, v in self.com.items()),
                     key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v:.2f}" for k, v in per if v >= 0.005)


def statements(before: dict[str, int], after: dict[str, int], rows: int, own_queries: int = 1) -> Statements:
    """Deltas between two snapshots. own_queries: the monitor's own statements
    counted in between (the later SHOW STATUS counts itself), taken off."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    com = {k: v for k, v in delta.items() if k.startswith("Com_") and v > 0}
    com["Com_show_status"] = com.get("Com_show_status", 0) - own_queries
    com = {k: v for k, v in com.items() if v > 0}
    innodb = {k: v for k, v in delta.items() if k.startswith(("Innodb_", "Bytes_"))}
    return Statements(rows, delta.get("Questions", 0) - own_queries, com, innodb)
