"""A three-node MariaDB Galera cluster on this machine, for tests and drills
(loadtests/galera_cluster.py runs it by hand): each node its own datadir,
socket, client port, group-communication port, IST and SST ports on
127.0.0.1; the first bootstraps the cluster (--wsrep-new-cluster), the
others join it by rsync SST. Nodes run as user `mysql` (rsync SST refuses
to run as root), so the cluster lives in a folder of its own under /tmp
that `mysql` can enter. Never touches the shared server on 3306.

    cluster = GaleraCluster.create(3); cluster.start()
    url = cluster.url("db")   # mysql://root@127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/db
    cluster.kill(1); cluster.start_node(1)   # kill -9, then rejoin by IST/SST
    cluster.destroy()
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from testkit.mariadb import INSTALL_DB, MARIADBD, _free_port

PROVIDER = next((p for p in ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so") if Path(p).exists()),
                "/usr/lib/galera/libgalera_smm.so")
USER = "mysql"


def available() -> bool:
    """galera-4, mariadbd, rsync and a `mysql` user are here."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return Path(PROVIDER).exists() and Path(MARIADBD).exists() and shutil.which("rsync") is not None


@dataclass
class Node:
    index: int
    folder: Path
    port: int
    gcomm_port: int
    ist_port: int
    sst_port: int
    proc: subprocess.Popen | None = None

    @property
    def datadir(self) -> Path:
        return self.folder / "data"

    def connect(self, timeout: float = 2) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=timeout,
                               read_timeout=30, write_timeout=30)

    def status(self, name: str) -> str | None:
        try:
            conn = self.connect()
        except pymysql.err.MySQLError:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                row = cur.fetchone()
                return None if row is None else str(row[1])
        except pymysql.err.MySQLError:
            return None
        finally:
            conn.close()

    def is_synced(self) -> bool:
        return self.status("wsrep_local_state_comment") == "Synced" and self.status("wsrep_ready") == "ON"

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of one read that sees every write the cluster committed (wsrep_sync_wait)."""
        conn = self.connect(timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION wsrep_sync_wait = 1")
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def statements(self) -> int:
        """Statements clients ran on this node (inserts, updates, deletes, selects, commits, rollbacks);
        write-sets applied from other nodes are not counted."""
        conn = self.connect(timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_insert', 'Com_update', 'Com_delete',"
                            " 'Com_select', 'Com_commit', 'Com_rollback', 'Com_insert_select', 'Com_replace')")
                return sum(int(v) for _, v in cur.fetchall())
        finally:
            conn.close()


@dataclass
class GaleraCluster:
    folder: Path
    nodes: list[Node] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, size: int = 3, options: dict[str, str] | None = None) -> GaleraCluster:
        folder = Path(tempfile.mkdtemp(prefix="galera-", dir="/tmp"))
        os.chmod(folder, 0o755)
        cluster = cls(folder, options=dict(options or {}))
        for i in range(size):
            node_folder = folder / f"node{i}"
            node_folder.mkdir()
            cluster.nodes.append(Node(i, node_folder, _free_port(), _free_port(), _free_port(), _free_port()))
        account = pwd.getpwnam(USER)
        for path in [folder, *(n.folder for n in cluster.nodes)]:
            os.chown(path, account.pw_uid, account.pw_gid)
        return cluster

    def url(self, database: str) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"mysql://root@{hosts}/{database}"

    def _args(self, node: Node, bootstrap: bool) -> list[str]:
        peers = ",".join(f"127.0.0.1:{n.gcomm_port}" for n in self.nodes)
        options = {
            "innodb_buffer_pool_size": "256M", "innodb_log_file_size": "128M",
            "innodb_flush_log_at_trx_commit": "1", "max_allowed_packet": "64M", "max_connections": "200",
            "binlog_format": "ROW", "innodb_autoinc_lock_mode": "2", "default_storage_engine": "InnoDB",
            "wsrep_on": "ON", "wsrep_provider": PROVIDER, "wsrep_cluster_name": f"ps-{self.folder.name}",
            "wsrep_cluster_address": f"gcomm://{peers}", "wsrep_node_address": "127.0.0.1",
            "wsrep_node_name": f"node{node.index}", "wsrep_sst_method": "rsync",
            "wsrep_sst_receive_address": f"127.0.0.1:{node.sst_port}",
            "wsrep_provider_options": (f"gmcast.listen_addr=tcp://127.0.0.1:{node.gcomm_port};"
                                       f"ist.recv_addr=127.0.0.1:{node.ist_port};gcache.size=256M"),
            **self.options,
        }
        if Path("/usr/lib/mysql/plugin/ha_mroonga.so").exists():
            # The sink's audit search table is Mroonga: its DDL replicates, so every node must know the engine
            # (its rows do not: Galera replicates InnoDB only; README "Running on several machines").
            options["plugin_load_add"] = "ha_mroonga.so"
        args = [MARIADBD, "--no-defaults", f"--datadir={node.datadir}", f"--socket={node.folder / 'mysqld.sock'}",
                f"--port={node.port}", "--bind-address=127.0.0.1", f"--user={USER}",
                f"--pid-file={node.folder / 'mysqld.pid'}", f"--log-error={node.folder / 'error.log'}"]
        args += [f"--{k}={v}" for k, v in options.items()]
        return args + (["--wsrep-new-cluster"] if bootstrap else [])

    def start(self, timeout: float = 180) -> None:
        """Bootstrap node 0, then join the others one at a time."""
        for node in self.nodes:
            self.start_node(node.index, bootstrap=node.index == 0, timeout=timeout)

    def start_node(self, index: int, bootstrap: bool = False, timeout: float = 180) -> None:
        node = self.nodes[index]
        if not node.datadir.exists():
            subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={node.datadir}", f"--user={USER}",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           check=True, capture_output=True)
        node.proc = subprocess.Popen(self._args(node, bootstrap), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"node{index} exited ({node.proc.returncode}):\n{self.log_tail(index)}")
            if node.is_synced():
                return
            time.sleep(0.25)
        raise RuntimeError(f"node{index} not synced within {timeout} s:\n{self.log_tail(index)}")

    def serving(self, database: str) -> int:
        """The node the service's connections use (its processlist holds clients of the database)."""
        for node in self.nodes:
            try:
                rows = node.query("SELECT COUNT(*) FROM information_schema.processlist WHERE db = %s", (database,))
            except pymysql.err.MySQLError:  # a node that is down serves nobody
                continue
            if rows[0][0]:
                return node.index
        raise RuntimeError(f"no node holds a connection to {database}")

    def size(self, index: int = 0) -> int:
        value = self.nodes[index].status("wsrep_cluster_size")
        return int(value) if value else 0

    def kill(self, index: int) -> None:
        """kill -9 of one node."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(30)

    def stop_node(self, index: int, timeout: float = 60) -> None:
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            node.proc.wait(timeout)

    def log_tail(self, index: int, lines: int = 25) -> str:
        try:
            text = (self.nodes[index].folder / "error.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def destroy(self) -> None:
        for node in self.nodes:
            self.kill(node.index)
        shutil.rmtree(self.folder, ignore_errors=True)
