"""The Files API of API.md end to end: the real service on each sink
(SQLite, MariaDB) and each blob store (local folder, SeaweedFS S3), through
port 8001 as a client uses it."""

from __future__ import annotations

import hashlib
import os
import time
from urllib.parse import unquote

import httpx

from testkit.service import Service, wait_for
from tests.files.conftest import StoreView

FILES = "/api/v1/files"
NAME = "翻译 结果 (最终).xlsx"


def upload(service: Service, data: bytes, filename: str | None = NAME, **params: str) -> httpx.Response:
    query = {"filename": filename, **params} if filename is not None else params
    return service.http.post(FILES, params=query, content=data, headers={"content-type": "application/vnd.ms-excel"})


def test_upload_is_readable_at_once_with_its_metadata(files_service: Service) -> None:
    data = os.urandom(300_000)
    answer = upload(files_service, data, session_id="s-1", owner_id="u-1", tags="draft,zh")
    assert answer.status_code == 201, answer.text
    file = answer.json()
    digest = hashlib.sha256(data).hexdigest()
    assert answer.headers["etag"] == f'"{digest}"'
    assert file["sha256"] == digest and file["size"] == len(data) and file["filename"] == NAME
    assert file["session_id"] == "s-1" and file["owner_id"] == "u-1" and file["tags"] == ["draft", "zh"]
    assert file["content_type"] == "application/vnd.ms-excel" and file["created_at"].endswith("Z")
    # Read-your-writes: no flush, no wait.
    assert files_service.http.get(f"{FILES}/{file['file_id']}").json() == file
    listed = files_service.http.get(FILES, params={"session_id": "s-1"}).json()
    assert [f["file_id"] for f in listed["items"]] == [file["file_id"]]
    content = files_service.http.get(f"{FILES}/{file['file_id']}/content")
    assert content.status_code == 200 and content.content == data
    assert content.headers["content-type"] == "application/vnd.ms-excel"
    assert content.headers["content-length"] == str(len(data)) and content.headers["etag"] == f'"{digest}"'
    disposition = content.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == NAME
    head = files_service.http.head(f"{FILES}/{file['file_id']}/content")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(data))


def test_multipart_upload_keeps_fields_and_the_part_filename(files_service: Service) -> None:
    data = b"sheet,row\n" * 5000
    answer = files_service.http.post(FILES, files={"file": (NAME, data, "text/csv")},
                                     data={"session_id": "s-2", "owner_id": "o", "tags": "a, b"})
    assert answer.status_code == 201, answer.text
    file = answer.json()
    assert (file["filename"], file["content_type"], file["size"]) == (NAME, "text/csv", len(data))
    assert (file["session_id"], file["owner_id"], file["tags"]) == ("s-2", "o", ["a", "b"])
    assert files_service.http.get(f"{FILES}/{file['file_id']}/content").content == data


def test_ranges_etags_and_their_refusals(files_service: Service) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    file = upload(files_service, data).json()
    url = f"{FILES}/{file['file_id']}/content"
    for header, expected, content_range in (("bytes=0-0", data[:1], "bytes 0-0/10240"),
                                            ("bytes=100-199", data[100:200], "bytes 100-199/10240"),
                                            ("bytes=10000-", data[10000:], "bytes 10000-10239/10240"),
                                            ("bytes=-5", data[-5:], "bytes 10235-10239/10240"),
                                            ("bytes=10200-99999", data[10200:], "bytes 10200-10239/10240")):
        answer = files_service.http.get(url, headers={"range": header})
        assert answer.status_code == 206, header
        assert answer.content == expected and answer.headers["content-range"] == content_range, header
    for bad in ("bytes=10240-", "bytes=5-2", "bytes=0-1,4-5", "items=0-1", "bytes=x-y", "bytes=-0"):
        answer = files_service.http.get(url, headers={"range": bad})
        assert answer.status_code == 416, bad
        assert answer.json()["error_code"] == "RANGE_NOT_SATISFIABLE"
    etag = f'"{file["sha256"]}"'
    assert files_service.http.get(url, headers={"if-none-match": etag}).status_code == 304
    assert files_service.http.get(url, headers={"if-none-match": '"other"'}).status_code == 200


