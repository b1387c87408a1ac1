"""A small HTTP/1.1 keep-alive GET client on asyncio streams and h11.

Why not httpx: on this kind of loaded two-core machine httpx's pool managed ~50-140 GETs/s at
64 concurrent requests where plain asyncio streams managed ~2,000/s to the same server; the
reconciler's whole job is many small GETs, so it keeps its own minimal client (GET only,
plain HTTP or HTTPS, one request per connection at a time, connections reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import h11

READ_CHUNK = 65_536
#: The largest answer read (a listing of 100,000 runs fits): an engine, or a proxy before it,
#: that sends more, or without end, gets an error instead of the reconciler's memory.
MAX_BODY_BYTES = 128 * 1024 * 1024


class HttpTimeout(Exception):
    """No complete answer within the timeout."""


class HttpConnectionError(Exception):
    """The connection failed or the server broke the protocol."""


class HttpRequestError(Exception):
    """The request cannot be sent as given (h11 refuses it); sending it again cannot help."""


class HttpResponseTooLarge(HttpRequestError):
    """The answer is larger than `MAX_BODY_BYTES`; asking again would only repeat it."""


# A connection that failed in one of these ways is broken, whatever the request was.
_BROKEN = (OSError, h11.RemoteProtocolError, HttpConnectionError)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status_code: int
    body: bytes


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.answered = False  # a byte of the current answer has arrived

    def still_open(self) -> bool:
        """False once the server has closed it (servers drop idle keep-alive connections)."""
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class KeepAliveClient:
    """GETs against one base URL with at most `max_connections` open connections."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 64,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL {base_url!r} must be http(s)://host[:port][/path]")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._authority = parts.netloc
        self._timeout = timeout
        self._headers = [(k, v) for k, v in (headers or {}).items()]
        for name, value in self._headers:
            try:
                h11.Request(method="GET", target="/", headers=[("Host", "x"), (name, value)])
            except h11.LocalProtocolError:
                # Not h11's message: it would quote the value, and that may be a secret.
                raise ValueError(f"header {name!r}: illegal name or value") from None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def _open(self) -> _Connection:
        ssl_context = ssl.create_default_context() if self._tls else None
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=ssl_context)
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.still_open():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.answered = False
            self._idle.append(conn)
        else:
            conn.close()

    async def _exchange(self, conn: _Connection, request: h11.Request) -> HttpResponse:
        conn.writer.write(conn.h11.send(request) + conn.h11.send(h11.EndOfMessage()))
        await conn.writer.drain()
        status = 0
        body = bytearray()
        while True:
            event = conn.h11.next_event()
            if event is h11.NEED_DATA:
                data = await conn.reader.read(READ_CHUNK)
                conn.answered = conn.answered or bool(data)
                conn.h11.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    # The connection is closed by the caller (`_round_trip`), mid-answer.
                    raise HttpResponseTooLarge(f"answer larger than {MAX_BODY_BYTES} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return HttpResponse(status, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpConnectionError("server closed the connection mid-answer")

    async def _round_trip(self, conn: _Connection, request: h11.Request) -> HttpResponse:
        try:
            response = await self._exchange(conn, request)
        except BaseException:
            # Failed, timed out or cancelled mid-request: the connection is in an unknown
            # state, so it is closed rather than pooled (or left open, unreferenced).
            conn.close()
            raise
        self._release(conn)
        return response

    async def _send(self, request: h11.Request) -> HttpResponse:
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._round_trip(conn, request)
            except _BROKEN:
                if conn.answered:
                    raise
                # No byte of an answer: the server closed the idle connection as we sent (its
                # keep-alive timeout). That says nothing about the engine, and a GET is safe
                # to repeat, so send it again at once on a fresh connection.
        return await self._round_trip(await self._open(), request)

    async def get(self, path: str, params: dict[str, str] | None = None) -> HttpResponse:
        """One GET; `path` must already be percent-encoded."""
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        try:
            request = h11.Request(
                method="GET",
                target=target,
                headers=[("Host", self._authority), ("Accept", "application/json"), *self._headers],
            )
        except h11.LocalProtocolError as exc:
            raise HttpRequestError(f"cannot send GET {target!r}: {exc}") from None
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._send(request)
            except TimeoutError:
                raise HttpTimeout(f"timed out after {self._timeout:g} s") from None
            except h11.LocalProtocolError as exc:
                raise HttpRequestError(f"cannot send GET {target!r}: {exc}") from None
            except (OSError, h11.RemoteProtocolError) as exc:
                raise HttpConnectionError(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
