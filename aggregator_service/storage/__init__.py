"""Durable storage: the relational database and the content-addressed blob store."""

from aggregator_service.storage.blobs import BlobStore, LocalBlobStore, open_blob_store
from aggregator_service.storage.database import Database

__all__ = ["BlobStore", "Database", "LocalBlobStore", "open_blob_store"]
