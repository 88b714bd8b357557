"""Password hashing: argon2id (PHC strings) and imported Dovecot hashes.

New and changed passwords are hashed with argon2id (argon2-cffi). Hashes
imported from Dovecot keep their scheme prefix — `{SHA512-CRYPT}`,
`{BLF-CRYPT}`, `{ARGON2ID}` — and are verified as such; the store rehashes
them to argon2id after the first successful login. All of this is CPU-bound:
callers run it in a thread, never on the event loop.
"""
from __future__ import annotations

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from passlib.hash import sha512_crypt

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory defaults

SUPPORTED_IMPORT_SCHEMES = ("{SHA512-CRYPT}", "{BLF-CRYPT}", "{ARGON2ID}")


class UnknownHashScheme(ValueError):
    pass


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_importable(stored: str) -> None:
    """Refuse a hash we could never verify, at import time rather than at login."""
    if stored.startswith("$argon2id$"):
        return
    if not stored.startswith(SUPPORTED_IMPORT_SCHEMES):
        raise UnknownHashScheme(
            "unsupported hash scheme; use one of " + ", ".join(SUPPORTED_IMPORT_SCHEMES))


def verify_password(stored: str, password: str) -> bool:
    """True if `password` matches `stored`, whatever supported scheme it is in."""
    try:
        if stored.startswith("$argon2"):
            return _hasher.verify(stored, password)
        if stored.startswith("{ARGON2ID}"):
            return _hasher.verify(stored[len("{ARGON2ID}"):], password)
        if stored.startswith("{SHA512-CRYPT}"):
            return sha512_crypt.verify(password, stored[len("{SHA512-CRYPT}"):])
        if stored.startswith("{BLF-CRYPT}"):
            raw = stored[len("{BLF-CRYPT}"):].encode()
            # Dovecot writes $2y$; the bcrypt library verifies that variant as $2b$.
            if raw.startswith(b"$2y$"):
                raw = b"$2b$" + raw[4:]
            return bcrypt.checkpw(password.encode(), raw)
    except (VerificationError, InvalidHashError, ValueError):
        return False
    return False


def needs_rehash(stored: str) -> bool:
    if not stored.startswith("$argon2id$"):
        return True
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True
