"""Unit tests of the decoder service."""
