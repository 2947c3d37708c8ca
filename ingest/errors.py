"""The write path's one error map: every error a client can cause is a
core.errors.ClientError (answered by core.http.client_error); the spool's
refusals answer 503 with Retry-After."""

from __future__ import annotations

from typing import Any

from core.http import COMMON_HANDLERS, unavailable
from wal import SpoolError

EXCEPTION_HANDLERS: dict[Any, Any] = {**COMMON_HANDLERS, SpoolError: unavailable}
