"""Presigned URLs the service signs itself (the local store has no signer of
its own): HMAC-SHA256 over the method, the file id and the expiry, with
files.signing_secret, or with a random key kept beside the content so every
process of the service (and a restart) signs alike."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from core.errors import ClientError

KEY_FILE = ".signing-key"


class SignatureRefused(ClientError):
    status = 403
    error_code = "SIGNATURE_INVALID"


class SignatureExpired(SignatureRefused):
    error_code = "URL_EXPIRED"


def load_key(secret: str, folder: Path | None) -> bytes:
    """The signing key: the configured secret, else the key file in folder (made once)."""
    if secret:
        return secret.encode()
    if folder is None:
        raise ValueError("files.signing_secret is required when the store is not a local folder")
    path = folder / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    temp = folder / f"{KEY_FILE}.{os.getpid()}"
    temp.write_bytes(secrets.token_bytes(32))
    os.chmod(temp, 0o600)
    try:
        os.link(temp, path)  # the first process wins; the others read its key
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    return path.read_bytes()


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, method: str, file_id: str, expires: int) -> str:
        message = f"{method}\n{file_id}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, method: str, file_id: str, expires_in: int) -> tuple[str, int]:
        """The query string of a URL valid for expires_in seconds, and its expiry (unix seconds)."""
        expires = int(time.time()) + expires_in
        return f"expires={expires}&signature={self.sign(method, file_id, expires)}", expires

    def check(self, method: str, file_id: str, expires: str | None, signature: str | None) -> None:
        """Raise SignatureRefused unless the URL was signed by this service for
        this method and file, and SignatureExpired when it was but is past its expiry."""
        if not expires or not signature or not expires.isdigit() or len(expires) > 12:
            raise SignatureRefused("The URL is not signed: it needs expires and signature.")
        if not hmac.compare_digest(self.sign(method, file_id, int(expires)).encode(), signature.encode()):
            raise SignatureRefused("The URL's signature does not match: it was altered or not issued here.")
        if int(expires) < time.time():
            raise SignatureExpired("The URL has expired; ask for a new one.")
