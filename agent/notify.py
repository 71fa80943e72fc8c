"""systemd's notify protocol, written against it: one datagram per state change.

`$NOTIFY_SOCKET` names a Unix datagram socket (a leading `@` means the
abstract namespace). Outside systemd the variable is unset and every call is
a no-op, so the agent behaves the same under any supervisor.
"""

from __future__ import annotations

import _socket  # socket's C core: a datagram needs no more, socket.py costs 0.4 MiB
import logging
import os
import time
from collections.abc import Mapping

log = logging.getLogger("logmend.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: _socket.socket | None = None
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram; False (logged once) if it cannot."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = _socket.socket(
                    _socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(assignments).encode(), self.address)
            return True
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self.address, exc)
            self.address = None
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WatchdogSec, as systemd advises; None when no watchdog is asked of us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6 / 2
