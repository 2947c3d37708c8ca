"""persistence_client: the Python client of persistence-service.

PersistenceClient (threads) and AsyncPersistenceClient (asyncio) offer the
same methods; records and answers are persistence_api's Structs, the very
ones the service validates and answers with."""

from persistence_client.aio import AsyncPersistenceClient
from persistence_client.client import PersistenceClient
from persistence_client.errors import (ApiError, BadRequest, Conflict, FlushTimeout, Forbidden, NotFound,
                                       PayloadTooLarge, PersistenceError, QueueFull, RateLimited, ServerError,
                                       TransportError, Unauthorized, ValidationFailed, WriterClosed)
from persistence_client.outbox import Rejected, WriterStats
from persistence_client.protocol import Backoff

__all__ = ["ApiError", "AsyncPersistenceClient", "Backoff", "BadRequest", "Conflict", "FlushTimeout", "Forbidden",
           "NotFound", "PayloadTooLarge", "PersistenceClient", "PersistenceError", "QueueFull", "RateLimited",
           "Rejected", "ServerError", "TransportError", "Unauthorized", "ValidationFailed", "WriterClosed",
           "WriterStats"]
