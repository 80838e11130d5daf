"""Durable storage: the relational database and the content-addressed blob store."""

from aggregator_service.storage.blobs import LocalBlobStore
from aggregator_service.storage.database import Database

__all__ = ["Database", "LocalBlobStore"]
