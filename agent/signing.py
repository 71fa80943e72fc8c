"""Ed25519 keys of the teams that sign packs (through `cryptography`, OpenSSL's).

A private key is a PKCS#8 PEM file, mode 0600. A public key file holds lines
`logmend-ed25519 BASE64 OWNER`: the key and the team whose packs it may sign,
so a host that trusts the file trusts that key for that owner's packs only.
A key is named by its id, `ed25519:` and the first 16 bytes of its SHA-256 in hex.

`cryptography` is imported by the functions that need it: it maps OpenSSL in,
which an agent that syncs no packs never needs (tests/test_footprint.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import LogmendError

KIND = "logmend-ed25519"
MAX_KEY_FILE = 64 * 1024


class KeyFileError(LogmendError):
    """A key file that cannot be read or used; names the file and why."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes  # 32 bytes
    owner: str

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def line(self) -> str:
        return f"{KIND} {base64.b64encode(self.raw).decode()} {self.owner}\n"


@dataclass(frozen=True, slots=True)
class Signature:
    key_id: str
    value: bytes  # 64 bytes

    def to_bytes(self) -> bytes:
        body = {"key": self.key_id, "signature": base64.b64encode(self.value).decode()}
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Signature:
        """Raises ValueError for anything that is not one."""
        try:
            body = json.loads(raw)
            value = base64.b64decode(body["signature"], validate=True)
            key = body["key"]
        except (
            ValueError,
            KeyError,
            TypeError,
            binascii.Error,
            UnicodeDecodeError,
            RecursionError,
        ):
            raise ValueError("signature.json is not a logmend signature") from None
        if not isinstance(key, str) or len(value) != 64 or len(key) > 64:
            raise ValueError("signature.json is not a logmend signature")
        return cls(key, value)


def key_id(raw: bytes) -> str:
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def generate(owner: str, prefix: Path) -> tuple[Path, Path]:
    """A new key pair: PREFIX.key (private, 0600, never overwritten) and PREFIX.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.packs import NAME

    if not NAME.fullmatch(owner):
        raise KeyFileError(f"keygen: owner {owner!r} is not a plain name")
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"keygen: {path} exists; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    _write_new(private_path, pem, 0o600)
    _write_new(public_path, PublicKey(raw, owner).line().encode(), 0o644)
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)


def load_private(path: Path) -> Any:
    """An Ed25519 private key from its PEM file (refused if others may read it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        if path.stat().st_mode & 0o077:
            raise KeyFileError(f"{path}: a private key must be readable by its owner only (0600)")
        data = _read_small(path)
        key = serialization.load_pem_private_key(data, password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def sign(private_key: Any, message: bytes) -> Signature:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return Signature(key_id(raw), private_key.sign(message))


def load_public(path: Path) -> list[PublicKey]:
    """The keys of a public key file (blank lines and `#` comments allowed)."""
    from agent.packs import NAME

    try:
        text = _read_small(path).decode("utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a public key file (not UTF-8)") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            raw = base64.b64decode(parts[1], validate=True) if len(parts) == 3 else b""
        except binascii.Error:
            raw = b""
        if len(parts) != 3 or parts[0] != KIND or len(raw) != 32 or not NAME.fullmatch(parts[2]):
            raise KeyFileError(f"{path}:{number}: expected `{KIND} BASE64 OWNER`")
        keys.append(PublicKey(raw, parts[2]))
    if not keys:
        raise KeyFileError(f"{path}: no key in it")
    return keys


def trusted_keys(paths: list[Path]) -> dict[str, PublicKey]:
    """Every key of the files, by id; one id claimed for two owners is refused."""
    found: dict[str, PublicKey] = {}
    for path in paths:
        for key in load_public(path):
            earlier = found.get(key.key_id)
            if earlier is not None and earlier.owner != key.owner:
                raise KeyFileError(
                    f"{path}: key {key.key_id} is trusted for {earlier.owner} elsewhere,"
                    f" here for {key.owner}"
                )
            found[key.key_id] = key
    return found


def verify_signature(key: PublicKey, signature: Signature, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key.raw).verify(signature.value, message)
    except InvalidSignature:
        return False
    return True


def _read_small(path: Path) -> bytes:
    with path.open("rb") as source:
        data = source.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path}: over {MAX_KEY_FILE} bytes, not a key file")
    return data
