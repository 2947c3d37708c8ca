"""Fixtures for the Files API: the service over each sink and each blob
store (the local folder, and a real SeaweedFS S3 server started once per
test run), and a view of what the store holds, to check that nothing is
left behind."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config

from testkit.service import Service

from testkit.seaweed import SeaweedS3



class StoreView:
    """What the blob store holds under the service's folder or prefix."""

    def __init__(self, url: str, access_key: str = "", secret_key: str = "") -> None:
        self.url = url
        parts = urlsplit(url)
        self.is_s3 = parts.scheme == "s3"
        if self.is_s3:
            self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
            endpoint = parse_qs(parts.query)["endpoint"][0]
            self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                                       aws_secret_access_key=secret_key, region_name="us-east-1",
                                       config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        else:
            self.root = Path("/" + url[len("file:///"):].lstrip("/"))

    def objects(self) -> list[str]:
        """Every object (content, upload, temp file), as a key relative to the store."""
        if self.is_s3:
            keys = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self.prefix + "/"):
                keys += [o["Key"][len(self.prefix) + 1:] for o in page.get("Contents", [])]
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix + "/")
            keys += [f"multipart:{u['Key']}" for u in uploads.get("Uploads", [])]
            return sorted(keys)
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                      if p.is_file() and not p.name.startswith(".signing-key"))

    def contents(self) -> list[str]:
        """Objects holding content the catalog refers to (not temp files)."""
        return [k for k in self.objects() if not k.startswith("tmp/")]


@pytest.fixture(params=["local", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """(files.url, the [files] TOML that points the service at it)."""
    if store_kind == "local":
        url = f"file:///{tmp_path / 'files'}"  # file:////abs: absolute (file:///rel is relative to the config)
        return url, f'[files]\nurl = "{url}"\n'
    server: SeaweedS3 = request.getfixturevalue("seaweed")
    url = f"s3://{server.bucket}/t{uuid.uuid4().hex[:12]}?endpoint={server.endpoint}"
    return url, (f'[files]\nurl = "{url}"\naccess_key = "{server.access_key}"\n'
                 f'secret_key = "{server.secret_key}"\n')


@pytest.fixture
def store_view(store_url: tuple[str, str], request: pytest.FixtureRequest) -> StoreView:
    url = store_url[0]
    if url.startswith("s3:"):
        server: SeaweedS3 = request.getfixturevalue("seaweed")
        return StoreView(url, server.access_key, server.secret_key)
    return StoreView(url)


@pytest.fixture
def files_factory(service_factory: Callable[..., Service], sink_url: str,
                  store_url: tuple[str, str]) -> Callable[..., Service]:
    """A service over this test's sink and store; extra [files] keys as TOML lines."""
    def make(files_toml: str = "", **overrides: Any) -> Service:
        return service_factory(sink_url, extra_toml=store_url[1] + files_toml, **overrides)
    return make


@pytest.fixture
def files_service(files_factory: Callable[..., Service]) -> Service:
    return files_factory()
