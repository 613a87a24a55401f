"""Driver-level SQL for the store's hot paths, cached per dialect and call shape.

Why: through SQLAlchemy every statement costs a Core rebuild, a compile-cache lookup, a
greenlet switch and per-column result processors, several times the driver's own work. The
hot paths (append, turn, newest-N, session listing, get_session) therefore run hand-written
SQL straight on the pooled driver connection (asyncpg, aiomysql, aiosqlite). A :class:`Lane`
holds what differs per dialect: placeholders, how values are bound (UUIDs as 32 hex
characters and UTC wall-clock datetimes on SQLite/MySQL, exactly as SQLAlchemy's types store
them) and how rows become records, with the same Python types SQLAlchemy returns.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import json.decoder
import json.scanner
import sqlite3
import uuid
import weakref
from datetime import UTC, datetime
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import InvalidInputError
from .records import Message, Session
from .validate import decode_document

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    #: A message row of an SQLite write: (id, session, role, content, metadata, created_at).
    SqliteRow = tuple[Any, Any, str, str, str, Any]
    #: One session's part of a group: its bump statement and parameters, its message rows.
    SqliteJob = tuple[str, Sequence[Any], Sequence[SqliteRow]]

T = TypeVar("T")
R = TypeVar("R")

#: Columns in record field order, so ``Record(*row)`` needs no name lookup.
SESSION_COLUMNS = (
    "id, user_id, tenant_id, agent_id, title, metadata, created_at, updated_at, "
    "last_seq, state_version, parent_session_id, forked_at_seq"
)
MESSAGE_COLUMNS = "id, session_id, seq, role, content, metadata, created_at"
_INSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, seq, role, content, metadata, created_at) VALUES "
)
_INSERT_STATE = (
    "INSERT INTO agent_state (id, session_id, version, state, created_at, at_seq) VALUES "
)


_new_object = object.__new__
_from_iso = datetime.fromisoformat
_set_slot = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def _slot_setters(record: type, names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of a frozen record, in the order ``names`` lists its fields (all)."""
    fields = names.split(", ")
    if sorted(fields) != sorted(field.name for field in dataclasses.fields(record)):
        raise RuntimeError(f"{record.__name__}'s fields changed: update mofa_persist.sql")
    return tuple(vars(record)[name].__set__ for name in fields)


# Rows become records a column at a time: each field of every record is set by a C loop
# (map over the slot's setter), with no Python frame per row or field. A frozen dataclass's
# __init__ would set each field through object.__setattr__; per row that was most of a read's
# cost beyond the driver's own.
_MESSAGE_SLOTS = _slot_setters(Message, MESSAGE_COLUMNS)
_SESSION_SLOTS = _slot_setters(Session, SESSION_COLUMNS)
_drain: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend
_UUID_INT = vars(uuid.UUID)["int"].__set__
_UUID_SAFE = vars(uuid.UUID)["is_safe"].__set__
_UTC_SUFFIX = "+00:00"


def _records(
    record: type[R], setters: Sequence[Callable[[Any, Any], None]], columns: Sequence[Any], n: int
) -> list[R]:
    """``n`` records of the frozen type ``record``, field ``i`` from ``columns[i]``."""
    records = list(map(_new_object, repeat(record, n)))
    for setter, column in zip(setters, columns, strict=True):
        _drain(map(setter, records, column))
    return records


# -- values that repeat from read to read
#
# An agent reads its newest messages again on every turn, and a page of sessions repeats its
# owners' ids: most ids, timestamps and small documents of a read were converted by an earlier
# one. Each cache maps a column's text to its converted value, bounded (emptied when full), so
# a read converts only what it has not seen lately. UUIDs and datetimes are immutable and are
# shared; a document is shared only by its cached template, and every read gets its own copy
# (a flat dict of immutable scalars, so a shallow copy is a whole one).

