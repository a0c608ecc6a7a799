"""API keys at rest: a config may hold a key's salted SHA-256 (`sha256:SALT:DIGEST`) instead of the key, so a
copied config file or a backup does not hand out access.

A plain salted SHA-256 is enough because inspector's keys are random (`inspector keys new` makes 256-bit ones):
nobody can search 2^256 keys, so a slow password hash would only cost the line CPU on every request. A
human-chosen key is the one case it does not protect; use generated keys. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

HASH_PREFIX = "sha256:"
_HASHED = re.compile(r"^sha256:([0-9a-f]{32}):([0-9a-f]{64})$")


def new_key() -> str:
    """A random 256-bit key, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_key(key: str, salt: bytes | None = None) -> str:
    """The config form of a key: `sha256:` + 16 bytes of salt + SHA-256(salt + key), all hex."""
    salt = secrets.token_bytes(16) if salt is None else salt
    return f"{HASH_PREFIX}{salt.hex()}:{hashlib.sha256(salt + key.encode()).hexdigest()}"


def is_hashed(configured: str) -> bool:
    return configured.startswith(HASH_PREFIX)


def check_configured(configured: str) -> None:
    """Refuse a configured value that starts like a hash but is not one (a truncated paste), naming the form."""
    if is_hashed(configured) and not _HASHED.match(configured):
        raise ValueError("a hashed key is sha256:<32 hex digits of salt>:<64 hex digits>; run `inspector keys hash`")


def key_matches(presented: str, configured: str) -> bool:
    """Whether a presented key is the configured one (given plainly or hashed), in constant time."""
    match = _HASHED.match(configured)
    if match is None:
        return hmac.compare_digest(presented.encode(), configured.encode())
    salt, digest = bytes.fromhex(match[1]), match[2]
    return hmac.compare_digest(hashlib.sha256(salt + presented.encode()).hexdigest(), digest)
