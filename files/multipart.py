"""A multipart/form-data upload read as a stream: the `file` part's bytes
are handed on as they arrive (to the blob store), the small fields
(`session_id`, `owner_id`, `tags`) are kept. Nothing is spooled to a temp
file first, unlike Starlette's request.form(), so a 2 GB upload is written
once and memory stays bounded."""

from __future__ import annotations

from urllib.parse import unquote

from python_multipart.multipart import MultipartParser, parse_options_header

from core.errors import ClientError, FieldError, Invalid

FIELDS = ("session_id", "owner_id", "tags")
MAX_FIELD_BYTES = 4096


class BadMultipart(ClientError):
    error_code = "INVALID_MULTIPART"


def boundary_of(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise BadMultipart("multipart/form-data needs a boundary parameter")
    return boundary


def _filename(options: dict[bytes, bytes]) -> str | None:
    """The part's filename; filename* (RFC 5987, UTF-8) wins over filename."""
    extended = options.get(b"filename*")
    if extended:
        charset, _, rest = extended.decode("latin-1").partition("'")
        _, _, encoded = rest.partition("'")
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    plain = options.get(b"filename")
    return None if plain is None else plain.decode("utf-8", errors="strict")


class MultipartUpload:
    """feed(chunk) -> the file part's bytes in that chunk; close() checks the form was whole."""

    def __init__(self, boundary: bytes) -> None:
        self.filename: str | None = None
        self.content_type: str | None = None
        self.fields: dict[str, str] = {}
        self._file_seen = False
        self._out: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: str | None = None  # "file", a field name, or "" for a part we skip
        self._field = bytearray()
        self._ended = False
        self._error: ClientError | None = None
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end})

    def feed(self, chunk: bytes) -> bytes:
        try:
            self._parser.write(chunk)
        except ClientError:
            raise
        except Exception as exc:  # the parser's own errors (MultipartParseError and kin): the client's body
            raise BadMultipart(f"the multipart body cannot be parsed: {exc}") from None
        if self._error is not None:
            raise self._error
        out, self._out = self._out, []
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        if not self._ended:
            raise BadMultipart("the multipart body ended before its closing boundary")
        if not self._file_seen:
            raise Invalid([FieldError("file", "a part named 'file' with the content is required")])

    # -- parser callbacks --------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if name == "file":
            if self._file_seen:
                self._error = Invalid([FieldError("file", "only one 'file' part is allowed")])
            self._file_seen = True
            self._part = "file"
            try:
                self.filename = _filename(options)
            except (UnicodeDecodeError, LookupError):
                self._error = Invalid([FieldError("filename", "the filename is not valid UTF-8")])
            content_type = self._headers.get(b"content-type")
            self.content_type = content_type.decode("latin-1") if content_type else None
        else:
            self._part = name if name in FIELDS else ""
            self._field = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._out.append(data[start:end])
        elif self._part:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                self._error = Invalid([FieldError(self._part, f"must be at most {MAX_FIELD_BYTES} bytes")])

    def _part_end(self) -> None:
        if self._part and self._part != "file":
            try:
                self.fields[self._part] = self._field.decode("utf-8")
            except UnicodeDecodeError:
                self._error = Invalid([FieldError(self._part, "is not valid UTF-8")])
        self._part = None

    def _end(self) -> None:
        self._ended = True
