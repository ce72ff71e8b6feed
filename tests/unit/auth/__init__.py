"""Unit tests of the auth service."""
