"""Files (Phase 2): the wire types of API.md "Files", defined once and used to
validate, to encode answers and to generate /openapi.json.

File metadata is a record kind that does not pass through the spool: an
upload answers 201 only once its content and metadata are durable and
readable, so the query process writes the catalog (plugins/file_catalog.py)
during the request, after the blob store holds the bytes.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from msgspec import Meta, Struct

from persistence_api.translation import IsoTime, Text36, Text64

MAX_FILENAME_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_EXPIRES_IN = 604_800  # 7 days: the longest a SigV4 presigned URL may live
DEFAULT_EXPIRES_IN = 900
# Control characters would break headers and logs; '/' and '\\' would read as folders on a client's disk.
_BAD_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")
CONTENT_TYPE_PATTERN = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+([ \t]*;[^\x00-\x1f\x7f]*)?$"
_CONTENT_TYPE = re.compile(CONTENT_TYPE_PATTERN)

# Any Unicode but control characters, '/' and '\\'; not only spaces.
FILENAME_PATTERN = r"^[^\x00-\x1f\x7f/\\]*[^\x00-\x1f\x7f/\\\s][^\x00-\x1f\x7f/\\]*$"
Filename = Annotated[str, Meta(min_length=1, max_length=MAX_FILENAME_CHARS, pattern=FILENAME_PATTERN)]
Tag = Annotated[str, Meta(min_length=1, max_length=MAX_TAG_CHARS, pattern=r"^[^,\x00-\x1f]+$")]
Tags = Annotated[list[Tag], Meta(max_length=MAX_TAGS)]
ContentType = Annotated[str, Meta(min_length=3, max_length=MAX_CONTENT_TYPE_CHARS, pattern=CONTENT_TYPE_PATTERN)]
Size = Annotated[int, Meta(ge=0)]
ExpiresIn = Annotated[int, Meta(ge=1, le=MAX_EXPIRES_IN)]
Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


def filename_problem(name: str) -> str | None:
    """Why a filename cannot be stored, or None."""
    if not name.strip():
        return "must not be empty"
    if len(name) > MAX_FILENAME_CHARS:
        return f"must be at most {MAX_FILENAME_CHARS} characters"
    if _BAD_FILENAME.search(name):
        return "must not hold control characters, '/' or '\\'"
    return None


def content_type_problem(value: str) -> str | None:
    if len(value) > MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE.fullmatch(value):
        return "must be a media type such as text/csv or application/octet-stream"
    return None


class File(Struct, kw_only=True):
    file_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    session_id: str | None = None
    owner_id: str | None = None
    tags: list[str] = []
    created_at: IsoTime


class FileList(Struct, kw_only=True):
    items: list[File]
    next_cursor: str | None = None


class PresignRequest(Struct, forbid_unknown_fields=True):
    expires_in: ExpiresIn = DEFAULT_EXPIRES_IN


class PresignedUrl(Struct, kw_only=True):
    url: str
    method: Literal["GET", "PUT"]
    expires_at: IsoTime


class UploadRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    filename: Filename
    content_type: ContentType = "application/octet-stream"
    size: Size
    session_id: Text36 | None = None
    owner_id: Text64 | None = None
    tags: Tags = []
    expires_in: ExpiresIn | None = None  # default: files.upload_expiry


class PresignedUpload(Struct, kw_only=True):
    file_id: str
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: IsoTime


class CompleteRequest(Struct, forbid_unknown_fields=True):
    sha256: Sha256 | None = None


class FileDeleted(Struct, kw_only=True):
    status: Literal["deleted"] = "deleted"
    file_id: str
