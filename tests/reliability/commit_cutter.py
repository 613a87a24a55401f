"""A TCP proxy that lets a COMMIT reach the server and cuts the client off before the answer.

``CommitCutter`` listens on 127.0.0.1 (a free port) in front of one database server and
relays bytes both ways. It frames the client-to-server stream by the wire protocol, just
enough to recognise a COMMIT:

* PostgreSQL (protocol 3): the first message of a connection, and the one after an
  SSLRequest or GSSENCRequest, has no type byte (int32 length, int32 code); every later one is
  a type byte and an int32 length that counts itself. A COMMIT is a simple-query message,
  ``'Q'`` with the text ``COMMIT`` (asyncpg's ``Transaction.commit`` sends ``COMMIT;``
  so; SQLAlchemy commits through it).
* MySQL/MariaDB: packets of a 3-byte little-endian length and a 1-byte sequence id. A COMMIT
  is a command packet (sequence id 0) of ``COM_QUERY`` (0x03) with the text ``COMMIT``, which
  is what PyMySQL's (and aiomysql's) ``commit()`` sends.

Messages are forwarded whole, one at a time, so the proxy knows exactly which bytes the
server got. When the proxy is armed and a COMMIT goes by, the connection is marked cut
*before* the COMMIT is written to the server, so not one byte of any answer reaches the client
after that; the client socket is then aborted. The server side stays open until the server
has answered the COMMIT (the answer is read and checked, then dropped), so the cut write is
committed for certain, and the client only sees a connection lost during COMMIT. One arming
cuts one COMMIT, on whichever connection sends the next one.

Not handled, because the private test servers and clients never use them: TLS (asyncpg's
default ``sslmode=prefer`` is refused by a server without certificates, and aiomysql uses TLS
only when asked), MySQL's compressed protocol, and COMMIT sent through PostgreSQL's extended
query protocol. A stream the framing cannot make sense of is relayed as is, never cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Literal

Kind = Literal["postgresql", "mysql"]

_PG_UNTYPED_AGAIN = {80877103, 80877104}  # SSLRequest, GSSENCRequest: startup follows
_PG_COMMIT_OK = b"C\x00\x00\x00\x0bCOMMIT\x00"  # CommandComplete with the tag COMMIT
_MYSQL_COM_QUERY = 0x03
#: Bytes of the answer to a COMMIT that tell success from failure (see _commit_succeeded).
_ANSWER_BYTES = {"postgresql": len(_PG_COMMIT_OK), "mysql": 5}
_MAX_MESSAGE = 1 << 30
#: Seconds a cut connection waits for the server's answer to its COMMIT.
_ANSWER_WAIT = 10.0


def _is_commit_text(text: bytes) -> bool:
    return text.rstrip(b"\x00").strip().rstrip(b";").strip().upper() == b"COMMIT"


class _Framer:
    """Splits one connection's client-to-server bytes into whole protocol messages."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.buffer = bytearray()
        self.untyped = kind == "postgresql"  # PostgreSQL's startup messages have no type byte
        self.opaque = False  # framing failed: relay the rest as is

    def feed(self, data: bytes) -> list[bytes]:
        if self.opaque:
            return [data]
        self.buffer += data
        messages: list[bytes] = []
        while (size := self._size()) is not None and len(self.buffer) >= size:
            message = bytes(self.buffer[:size])
            del self.buffer[:size]
            if self.untyped and int.from_bytes(message[4:8], "big") not in _PG_UNTYPED_AGAIN:
                self.untyped = False
            messages.append(message)
        if self.opaque and self.buffer:
            messages.append(bytes(self.buffer))
            self.buffer.clear()
        return messages

    def _size(self) -> int | None:
        """The whole size of the message at the start of the buffer, if its header is in."""
        if self.kind == "mysql":
            if len(self.buffer) < 4:
                return None
            return 4 + int.from_bytes(self.buffer[:3], "little")
        header = 4 if self.untyped else 5
        if len(self.buffer) < header:
            return None
        length = int.from_bytes(self.buffer[header - 4 : header], "big")
        if not 4 <= length <= _MAX_MESSAGE:
            self.opaque = True
            return None
        return header - 4 + length

    def is_commit(self, message: bytes) -> bool:
        if self.opaque:
            return False
        if self.kind == "mysql":
            return (
                len(message) > 5
                and message[3] == 0
                and message[4] == _MYSQL_COM_QUERY
                and _is_commit_text(message[5:])
            )
        return not self.untyped and message[:1] == b"Q" and _is_commit_text(message[5:])


