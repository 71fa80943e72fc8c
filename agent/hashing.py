"""blake2b without `hashlib`.

Importing `hashlib` maps OpenSSL's libcrypto into the process: 3.5 MiB of
resident memory on every host, for a hash the interpreter has built in.
"""

from __future__ import annotations

try:
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter built without its own blake2
    from hashlib import blake2b

__all__ = ["blake2b"]
