"""Unit tests of the storage service."""