def _commit_succeeded(kind: Kind, answer: bytes) -> bool:
    """Whether the server's first answer bytes to a COMMIT say it committed."""
    if kind == "mysql":
        return len(answer) > 4 and answer[4] == 0x00  # an OK packet, not ERR (0xFF)
    return answer.startswith(_PG_COMMIT_OK)


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.cut = False
        #: The server's answer to the cut COMMIT, collected after the client is gone.
        self.answer = bytearray()
        self.answered = asyncio.Event()
        #: Set once the cut COMMIT's answer was judged and both sockets are closed.
        self.settled = asyncio.Event()


class CommitCutter:
    """The proxy. ``arm()``, then the next COMMIT through it is cut (see the module)."""

    def __init__(self, kind: Kind, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.kind = kind
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.armed = False
        #: COMMITs cut; of them, those the server answered with success after the cut.
        self.cuts = 0
        self.committed_on_server = 0
        self.commits_seen = 0
        self.connections = 0
        #: The latest client messages (kind, start of the text): what went through, for
        #: failure messages.
        self.recent: deque[str] = deque(maxlen=20)
        self._server: asyncio.Server | None = None
        #: Relay tasks, and the connection handlers that wait for them.
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._cut_links: list[_Link] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def arm(self) -> None:
        """Cut the next COMMIT that goes through, on any connection."""
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    async def settle(self) -> None:
        """Wait until every cut so far has its server answer judged (``committed_on_server``)."""
        links, self._cut_links = self._cut_links, []
        async with asyncio.timeout(_ANSWER_WAIT + 5):
            for link in links:
                await link.settled.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The handlers end once their relays have (a cut one after at most its answer wait).
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=_ANSWER_WAIT + 5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self.connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        link = _Link(client_writer, server_writer)
        to_server = asyncio.ensure_future(self._client_to_server(link, client_reader))
        to_client = asyncio.ensure_future(self._server_to_client(link, server_reader))
        for task in (to_server, to_client):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
            if link.cut:
                # The server must have the COMMIT done before its connection goes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.answered.wait(), _ANSWER_WAIT)
                if _commit_succeeded(self.kind, bytes(link.answer)):
                    self.committed_on_server += 1
        finally:
            for task in (to_server, to_client):
                task.cancel()
            await asyncio.gather(to_server, to_client, return_exceptions=True)
            client_writer.transport.abort()
            server_writer.transport.abort()
            link.settled.set()

    async def _client_to_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        framer = _Framer(self.kind)
        while data := await reader.read(65536):
            for message in framer.feed(data):
                commit = framer.is_commit(message)
                self._note(message, framer)
                if commit:
                    self.commits_seen += 1
                if commit and self.armed:
                    self.armed = False
                    link.cut = True  # from here on, nothing more reaches the client
                    self._cut_links.append(link)
                    link.server.write(message)
                    await link.server.drain()
                    link.client.transport.abort()
                    self.cuts += 1
                    return  # _accept waits for the server's answer, then closes
                link.server.write(message)
            await link.server.drain()

    async def _server_to_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            if link.cut:
                link.answer += data
                if len(link.answer) >= _ANSWER_BYTES[self.kind]:
                    link.answered.set()
                continue
            link.client.write(data)
            await link.client.drain()
        link.answered.set()  # the server closed: whatever came is all there is

    def _note(self, message: bytes, framer: _Framer) -> None:
        if framer.kind == "mysql":
            kind, text = f"mysql seq={message[3:4].hex()} cmd={message[4:5].hex()}", message[5:]
        elif framer.untyped or message[:1] not in (b"Q", b"P"):
            kind, text = f"pg {message[:1]!r}", b""
        else:
            kind, text = f"pg {message[:1]!r}", message[5:]
        self.recent.append(f"{kind} {text[:60]!r}")