def test_bad_uploads_are_refused_and_leave_nothing(files_service: Service, store_view: StoreView) -> None:
    http = files_service.http
    for answer, field in ((upload(files_service, b"x", filename=None), "filename"),
                          (upload(files_service, b"x", filename="a/b.txt"), "filename"),
                          (upload(files_service, b"x", tags=",".join(f"t{i}" for i in range(40))), "tags"),
                          (http.post(FILES, files={"file": ("", b"abc")}), "filename"),
                          (http.post(FILES, files={"other": ("a.txt", b"abc")}), "file")):
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field
    garbled = http.post(FILES, content=b"--xx\r\nnot a form", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert garbled.status_code in (400, 422) and garbled.json()["error_code"]
    assert http.get(FILES).json()["items"] == []
    assert store_view.contents() == []


def test_unknown_ids_answer_404(files_service: Service) -> None:
    http = files_service.http
    missing = "00000000-0000-0000-0000-000000000000"
    for answer in (http.get(f"{FILES}/{missing}"), http.get(f"{FILES}/{missing}/content"),
                   http.head(f"{FILES}/{missing}/content"), http.delete(f"{FILES}/{missing}"),
                   http.post(f"{FILES}/{missing}/presign", json={})):
        assert answer.status_code == 404
        if answer.content:
            assert answer.json()["error_code"] == "FILE_NOT_FOUND"
    answer = http.post(f"{FILES}/uploads/{missing}/complete", json={})
    assert answer.status_code == 404 and answer.json()["error_code"] == "UPLOAD_NOT_FOUND"


def test_lists_filter_and_page_newest_first(files_service: Service) -> None:
    made = []
    for i in range(7):
        made.append(upload(files_service, f"file {i}".encode(), session_id="s" if i % 2 else "t",
                           tags="even" if i % 2 == 0 else "odd").json())
    csv = files_service.http.post(FILES, params={"filename": "x.csv"}, content=b"a",
                                  headers={"content-type": "text/csv"}).json()
    seen, cursor = [], None
    while True:
        page = files_service.http.get(FILES, params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [f["file_id"] for f in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [csv["file_id"]] + [f["file_id"] for f in reversed(made)]
    evens = files_service.http.get(FILES, params={"tag": "even"}).json()["items"]
    assert [f["file_id"] for f in evens] == [f["file_id"] for f in reversed(made) if "even" in f["tags"]]
    by_type = files_service.http.get(FILES, params={"content_type": "text/csv"}).json()["items"]
    assert [f["file_id"] for f in by_type] == [csv["file_id"]]
    future = files_service.http.get(FILES, params={"created_from": "2999-01-01"}).json()["items"]
    assert future == []
    wrong = files_service.http.get(FILES, params={"limit": 0, "cursor": "garbage"})
    assert wrong.status_code == 422 and {e["field"] for e in wrong.json()["errors"]} == {"limit", "cursor"}
    other_filters = files_service.http.get(FILES, params={"tag": "odd", "cursor": cursor or page["next_cursor"] or
                                                          files_service.http.get(FILES, params={"limit": 1}).json()["next_cursor"]})
    assert other_filters.status_code == 422


def test_same_content_is_stored_once_and_removed_with_its_last_file(files_service: Service,
                                                                    store_view: StoreView) -> None:
    data = os.urandom(50_000)
    first = upload(files_service, data).json()
    second = upload(files_service, data, filename="copy.bin").json()
    assert first["sha256"] == second["sha256"] and first["file_id"] != second["file_id"]
    assert len(store_view.contents()) == 1
    assert files_service.http.delete(f"{FILES}/{first['file_id']}").json() == {"status": "deleted",
                                                                                "file_id": first["file_id"]}
    assert files_service.http.get(f"{FILES}/{first['file_id']}").status_code == 404
    assert files_service.http.get(f"{FILES}/{first['file_id']}/content").status_code == 404
    assert files_service.http.get(f"{FILES}/{second['file_id']}/content").content == data
    assert len(store_view.contents()) == 1
    files_service.http.delete(f"{FILES}/{second['file_id']}")
    assert store_view.contents() == []
    metrics = files_service.http.get("/metrics").text
    assert "persistence_file_dedup_hits_total 1.0" in metrics
    assert 'persistence_file_uploads_total{outcome="created"} 2.0' in metrics
    assert f'persistence_file_bytes_total{{direction="in"}} {2 * len(data)}.0' in metrics


def test_presigned_download_works_without_a_key_until_it_expires(files_service: Service) -> None:
    data = b"presigned bytes"
    file = upload(files_service, data).json()
    answer = files_service.http.post(f"{FILES}/{file['file_id']}/presign", json={"expires_in": 60})
    assert answer.status_code == 200
    signed = answer.json()
    assert signed["method"] == "GET" and signed["expires_at"].endswith("Z")
    got = httpx.get(signed["url"])
    assert got.status_code == 200 and got.content == data
    assert unquote(got.headers["content-disposition"].split("filename*=UTF-8''")[1]) == NAME
    tampered = signed["url"].replace("expires=", "expires=1") if "expires=" in signed["url"] \
        else signed["url"].replace("Expires=", "Expires=1")
    assert httpx.get(tampered).status_code == 403
    short = files_service.http.post(f"{FILES}/{file['file_id']}/presign", json={"expires_in": 1}).json()
    time.sleep(2.5)
    assert httpx.get(short["url"]).status_code == 403
    for bad in ({"expires_in": 0}, {"expires_in": 604801}, {"expires_in": "soon"}):
        assert files_service.http.post(f"{FILES}/{file['file_id']}/presign", json=bad).status_code == 422


def test_presigned_upload_then_complete(files_service: Service, store_view: StoreView) -> None:
    data = os.urandom(70_000)
    digest = hashlib.sha256(data).hexdigest()
    answer = files_service.http.post(f"{FILES}/uploads", json={"filename": NAME, "content_type": "text/plain",
                                                                "size": len(data), "tags": ["p"]})
    assert answer.status_code == 201, answer.text
    upload_ = answer.json()
    assert upload_["method"] == "PUT"
    file_id = upload_["file_id"]
    assert files_service.http.get(f"{FILES}/{file_id}").status_code == 404  # not a file until completed
    early = files_service.http.post(f"{FILES}/uploads/{file_id}/complete", json={})
    assert early.status_code == 409 and early.json()["error_code"] == "UPLOAD_NOT_RECEIVED"
    put = httpx.put(upload_["url"], content=data, headers=upload_["headers"])
    assert put.status_code in (200, 201, 204), put.text
    done = files_service.http.post(f"{FILES}/uploads/{file_id}/complete", json={"sha256": digest})
    assert done.status_code == 201, done.text
    assert done.json()["sha256"] == digest and done.json()["tags"] == ["p"]
    assert files_service.http.get(f"{FILES}/{file_id}/content").content == data
    again = files_service.http.post(f"{FILES}/uploads/{file_id}/complete")
    assert again.status_code == 201 and again.json() == done.json()
    assert len(store_view.contents()) == 1


def test_a_presigned_upload_that_does_not_match_is_dropped(files_service: Service, store_view: StoreView) -> None:
    for declared, body, claimed in ((10, b"12345", None), (5, b"12345", "0" * 64)):
        upload_ = files_service.http.post(f"{FILES}/uploads", json={"filename": "x.bin", "size": declared}).json()
        assert httpx.put(upload_["url"], content=body, headers=upload_["headers"]).status_code in (200, 201, 204)
        answer = files_service.http.post(f"{FILES}/uploads/{upload_['file_id']}/complete",
                                         json={"sha256": claimed} if claimed else {})
        assert answer.status_code == 422 and answer.json()["error_code"] == "CONTENT_MISMATCH"
        again = files_service.http.post(f"{FILES}/uploads/{upload_['file_id']}/complete")
        assert again.status_code == 404
    assert store_view.contents() == []
    for bad in ({"filename": "", "size": 1}, {"filename": "a", "size": -1}, {"size": 3},
                {"filename": "a", "size": 1, "tags": "notalist"}):
        assert files_service.http.post(f"{FILES}/uploads", json=bad).status_code == 422


def test_expired_uploads_are_swept(files_factory) -> None:
    service = files_factory("upload_expiry = 1.0\ngc_interval = 1.0\n")
    upload_ = service.http.post(f"{FILES}/uploads", json={"filename": "late.bin", "size": 3}).json()
    httpx.put(upload_["url"], content=b"abc", headers=upload_["headers"])
    time.sleep(1.5)
    wait_for(lambda: service.http.post(f"{FILES}/uploads/{upload_['file_id']}/complete").status_code == 404,
             30, "the expired upload to be swept")


def test_health_reports_the_blob_store(files_service: Service, store_kind: str) -> None:
    store = wait_for(lambda: files_service.http.get("/health").json().get("blob_store"), 10, "a store check")
    assert store["store"] == ("file" if store_kind == "local" else "s3") and store["status"] == "healthy"
