"""How handlers and adapters say what kind of failure happened."""

from __future__ import annotations


class TransientError(Exception):
    """A failure that will pass (a dependency is down): retry, never dead-letter."""


class RejectedMessage(Exception):
    """The handler cannot act on this message, ever: dead-letter it with this reason."""
