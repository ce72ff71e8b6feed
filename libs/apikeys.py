"""API keys: signed tokens that any gateway replica validates locally.

A key is `sk-dr-<claims>.<signature>`: the claims (key id, account id, tier, issue
time) as base64url JSON, and an HMAC-SHA256 of them under a signing key. The gateway
checks the signature with no database or Kafka round trip. The key id names which
signing key signed it (`kid` = "<signing key id>:<random>"), so signing keys can
rotate: a verifier holds several keys by id and tries the one the token names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

PREFIX = "sk-dr-"


class InvalidApiKey(ValueError):
    """The key is malformed, forged or signed by an unknown key."""


@dataclass(frozen=True)
class Principal:
    """Who a valid key belongs to."""

    account_id: str
    tier: str
    key_id: str
    issued_at: int


def new_key_id(signing_key_id: str = "k1") -> str:
    """A fresh key id under the given signing key."""
    return f"{signing_key_id}:{secrets.token_urlsafe(9)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, claims: str) -> str:
    return _b64(hmac.new(secret.encode(), claims.encode(), hashlib.sha256).digest())


def mint(account_id: str, tier: str, key_id: str, signing_keys: dict[str, str], issued_at: int | None = None) -> str:
    """Create the API key string for an account.

    Args:
        account_id: The account.
        tier: Its tier at issue time.
        key_id: "<signing key id>:<random>", from `new_key_id`.
        signing_keys: Signing secrets by id; the one named in `key_id` signs.
        issued_at: Unix seconds; now when omitted.

    Returns:
        The key, to give to the client once.
    """
    signer = key_id.split(":", 1)[0]
    if signer not in signing_keys:
        raise KeyError(f"no signing key {signer!r}")
    claims = _b64(orjson.dumps({"kid": key_id, "acc": account_id, "tier": tier, "iat": issued_at or int(time.time())}))
    return f"{PREFIX}{claims}.{_signature(signing_keys[signer], claims)}"


def verify(key: str, signing_keys: dict[str, str]) -> Principal:
    """Check a key's signature and return its principal.

    Raises:
        InvalidApiKey: With a message safe to show the client.
    """
    if not key.startswith(PREFIX) or key.count(".") != 1:
        raise InvalidApiKey("Incorrect API key provided.")
    claims, signature = key[len(PREFIX) :].split(".")
    try:
        data = orjson.loads(_unb64(claims))
        key_id, account_id, tier, issued = str(data["kid"]), str(data["acc"]), str(data["tier"]), int(data["iat"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise InvalidApiKey("Incorrect API key provided.") from exc
    secret = signing_keys.get(key_id.split(":", 1)[0])
    if secret is None or not hmac.compare_digest(signature, _signature(secret, claims)):
        raise InvalidApiKey("Incorrect API key provided.")
    return Principal(account_id=account_id, tier=tier, key_id=key_id, issued_at=issued)


def parse_signing_keys(value: str) -> dict[str, str]:
    """Parse DARKROOM_SIGNING_KEY: one secret (id "k1") or "id1=secret1,id2=secret2"."""
    if "=" not in value:
        return {"k1": value}
    keys = {}
    for part in value.split(","):
        key_id, _, secret = part.strip().partition("=")
        if key_id and secret:
            keys[key_id] = secret
    return keys