#: Entries of the UUID and datetime caches: about 200 bytes each (key text and value).
CACHE_SIZE = 2048
#: Entries of the document cache, whose documents are at most CACHED_DOCUMENT_CHARS of JSON
#: text (longer ones are not cached): a few KiB each at worst, about 1.5 MiB in all.
DOCUMENT_CACHE_SIZE = 512
CACHED_DOCUMENT_CHARS = 512
#: Reads of more rows than this (exports, whole histories) neither use nor fill the caches:
#: they seldom repeat, and would evict what does.
CACHED_READ_ROWS = 256
_uuid_cache: dict[Any, uuid.UUID] = {}
_time_cache: dict[Any, datetime] = {}
_document_cache: dict[str, dict[str, Any]] = {}
_uuid_get = _uuid_cache.get
_time_get = _time_cache.get
_document_get = _document_cache.get
_copy_dict = dict.copy
_SCALARS = frozenset({str, int, bool, type(None)})


def _remember(
    cache: dict[Any, Any], keys: Iterable[Any], values: Iterable[Any], size: int = CACHE_SIZE
) -> None:
    """Add ``keys`` -> ``values`` to ``cache``, emptied first once it holds ``size`` entries
    (one read adds at most its own rows beyond that)."""
    if len(cache) >= size:
        cache.clear()
    cache.update(zip(keys, values, strict=True))


def _flat(document: dict[str, Any]) -> bool:
    """Whether ``document`` holds only immutable scalars (a shallow copy is a deep one)."""
    for value in document.values():
        kind = type(value)
        if kind not in _SCALARS and not (kind is float and value - value == 0.0):
            return False  # a container, or a float that is not finite (NaN, infinity)
    return True


def hex_uuids(column: Sequence[Any]) -> list[uuid.UUID]:
    """:func:`uuid_from_hex` of each value, a column at a time (cached, see CACHE_SIZE)."""
    if len(column) > CACHED_READ_ROWS:
        return _hex_uuids(column)
    found = list(map(_uuid_get, column))
    if all(found):  # a UUID is always true
        return found  # type: ignore[return-value]
    values = _hex_uuids(column)
    _remember(_uuid_cache, column, values)
    return values


def _hex_uuids(column: Sequence[Any]) -> list[uuid.UUID]:
    n = len(column)
    if set(map(len, column)) != {32}:
        return [uuid_from_hex(value) for value in column]
    values: list[uuid.UUID] = list(map(_new_object, repeat(uuid.UUID, n)))
    _drain(map(_UUID_INT, values, map(int, column, repeat(16, n))))
    _drain(map(_UUID_SAFE, values, repeat(_SAFE_UNKNOWN, n)))
    return values


