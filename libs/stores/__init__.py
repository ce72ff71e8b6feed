"""Ports and adapters for the document store and the blob store."""

from libs.stores.ports import BlobInfo, BlobStore, Document, DocumentStore, StoreUnavailable

__all__ = ["BlobInfo", "BlobStore", "Document", "DocumentStore", "StoreUnavailable"]
