"""Connections bounded: what uvicorn's HTTP/1.1 protocol leaves open, closed here.

uvicorn times out idle keep-alive connections but not a client that opens a
connection and sends nothing, or trickles its headers a byte at a time; a few
hundred of those hold every descriptor. This protocol (uvicorn's own, with
two additions) gives a request's headers a deadline from its first byte or the
connection's start, and caps the connections one client address may hold.
Bodies get their deadline in the app, and work that holds memory or a thread
goes through a `Lane` of bounded width. Behind a reverse proxy these are a
second line; on its own the receiver still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0
PER_CLIENT = 64


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a per-address connection cap."""

    header_timeout: ClassVar[float] = HEADER_TIMEOUT
    per_client: ClassVar[int] = PER_CLIENT
    _by_address: ClassVar[dict[str, int]] = {}  # one event loop: no lock needed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._address = self.client[0] if self.client else ""
        held = self._by_address.get(self._address, 0) + 1
        self._by_address[self._address] = held
        if held > self.per_client:
            transport.close()  # connection_lost gives the count back
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        left = self._by_address.get(self._address, 1) - 1
        if left > 0:
            self._by_address[self._address] = left
        else:
            self._by_address.pop(self._address, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_request():
            self._disarm()  # headers are in; the app bounds the body
        elif self._deadline is None:
            self._arm()  # the first byte of a next request: its headers have a deadline too

    def _in_request(self) -> bool:
        cycle: Any = self.cycle
        return cycle is not None and not cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            assert self._deadline is not None
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self._in_request():
            self.transport.close()


class Busy(Exception):
    """No slot came free in time: answered 503 with Retry-After, and the client retries."""


class Lane:
    """At most `width` requests at once do this kind of work; one that waits past
    `patience` seconds for a slot is turned away.

    Uploads are held to a few at a time so that the bodies in memory are
    bounded (each up to --max-body, and decoding multiplies it), and so that
    work on the thread pool never takes every thread: /healthz and the other
    lanes always find one.
    """

    def __init__(self, width: int, patience: float) -> None:
        self.width = width
        self.patience = patience
        self._slots = asyncio.Semaphore(width)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.patience):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy from None
        try:
            yield
        finally:
            self._slots.release()