def documents(column: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`document` of each value, a column at a time; each a dict of its own."""
    kinds = set(map(type, column))
    if kinds == {dict}:
        return list(column)  # decoded for these rows by the driver's codec (asyncpg)
    if kinds != {str}:
        return [document(value) for value in column]
    if len(column) > CACHED_READ_ROWS:
        return _documents(column)
    found = list(map(_document_get, column))
    if None not in found:  # every value was cached
        return list(map(_copy_dict, found))  # type: ignore[arg-type]
    values = _documents(column)
    fresh = {
        text: _copy_dict(value)
        for text, value in zip(column, values, strict=True)
        if len(text) <= CACHED_DOCUMENT_CHARS and _flat(value)
    }
    if fresh:
        _remember(_document_cache, fresh.keys(), fresh.values(), DOCUMENT_CACHE_SIZE)
    return values


def _documents(column: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`document` of each JSON text, scanned a column at a time."""
    n = len(column)
    try:
        scanned = list(map(_scan_json, column, repeat(0, n)))
    except (StopIteration, ValueError):
        scanned = []
    # A StopIteration inside map ends the list early: the length check catches that too.
    if len(scanned) == n:
        values, ends = zip(*scanned, strict=True) if n else ((), ())
        if list(ends) == list(map(len, column)) and set(map(type, values)) <= {dict}:
            return list(values)
    return [document(value) for value in column]


def uuid_from_hex(text: str) -> uuid.UUID:
    """``uuid.UUID(hex=text)`` for the 32 hex digits SQLAlchemy stores, without UUID()'s
    handling of other spellings (a fifth of the cost of reading a message row)."""
    if len(text) != 32:
        return uuid.UUID(hex=text)
    value: uuid.UUID = _new_object(uuid.UUID)
    _set_slot(value, "int", int(text, 16))
    _set_slot(value, "is_safe", _SAFE_UNKNOWN)
    return value


class _Marks:
    """Hands out placeholders in order: ``?``, ``%s`` or ``$1, $2, ...``."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"${self.count}" if self.style == "numeric" else self.style


def _session_filter(mark: _Marks, scoped: tuple[str, ...], extra: str = "") -> str:
    conditions = [f"id = {mark()}"]
    if extra:
        conditions.append(f"{extra} = {mark()}")
    conditions += [f"{column} = {mark()}" for column in scoped]
    return " WHERE " + " AND ".join(conditions)


@functools.cache
def session_filter_sql(style: str, scoped: tuple[str, ...]) -> str:
    """``WHERE`` for one session in scope; parameters: id, then one per scoped column."""
    return _session_filter(_Marks(style), scoped)


@functools.cache
def get_session_sql(style: str, scoped: tuple[str, ...]) -> str:
    return f"SELECT {SESSION_COLUMNS} FROM sessions" + session_filter_sql(style, scoped)


@functools.cache
def session_exists_sql(style: str, scoped: tuple[str, ...], lock: bool = False) -> str:
    """The session's state_version; ``lock`` (MySQL) reads it with FOR UPDATE."""
    text = "SELECT state_version FROM sessions" + session_filter_sql(style, scoped)
    return text + " FOR UPDATE" if lock else text


@functools.cache
def messages_sql(
    style: str, scoped: tuple[str, ...], before: bool, after: bool, newest: bool, limit: bool
) -> str:
    """get_messages; parameters: session id, [id, scoped columns...,] [before,] [after,]
    [limit]."""
    mark = _Marks(style)
    conditions = [f"session_id = {mark()}"]
    if scoped:
        # Scoped: the session must be in scope, checked in the same statement.
        scope = " AND ".join([f"s.id = {mark()}", *(f"s.{c} = {mark()}" for c in scoped)])
        conditions.append(f"EXISTS (SELECT 1 FROM sessions s WHERE {scope})")
    if before:
        conditions.append(f"seq < {mark()}")
    if after:
        conditions.append(f"seq > {mark()}")
    sql = (
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(conditions)} "
        f"ORDER BY seq {'DESC' if newest else 'ASC'}"
    )
    if limit:
        sql += f" LIMIT {mark()}"
    return sql


@functools.cache
def list_sessions_sql(style: str, columns: tuple[str, ...], cursor: bool) -> str:
    """One page, newest first; parameters: one per filter column, [cursor x3,] limit."""
    mark = _Marks(style)
    conditions = [f"{column} = {mark()}" for column in columns]
    if cursor:
        # The first term bounds the index range; the second only breaks ties.
        conditions.append(f"updated_at <= {mark()}")
        conditions.append(f"(updated_at < {mark()} OR id < {mark()})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (
        f"SELECT {SESSION_COLUMNS} FROM sessions{where} "
        f"ORDER BY updated_at DESC, id DESC LIMIT {mark()}"
    )


@functools.cache
def insert_message_sql(style: str) -> str:
    mark = _Marks(style)
    return _INSERT_MESSAGE + "(" + ", ".join(mark() for _ in range(7)) + ")"


@functools.cache
def insert_state_sql(style: str) -> str:
    mark = _Marks(style)
    return _INSERT_STATE + "(" + ", ".join(mark() for _ in range(6)) + ")"


@functools.cache
def bump_sql(style: str, expected: bool, scoped: tuple[str, ...], packed: bool) -> str:
    """Reserve seq numbers and a state version. Parameters: see :func:`bump_params`, then
    id, [expected version,] one per scoped column.

    ``packed`` (MySQL/MariaDB, no UPDATE ... RETURNING): LAST_INSERT_ID(expr) hands one
    number back in the OK packet (cursor.lastrowid), which saves a SELECT; both new counters
    travel in it as ``last_seq * 2**32 + state_version`` (both are 32-bit INT columns). The
    expression is the first assignment, so it reads the old values under either MariaDB
    assignment mode.
    """
    mark = _Marks(style)
    if packed:
        assignments = (
            f"last_seq = LAST_INSERT_ID((last_seq + {mark()}) * 4294967296 "
            f"+ state_version + {mark()}) DIV 4294967296, "
            f"state_version = state_version + {mark()}, updated_at = {mark()}"
        )
    else:
        assignments = (
            f"updated_at = {mark()}, last_seq = last_seq + {mark()}, "
            f"state_version = state_version + {mark()}"
        )
    where = _session_filter(mark, scoped, "state_version" if expected else "")
    returning = "" if packed else " RETURNING last_seq, state_version"
    return f"UPDATE sessions SET {assignments}{where}{returning}"


def bump_params(packed: bool, now: Any, messages: int, states: int) -> list[Any]:
    """The leading parameters of :func:`bump_sql`, in the order of its placeholders."""
    return [messages, states, states, now] if packed else [now, messages, states]


def unpack_counters(packed: int) -> tuple[int, int]:
    """(last_seq, state_version) from the LAST_INSERT_ID value of a packed bump."""
    return packed >> 32, packed & 0xFFFFFFFF


# -- MySQL statements and max_allowed_packet
#
# pymysql sends each statement as text, values escaped into quoted literals, and the server
# refuses a statement longer than its max_allowed_packet (16 MiB by default on MariaDB) with
# error 1153 and drops the connection. Escaping doubles ``\``, ``'``, newlines and a few
# more, so a 12 MiB value can take 24 MiB. A row that would not fit gets its large values
# built first in user variables, from hex pieces that each fit (:func:`staging_statements`),
# and its INSERT names the variables; all in the write's own transaction.

#: A row whose values total at most this many characters is sent as is, unmeasured: at no
#: more than 4 bytes a character in a literal (UTF-8, or two per escaped ASCII character), its
#: INSERT stays under the 1,024,000 bytes at which aiomysql cuts executemany batches, and so
#: under any max_allowed_packet of at least 1 MiB (the smallest default any MySQL ever had).
FAST_CHARS = 250_000
#: Room in a statement for all but its large values: SQL text, ids, role, timestamps.
STATEMENT_SLACK = 2048
#: aiomysql's executemany cuts multi-row INSERTs at this many bytes (Cursor.max_stmt_length).
BATCH_BYTES = 1_024_000
#: pymysql writes each of these as two bytes in a literal (with NO_BACKSLASH_ESCAPES only
#: the quote is doubled: counting them all is an upper bound then).
_ESCAPED = "\\'\"\n\r\x1a\x00"


def literal_size(text: str) -> int:
    """At most how many bytes ``text`` takes as a quoted literal in a MySQL statement."""
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    return size + sum(text.count(char) for char in _ESCAPED) + 2


def packet_refusal(name: str, size: int, packet: int) -> InvalidInputError:
    return InvalidInputError(
        f"{name} is {size} bytes in UTF-8, more than this MySQL server can take in one value: "
        f"its max_allowed_packet is {packet} bytes (less {STATEMENT_SLACK} for the statement); "
        "raise max_allowed_packet on the server or store less"
    )


def plan_row(names: Sequence[str], values: Sequence[str], packet: int) -> tuple[bool, ...]:
    """Which of one row's large ``values`` to stage so that its INSERT fits in ``packet``.

    The largest go first, until the rest fits. A value is refused (``InvalidInputError``,
    before anything is written) when even staged it would not fit: the server builds it
    with CONCAT, whose result may not exceed max_allowed_packet either.
    """
    budget = packet - STATEMENT_SLACK
    for name, value in zip(names, values, strict=True):
        size = len(value) if value.isascii() else len(value.encode("utf-8"))
        if size > budget:
            raise packet_refusal(name, size, packet)
    sizes = [literal_size(value) for value in values]
    staged = [False] * len(values)
    total = sum(sizes)
    for index in sorted(range(len(values)), key=sizes.__getitem__, reverse=True):
        if total <= budget:
            break
        staged[index] = True
        total -= sizes[index]
    return tuple(staged)


def chunk_bytes(packet: int) -> int:
    """Bytes of a value that one staging statement carries: as X'..' each takes two."""
    return max(1, (packet - STATEMENT_SLACK) // 2)


def staging_statements(variable: str, data: bytes, packet: int) -> Iterator[str]:
    """Statements that build ``data`` in ``@variable``, each within ``packet``.

    Hex pieces cost exactly two bytes a byte whatever the text holds, and the variable is a
    binary string, so a piece may end inside a UTF-8 character: only the whole value is
    converted back to text (:func:`staged_value`).
    """
    step = chunk_bytes(packet)
    yield f"SET @{variable} = X'{data[:step].hex()}'"
    for start in range(step, len(data), step):
        yield f"SET @{variable} = CONCAT(@{variable}, X'{data[start : start + step].hex()}')"


def stage_variable(index: int) -> str:
    """The user variable that holds a statement's ``index``-th staged value."""
    return f"mofa_stage_{index}"


@functools.cache
def unstage_sql(count: int) -> str:
    """Frees ``count`` staged values, which would otherwise stay in the pooled connection."""
    return "SET " + ", ".join(f"@{stage_variable(index)} = NULL" for index in range(count))


def staged_value(variable: str) -> str:
    """The SQL of a staged value, as text of the connection's character set."""
    return f"CONVERT(@{variable} USING utf8mb4)"


@functools.cache
def staged_insert_sql(table: str, values: tuple[str | None, ...]) -> str:
    """INSERT of a row of ``table`` (messages or agent_state), ``%s`` for each ``None`` in
    ``values`` and the staged value of the variable named otherwise."""
    prefix = {"messages": _INSERT_MESSAGE, "agent_state": _INSERT_STATE}[table]
    marks = ("%s" if name is None else staged_value(name) for name in values)
    return prefix + "(" + ", ".join(marks) + ")"


class Lane:
    """One dialect's driver-level access: placeholders, value codecs and transactions."""

    #: Placeholder style of the driver: "?" (sqlite3), "%s" (pymysql) or "numeric" ($1).
    style = "?"
    #: A lone SELECT may run without BEGIN/COMMIT (atomic on its own).
    autocommit_reads = True

    # -- values in
    def uuid_in(self, value: uuid.UUID) -> Any:
        return value.hex  # CHAR(32), as SQLAlchemy's Uuid stores it without a native type

    def time_in(self, value: datetime) -> Any:
        # SQLAlchemy's SQLite DATETIME text format, of the UTC wall clock.
        wall = value.astimezone(UTC)
        return (
            f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d} "
            f"{wall.hour:02d}:{wall.minute:02d}:{wall.second:02d}.{wall.microsecond:06d}"
        )

    # -- values out (same types as the SQLAlchemy column types return)
    def uuid_out(self, value: Any) -> uuid.UUID:
        return uuid_from_hex(value)

    def time_out(self, value: Any) -> datetime:
        try:
            # SQLAlchemy's SQLite text has no offset: parsing it with one added is several
            # times faster than .replace(tzinfo=UTC) after, and yields the same UTC object.
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            parsed = datetime.fromisoformat(value)
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def uuids(self, column: Sequence[Any]) -> list[uuid.UUID]:
        """:meth:`uuid_out` of each value (none ``None``)."""
        return hex_uuids(column)

    def times(self, column: Sequence[Any]) -> list[datetime]:
        """:meth:`time_out` of each value (cached, see CACHE_SIZE)."""
        n = len(column)
        found = list(map(_time_get, column)) if n <= CACHED_READ_ROWS else [None]
        if all(found):  # a datetime is always true
            return found  # type: ignore[return-value]
        try:
            values = list(map(_from_iso, map(str.__add__, column, repeat(_UTC_SUFFIX, n))))
        except (TypeError, ValueError):
            return [self.time_out(value) for value in column]
        if n <= CACHED_READ_ROWS:
            _remember(_time_cache, column, values)
        return values

    def sessions(self, rows: Sequence[Sequence[Any]]) -> list[Session]:
        if not rows:
            return []
        (ids, users, tenants, agents, titles, metadata, created, updated, last_seqs, versions,
         parents, forked_at) = zip(*rows, strict=True)  # fmt: skip
        # A page usually repeats one user/tenant/agent: convert each distinct id once.
        distinct = list({*users, *tenants, *agents, *parents} - {None})
        known: dict[Any, uuid.UUID | None] = dict(zip(distinct, self.uuids(distinct), strict=True))
        known[None] = None
        owner = known.__getitem__
        columns = (
            self.uuids(ids),
            map(owner, users),
            map(owner, tenants),
            map(owner, agents),
            titles,
            documents(metadata),
            self.times(created),
            self.times(updated),
            last_seqs,
            versions,
            map(owner, parents),
            forked_at,
        )
        return _records(Session, _SESSION_SLOTS, columns, len(rows))

    def messages(self, rows: Sequence[Sequence[Any]]) -> list[Message]:
        if not rows:
            return []
        n = len(rows)
        ids, sessions, seqs, roles, contents, metadata, created = zip(*rows, strict=True)
        # One session per read: convert its id once.
        sid = self.uuid_out(sessions[0])
        columns = (
            self.uuids(ids),
            repeat(sid, n),
            seqs,
            roles,
            contents,
            documents(metadata),
            self.times(created),
        )
        return _records(Message, _MESSAGE_SLOTS, columns, n)

    # -- statements (aiosqlite: each call is one hop to the connection's thread)
    async def fetch(self, db: Any, sql: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await db.execute_fetchall(sql, params)
        return rows

    async def read(self, db: Any, sql: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """A lone SELECT outside any transaction (work run with ``own_transaction``), which
        ends whatever transaction it opened; on SQLite and PostgreSQL it runs in autocommit."""
        return await self.fetch(db, sql, params)

    async def execute(self, db: Any, sql: str, params: Sequence[Any]) -> int:
        """Run a statement; returns MySQL's lastrowid where that carries data, else 0."""
        await db.execute_fetchall(sql, params)
        return 0

    async def execute_many(self, db: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await db.executemany(sql, rows)

    async def bump_packed(
        self, db: Any, sql: str, params: Sequence[Any], sid: Any
    ) -> tuple[int, int] | None:
        raise NotImplementedError("packed bumps are MySQL's (no UPDATE ... RETURNING)")

    def closed(self, db: Any) -> bool:
        """Whether the driver already knows ``db`` was closed by the server (before any use)."""
        return False

    def unsent(self, error: BaseException) -> bool:
        """Whether ``error`` says the driver refused to send the statement at all."""
        return False

    async def begin(self, db: Any, write: bool) -> None:
        # BEGIN IMMEDIATE takes the write lock up front (see engine._configure_sqlite).
        await db.execute_fetchall("BEGIN IMMEDIATE" if write else "BEGIN", ())

    async def commit(self, db: Any) -> None:
        await db.commit()

    async def rollback(self, db: Any) -> None:
        await db.rollback()


_THEN_COMMIT = "; COMMIT"


class MySqlLane(Lane):
    style = "%s"
    # The connection is not in autocommit mode: even a SELECT opens a transaction to end.
    autocommit_reads = False

    def __init__(self) -> None:
        # Per driver connection: the session value is fixed when the connection is made.
        self._packets: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    async def max_packet(self, db: Any) -> int:
        """The connection's max_allowed_packet, asked once per connection."""
        packet = self._packets.get(db)
        if packet is None:
            rows = await self.fetch(db, "SELECT @@max_allowed_packet", ())
            packet = self._packets[db] = int(rows[0][0])
        return packet

    async def stage(self, db: Any, variable: str, data: bytes, packet: int) -> None:
        """Build ``data`` in ``@variable`` (see :func:`staging_statements`)."""
        async with db.cursor() as cursor:
            for statement in staging_statements(variable, data, packet):
                await cursor.execute(statement)  # no parameters: nothing to escape

    def time_in(self, value: datetime) -> Any:
        return value.astimezone(UTC).replace(tzinfo=None)  # DATETIME(6) holds the UTC wall clock

    def time_out(self, value: Any) -> datetime:
        result: datetime = value.replace(tzinfo=UTC)
        return result

    def times(self, column: Sequence[Any]) -> list[datetime]:
        return [value.replace(tzinfo=UTC) for value in column]

    async def fetch(self, db: Any, sql: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
        async with db.cursor() as cursor:
            await cursor.execute(sql, params)
            rows: Sequence[Sequence[Any]] = await cursor.fetchall()
            return rows

    async def read(self, db: Any, sql: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """The SELECT with its COMMIT in the same round trip (aiomysql always allows several
        statements): not in autocommit mode, a SELECT opens a transaction that holds the
        table's metadata lock until it ends, and a separate COMMIT would be a second trip."""
        async with db.cursor() as cursor:
            try:
                await cursor.execute(sql + _THEN_COMMIT, params)
            except Exception:
                # The COMMIT did not run: end the transaction here, if the connection can.
                with contextlib.suppress(Exception):
                    await db.rollback()
                raise
            rows: Sequence[Sequence[Any]] = await cursor.fetchall()
        return rows  # leaving the cursor read the COMMIT's answer

    async def execute(self, db: Any, sql: str, params: Sequence[Any]) -> int:
        async with db.cursor() as cursor:
            await cursor.execute(sql, params)
            return int(cursor.lastrowid or 0)

    async def bump_packed(
        self, db: Any, sql: str, params: Sequence[Any], sid: Any
    ) -> tuple[int, int] | None:
        """Run a packed :func:`bump_sql`; the new (last_seq, state_version), ``None`` when it
        matched no row.

        The counters come back in the OK packet, except when the packed value is 0 (a
        bump of nothing on a fresh session): an UPDATE that changed a row but reports insert
        id 0 has its row read back, which is exact (this transaction holds its lock and sees
        its own change) and keeps the caller from rerunning a bump that did happen. A row
        MariaDB skipped (0 rows) is ``None``; see ``writes.lean_write``.
        """
        async with db.cursor() as cursor:
            await cursor.execute(sql, params)
            if cursor.lastrowid:
                return unpack_counters(int(cursor.lastrowid))
            if not cursor.rowcount:
                return None
            await cursor.execute(
                "SELECT last_seq, state_version FROM sessions WHERE id = %s", [sid]
            )
            row = await cursor.fetchone()
            return (int(row[0]), int(row[1])) if row else None

    async def execute_many(
        self, db: Any, sql: str, rows: Sequence[Sequence[Any]], max_bytes: int = BATCH_BYTES
    ) -> None:
        # aiomysql rewrites INSERT ... VALUES into multi-row statements of at most max_bytes
        # (more only for a single row): one round trip for ordinary batches.
        async with db.cursor() as cursor:
            if max_bytes < BATCH_BYTES:
                cursor.max_stmt_length = max_bytes
            await cursor.executemany(sql, rows)

    async def begin(self, db: Any, write: bool) -> None:
        pass  # the first statement opens the transaction: no BEGIN round trip


class PgLane(Lane):
    style = "numeric"

    def uuid_in(self, value: uuid.UUID) -> Any:
        return value

    def time_in(self, value: datetime) -> Any:
        return value.astimezone(UTC)

    def uuid_out(self, value: Any) -> uuid.UUID:
        return value  # type: ignore[no-any-return]  # asyncpg's UUID, as SQLAlchemy returns it

    def time_out(self, value: Any) -> datetime:
        # asyncpg returns timestamptz in UTC already: no new object then.
        result: datetime = value if value.tzinfo is UTC else value.astimezone(UTC)
        return result

    def uuids(self, column: Sequence[Any]) -> list[uuid.UUID]:
        return list(column)

    def times(self, column: Sequence[Any]) -> list[datetime]:
        return [value if value.tzinfo is UTC else value.astimezone(UTC) for value in column]

    async def fetch(self, db: Any, sql: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
        # asyncpg prepares and caches the statement by its text.
        rows: Sequence[Sequence[Any]] = await db.fetch(sql, *params)
        return rows

    async def execute(self, db: Any, sql: str, params: Sequence[Any]) -> int:
        await db.execute(sql, *params)
        return 0

    async def execute_many(self, db: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await db.executemany(sql, rows)

    def closed(self, db: Any) -> bool:
        # asyncpg reads its socket all the time: a connection the server closed is known.
        return bool(db.is_closed())

    def unsent(self, error: BaseException) -> bool:
        # asyncpg refuses to start an operation while its protocol is not idle, before it
        # writes anything: how a connection shows whose server has just sent its goodbye
        # (FATAL, e.g. a terminated backend) when asyncpg has not yet seen the close. asyncpg
        # gives this no code, only InternalClientError and this text.
        return type(error).__name__ == "InternalClientError" and str(error).startswith(
            "cannot switch to state"
        )

    async def begin(self, db: Any, write: bool) -> None:
        await db.execute("BEGIN")

    async def commit(self, db: Any) -> None:
        await db.execute("COMMIT")

    async def rollback(self, db: Any) -> None:
        await db.execute("ROLLBACK")


def _aiosqlite_can_run_functions() -> bool:
    try:
        import aiosqlite
    except ImportError:
        return False
    connection = aiosqlite.Connection
    return callable(getattr(connection, "_execute", None)) and isinstance(
        getattr(connection, "_conn", None), property
    )


#: aiosqlite can run a function in its worker thread (``_execute``, on ``_conn``): a whole
#: write transaction then costs one thread hop instead of one per statement. Both names are
#: private, so this is checked, and writes fall back to a hop per statement without them.
SQLITE_ONE_HOP = _aiosqlite_can_run_functions()


async def sqlite_in_thread(db: Any, function: Callable[..., T], *args: Any) -> T:
    """Run ``function(sqlite3_connection, *args)`` in aiosqlite's thread (see SQLITE_ONE_HOP)."""
    result: T = await db._execute(lambda: function(db._conn, *args))
    return result


def sqlite_write(
    conn: sqlite3.Connection,
    bump: str,
    bump_params: Sequence[Any],
    messages: Sequence[SqliteRow],
    state: tuple[Any, Any, str, Any] | None,
) -> tuple[int, int] | None:
    """A whole turn on SQLite, in the worker thread: BEGIN IMMEDIATE, bump, inserts, COMMIT.

    ``messages`` are (id, session, role, content, metadata, created_at) and ``state`` is
    (id, session, document, created_at): seq and version come from the bump. Returns the new
    counters, or ``None`` (rolled back) when the bump matched no session.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        counters = _sqlite_turn(conn, bump, bump_params, messages, state)
        if counters is None:
            conn.rollback()
            return None
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return counters


def sqlite_write_parts(
    conn: sqlite3.Connection, jobs: Sequence[SqliteJob]
) -> list[tuple[int, int] | None]:
    """Plain appends to several sessions (bump, messages) in ONE transaction, in the worker
    thread: BEGIN IMMEDIATE, each job in a savepoint of its own, COMMIT. A job whose bump
    matched no row or whose statements failed is rolled back to its savepoint (``None``);
    the others commit."""
    found: list[tuple[int, int] | None] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for bump, params, rows in jobs:
            conn.execute("SAVEPOINT part")
            try:
                counters = _sqlite_turn(conn, bump, params, rows, None)
            except sqlite3.DatabaseError:
                counters = None
            if counters is None:
                conn.execute("ROLLBACK TO part")
            conn.execute("RELEASE part")
            found.append(counters)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return found


def _sqlite_turn(
    conn: sqlite3.Connection,
    bump: str,
    bump_params: Sequence[Any],
    messages: Sequence[SqliteRow],
    state: tuple[Any, Any, str, Any] | None,
) -> tuple[int, int] | None:
    """Bump, then insert with the numbers it reserved, inside the caller's transaction; the
    new counters, or ``None`` (nothing written) when the bump matched no session."""
    counters = conn.execute(bump, bump_params).fetchall()
    if not counters:
        return None
    last_seq, version = int(counters[0][0]), int(counters[0][1])
    first = last_seq - len(messages) + 1
    if messages:
        conn.executemany(
            insert_message_sql("?"),
            [(m[0], m[1], first + i, m[2], m[3], m[4], m[5]) for i, m in enumerate(messages)],
        )
    if state is not None:
        conn.execute(
            insert_state_sql("?"), (state[0], state[1], version, state[2], state[3], last_seq)
        )
    return last_seq, version


#: The scanner json.loads ends in, called directly: json.loads first runs two regular
#: expressions (leading and trailing whitespace) and two Python frames, most of its cost on
#: a small document. Same values: it is the same parser.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.decoder.JSONDecoder()  # type: ignore[arg-type]  # typeshed names the wrong type
)


def document(value: Any) -> dict[str, Any]:
    """:func:`~mofa_persist.validate.decode_document` with a fast path for JSON text."""
    if type(value) is dict:
        return value  # decoded for this row by the driver's codec (asyncpg): private already
    if type(value) is str:
        if value == "{}":  # the common empty document
            return {}
        try:
            loaded, end = _scan_json(value, 0)
        except (StopIteration, ValueError):
            loaded = end = None  # leading whitespace or malformed: json.loads decides below
        if end == len(value) and type(loaded) is dict:
            return loaded
    return decode_document(value)


def lane_for(kind: str) -> Lane:
    if kind == "mysql":
        return MySqlLane()
    if kind == "postgresql":
        return PgLane()
    return Lane()
