"""Operations on whole databases: export, import, copy, prune and stats.

These are what the ``mofa-persist`` command runs, usable from Python as well. They work at the
Core level on ``store.engine`` with the model tables, not through the repository API, so that
ids, ``seq`` numbers, state versions, timestamps and a session's counters move EXACTLY (the API
would hand out new ones). Everything streams in keyset pages, so memory stays flat however long
a history is.

The export file is JSON Lines, described in ``docs/export-format.md``: a header line, then each
session followed by its messages, states and provider calls, then the calls of no session, then
an end line with the counts (so a truncated file is recognised).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, Final, Literal, cast

from sqlalchemy import String, delete, exists, func, insert, literal, select
from sqlalchemy import cast as sql_cast

from .engine import SQLITE_READ_ONLY
from .errors import InvalidInputError, PersistenceError
from .models import agent_state_table, api_calls_table, messages_table, sessions_table
from .records import API_CALL_STATUSES
from .translate import DRIVER_ERRORS, Failure, classify, to_backend_error
from .validate import check_role, check_text, check_title, encode_document

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import ColumnElement, Table
    from sqlalchemy.engine import RowMapping
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.sql.elements import KeyedColumnElement

    from .store import Store

FORMAT_NAME: Final = "mofa-persist"
FORMAT_VERSION: Final = 1
DEFAULT_BATCH: Final = 1000

Kind = Literal["session", "message", "state", "api_call"]
KINDS: tuple[Kind, ...] = ("session", "message", "state", "api_call")

s_t = sessions_table
m_t = messages_table
a_t = agent_state_table
c_t = api_calls_table

TABLES: dict[Kind, Table] = {"session": s_t, "message": m_t, "state": a_t, "api_call": c_t}
#: A session's rows in the order they are exported, copied and checksummed.
_CHILDREN: tuple[tuple[Kind, Table, str], ...] = (
    ("message", m_t, "seq"),
    ("state", a_t, "version"),
    ("api_call", c_t, "id"),
)
_JSON_COLUMNS = frozenset({"metadata", "state"})
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------- shared pieces


@dataclass(slots=True)
class Counts:
    """Rows per table; the unit of every report."""

    sessions: int = 0
    messages: int = 0
    states: int = 0
    api_calls: int = 0

    def add(self, kind: Kind, amount: int = 1) -> None:
        name = _PLURAL[kind]
        setattr(self, name, getattr(self, name) + amount)

    def merge(self, other: Counts) -> None:
        for name in _PLURAL.values():
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def total(self) -> int:
        return self.sessions + self.messages + self.states + self.api_calls

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _PLURAL.values()}


_PLURAL: dict[Kind, str] = {
    "session": "sessions",
    "message": "messages",
    "state": "states",
    "api_call": "api_calls",
}


@dataclass(frozen=True, slots=True)
class Selection:
    """Which sessions an operation covers; no field set means all of them.

    Fields combine with AND. Provider calls of no session (their session was deleted) belong
    to a selection unless it names one session; they are matched on their own tenant, user and
    agent columns.
    """

    session_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    tenant_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None

    def session_filters(self) -> list[ColumnElement[bool]]:
        filters: list[ColumnElement[bool]] = []
        if self.session_id is not None:
            filters.append(s_t.c.id == self.session_id)
        for name in ("user_id", "tenant_id", "agent_id"):
            value = getattr(self, name)
            if value is not None:
                filters.append(s_t.c[name] == value)
        return filters

    @property
    def includes_unattached_calls(self) -> bool:
        return self.session_id is None

    def unattached_call_filters(self) -> list[ColumnElement[bool]]:
        filters: list[ColumnElement[bool]] = [c_t.c.session_id.is_(None)]
        for name in ("user_id", "tenant_id", "agent_id"):
            value = getattr(self, name)
            if value is not None:
                filters.append(c_t.c[name] == value)
        return filters

    def as_dict(self) -> dict[str, str]:
        return {
            name: str(value)
            for name in ("session_id", "user_id", "tenant_id", "agent_id")
            if (value := getattr(self, name)) is not None
        }


def _jsonable(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def record_of(kind: Kind, row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row as its export line: ``type`` first, then every column under its own name."""
    record: dict[str, Any] = {"type": kind}
    for column in TABLES[kind].c:
        record[column.key] = _jsonable(row[column.key])
    return record


def canonical_line(kind: Kind, row: Mapping[Any, Any]) -> str:
    """One row as canonical JSON: sorted keys, so PostgreSQL's JSONB key order cannot matter.

    Rows read from any backend and rows parsed from a file give the same text when they hold
    the same data; checksums and conflict checks compare these.
    """
    record = record_of(kind, row)
    for name in _JSON_COLUMNS.intersection(record):
        if isinstance(record[name], str):  # encoded for writing; compare as data
            record[name] = json.loads(record[name])
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What verification compares: row counts and a sha256 over the canonical rows."""

    messages: int
    states: int
    api_calls: int
    sha256: str


class _Digest:
    """Accumulates a session's fingerprint one row at a time, in export order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._counts = Counts()

    def add(self, kind: Kind, row: Mapping[Any, Any]) -> None:
        self._hash.update(canonical_line(kind, row).encode())
        self._hash.update(b"\n")
        self._counts.add(kind)

    def result(self) -> Fingerprint:
        counts = self._counts
        return Fingerprint(counts.messages, counts.states, counts.api_calls, self._hash.hexdigest())


@contextlib.asynccontextmanager
async def _reading(store: Store) -> AsyncIterator[AsyncConnection]:
    """One read transaction: a consistent snapshot on every backend, without write locks."""
    async with store.engine.connect() as conn:
        if store.url.kind in ("sqlite", "memory"):
            await conn.execution_options(**{SQLITE_READ_ONLY: True})
        else:
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn


@contextlib.asynccontextmanager
async def _translated(store: Store, action: str) -> AsyncIterator[None]:
    """Driver failures become the public ``BackendError``, naming where the store points."""
    try:
        yield
    except PersistenceError:
        raise
    except DRIVER_ERRORS as error:
        raise to_backend_error(error, store.url, action) from error


async def _keyset(
    conn: AsyncConnection,
    table: Table,
    filters: list[ColumnElement[bool]],
    key: str,
    batch_size: int,
) -> AsyncIterator[RowMapping]:
    """Rows in ``key`` order, one page per query: memory holds one page, never the table."""
    column = table.c[key]
    after: Any = None
    while True:
        stmt = select(table).where(*filters)
        if after is not None:
            stmt = stmt.where(column > after)
        page = (await conn.execute(stmt.order_by(column).limit(batch_size))).mappings().all()
        for row in page:
            yield row
        if len(page) < batch_size:
            return
        after = page[-1][key]


async def _session_rows(
    conn: AsyncConnection, session: RowMapping, batch_size: int
) -> AsyncIterator[tuple[Kind, RowMapping]]:
    """A session's row, then its messages by seq, states by version and calls by id."""
    yield "session", session
    for kind, table, key in _CHILDREN:
        filters = [table.c.session_id == session["id"]]
        async for row in _keyset(conn, table, filters, key, batch_size):
            yield kind, row


async def _read_session(conn: AsyncConnection, session_id: uuid.UUID) -> RowMapping | None:
    return (await conn.execute(select(s_t).where(s_t.c.id == session_id))).mappings().first()


async def fingerprint(
    store: Store, session_id: uuid.UUID, *, batch_size: int = DEFAULT_BATCH
) -> Fingerprint | None:
    """The session's fingerprint in ``store``, or ``None`` if it is not there."""
    digest = _Digest()
    async with _translated(store, "read a session"), _reading(store) as conn:
        session = await _read_session(conn, session_id)
        if session is None:
            return None
        async for kind, row in _session_rows(conn, session, batch_size):
            digest.add(kind, row)
    return digest.result()


def _encoded(kind: Kind, values: Mapping[Any, Any], exact_floats: bool) -> dict[str, Any]:
    """Values ready for INSERT: JSON documents as validated text for the target dialect."""
    prepared = dict(values)
    for name in _JSON_COLUMNS.intersection(prepared):
        document = prepared[name]
        if isinstance(document, str):
            document = json.loads(document)
        prepared[name] = encode_document(f"{kind}.{name}", document, exact_floats=exact_floats)
    return prepared


def _is_key_clash(error: BaseException) -> bool:
    return classify(error) in (Failure.UNIQUE, Failure.FOREIGN_KEY)


# ---------------------------------------------------------------------- counting


async def count_selection(store: Store, selection: Selection) -> Counts:
    """How many rows ``selection`` covers: the total of an export's progress bar."""
    ids = select(s_t.c.id).where(*selection.session_filters())
    queries: dict[Kind, Any] = {
        "session": select(func.count()).select_from(s_t).where(*selection.session_filters()),
        "message": select(func.count()).select_from(m_t).where(m_t.c.session_id.in_(ids)),
        "state": select(func.count()).select_from(a_t).where(a_t.c.session_id.in_(ids)),
        "api_call": select(func.count()).select_from(c_t).where(c_t.c.session_id.in_(ids)),
    }
    counts = Counts()
    async with _translated(store, "count rows"), _reading(store) as conn:
        for kind, query in queries.items():
            counts.add(kind, int((await conn.execute(query)).scalar_one()))
        if selection.includes_unattached_calls:
            unattached = select(func.count()).where(*selection.unattached_call_filters())
            counts.add("api_call", int((await conn.execute(unattached)).scalar_one()))
    return counts


# ---------------------------------------------------------------------- export


def export_header(store: Store, selection: Selection) -> dict[str, Any]:
    return {
        "type": "header",
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "exported_at": _jsonable(datetime.now(UTC)),
        "source": store.url.kind,
        "selection": selection.as_dict(),
    }


async def iter_export(
    store: Store, selection: Selection, *, batch_size: int = DEFAULT_BATCH
) -> AsyncIterator[dict[str, Any]]:
    """Every line of an export as a dict: header, rows, end line; one snapshot, streamed.

    The whole export reads in one transaction, so it is consistent even while agents write.
    """
    yield export_header(store, selection)
    counts = Counts()
    async with _translated(store, "export"), _reading(store) as conn:
        sessions = _keyset(conn, s_t, selection.session_filters(), "id", batch_size)
        async for session in sessions:
            async for kind, row in _session_rows(conn, session, batch_size):
                counts.add(kind)
                yield record_of(kind, row)
        if selection.includes_unattached_calls:
            filters = selection.unattached_call_filters()
            async for row in _keyset(conn, c_t, filters, "id", batch_size):
                counts.add("api_call")
                yield record_of("api_call", row)
    yield {"type": "end", "counts": counts.as_dict()}


def dump_line(record: Mapping[str, Any]) -> str:
    """One JSON Lines line. Only ``\\n`` ends a line: JSON escapes it inside strings."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


async def export_jsonl(
    store: Store,
    out: IO[str],
    selection: Selection,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_row: Callable[[], None] | None = None,
) -> Counts:
    """Write an export to ``out`` one line at a time; returns what was written."""
    counts = Counts()
    async for record in iter_export(store, selection, batch_size=batch_size):
        out.write(dump_line(record))
        kind = record["type"]
        if kind in _PLURAL:
            counts.add(kind)
            if on_row is not None:
                on_row()
    return counts


# ---------------------------------------------------------------------- import: parsing


FieldCheck = Callable[[str, object, bool], object]


def _uuid(name: str, value: object, _exact: bool) -> uuid.UUID:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a UUID string, not {_json_type(value)}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInputError(f"{name} is not a valid UUID: {value[:64]!r}") from None


def _optional_uuid(name: str, value: object, exact: bool) -> uuid.UUID | None:
    return None if value is None else _uuid(name, value, exact)


def _time(name: str, value: object, _exact: bool) -> datetime:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be an ISO 8601 string, not {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"{name} is not an ISO 8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidInputError(f"{name} has no UTC offset: {value[:40]!r}")
    return parsed.astimezone(UTC)


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an integer, not {_json_type(value)}")
    if not minimum <= value <= _INT32_MAX:
        raise InvalidInputError(f"{name} must be between {minimum} and {_INT32_MAX}; got {value}")
    return value


def _count(name: str, value: object, _exact: bool) -> int:
    return _integer(name, value, 0)


def _ordinal(name: str, value: object, _exact: bool) -> int:
    return _integer(name, value, 1)


def _optional_count(name: str, value: object, exact: bool) -> int | None:
    return None if value is None else _count(name, value, exact)


def _document(name: str, value: object, exact: bool) -> str:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{name} must be a JSON object, not {_json_type(value)}")
    return encode_document(name, value, exact_floats=exact)


def _title(_name: str, value: object, _exact: bool) -> str | None:
    return check_title(value)


def _role(_name: str, value: object, _exact: bool) -> str:
    return check_role(value)


def _text(name: str, value: object, _exact: bool) -> str:
    return check_text(name, value)


def _bounded_text(limit: int, *, optional: bool) -> FieldCheck:
    def check(name: str, value: object, _exact: bool) -> str | None:
        if value is None and optional:
            return None
        text = check_text(name, value)
        if not 1 <= len(text) <= limit:
            raise InvalidInputError(f"{name} must be 1 to {limit} characters")
        return text

    return check


def _status(name: str, value: object, _exact: bool) -> str:
    if value not in API_CALL_STATUSES:
        raise InvalidInputError(
            f"{name} must be one of {', '.join(sorted(API_CALL_STATUSES))}; got {value!r}"
        )
    return str(value)


def _optional_text(name: str, value: object, exact: bool) -> str | None:
    return None if value is None else _text(name, value, exact)


#: Every field of every line type, with its check; exactly the columns of its table.
FIELDS: dict[Kind, dict[str, FieldCheck]] = {
    "session": {
        "id": _uuid,
        "user_id": _optional_uuid,
        "tenant_id": _optional_uuid,
        "agent_id": _optional_uuid,
        "title": _title,
        "metadata": _document,
        "last_seq": _count,
        "state_version": _count,
        "created_at": _time,
        "updated_at": _time,
    },
    "message": {
        "id": _uuid,
        "session_id": _uuid,
        "seq": _ordinal,
        "role": _role,
        "content": _text,
        "metadata": _document,
        "created_at": _time,
    },
    "state": {
        "id": _uuid,
        "session_id": _uuid,
        "version": _ordinal,
        "state": _document,
        "created_at": _time,
    },
    "api_call": {
        "id": _uuid,
        "session_id": _optional_uuid,
        "tenant_id": _optional_uuid,
        "user_id": _optional_uuid,
        "agent_id": _optional_uuid,
        "provider": _bounded_text(50, optional=True),
        "model": _bounded_text(200, optional=False),
        "status": _status,
        "prompt_tokens": _optional_count,
        "completion_tokens": _optional_count,
        "total_tokens": _optional_count,
        "latency_ms": _count,
        "error": _optional_text,
        "created_at": _time,
    },
}


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True)
class Line:
    """One parsed line: its number, its type and its checked values."""

    number: int
    kind: str
    values: dict[str, Any]


def parse_line(number: int, raw: bytes, *, exact_floats: bool = False) -> Line:
    """Parse and check one line; every error starts with ``line N:``."""
    try:
        return _parse(number, raw, exact_floats)
    except InvalidInputError as error:
        raise InvalidInputError(f"line {number}: {error}") from None


def _parse(number: int, raw: bytes, exact_floats: bool) -> Line:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("is not UTF-8 text") from None
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        raise InvalidInputError(f"is not valid JSON ({reason})") from None
    if not isinstance(record, dict):
        raise InvalidInputError(f"must be a JSON object, not {_json_type(record)}")
    kind = record.pop("type", None)
    if kind in ("header", "end"):
        return Line(number, kind, record)
    if kind not in FIELDS:
        raise InvalidInputError(
            f"unknown type {kind!r}; expected header, session, message, state, api_call or end"
        )
    checks = FIELDS[kind]
    missing = [name for name in checks if name not in record]
    unknown = sorted(set(record) - set(checks))
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise InvalidInputError(f"{kind} fields: {'; '.join(problems)}")
    values = {name: check(name, record[name], exact_floats) for name, check in checks.items()}
    return Line(number, kind, values)


def _check_header(number: int, raw: bytes) -> None:
    """The first line says what the file is; anything else is refused before reading on."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise InvalidInputError(
            f"line {number}: not a {FORMAT_NAME} export (the first line must be its header)"
        )
    if header.get("version") != FORMAT_VERSION:
        raise InvalidInputError(
            f"line {number}: format version {header.get('version')!r} is not supported "
            f"(this mofa-persist reads version {FORMAT_VERSION})"
        )


def _check_end(line: Line, counts: Counts) -> None:
    declared = line.values.get("counts")
    if declared != counts.as_dict():
        raise InvalidInputError(
            f"line {line.number}: the end line counts {declared!r}, "
            f"but the file holds {counts.as_dict()}"
        )


def _read_lines(path: Path, on_bytes: Callable[[int], None] | None) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; split on ``\\n`` only (U+2028 inside content is not a break)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if on_bytes is not None:
                on_bytes(len(raw))
            yield number, raw.rstrip(b"\r\n")


# ---------------------------------------------------------------------- import: pass 1


@dataclass(slots=True)
class _Owner:
    """The session whose rows are being read, for the cheap in-file consistency checks."""

    id: uuid.UUID
    last_seq: int
    state_version: int


def _check_row_against_owner(line: Line, owner: _Owner) -> None:
    values = line.values
    if line.kind == "message" and values["seq"] > owner.last_seq:
        raise InvalidInputError(
            f"line {line.number}: message seq {values['seq']} is above its session's "
            f"last_seq {owner.last_seq}"
        )
    if line.kind == "state" and values["version"] > owner.state_version:
        raise InvalidInputError(
            f"line {line.number}: state version {values['version']} is above its session's "
            f"state_version {owner.state_version}"
        )


async def validate_file(
    store: Store, path: Path, *, on_bytes: Callable[[int], None] | None = None
) -> Counts:
    """Pass 1 of an import: check every line before anything is written.

    Each row must refer to a session earlier in the file or already in the database.
    Returns the file's counts; raises ``InvalidInputError`` naming the first bad line.
    """
    exact = store.url.kind == "postgresql"
    counts = Counts()
    declared: set[uuid.UUID] = set()
    referenced: dict[uuid.UUID, int] = {}  # sessions not (yet) in the file -> first line
    owner: _Owner | None = None
    ended = False
    last = 0
    for number, raw in _read_lines(path, on_bytes):
        last = number
        if number == 1:
            _check_header(number, raw)
            continue
        line = parse_line(number, raw, exact_floats=exact)
        if ended:
            raise InvalidInputError(f"line {number}: content after the end line")
        if line.kind == "header":
            raise InvalidInputError(f"line {number}: a second header line")
        if line.kind == "end":
            _check_end(line, counts)
            ended = True
            continue
        kind = cast("Kind", line.kind)  # parse_line checked it
        counts.add(kind)
        if kind == "session":
            if line.values["id"] in declared:
                raise InvalidInputError(f"line {number}: session {line.values['id']} twice")
            declared.add(line.values["id"])
            owner = _Owner(line.values["id"], line.values["last_seq"], line.values["state_version"])
            continue
        session_id = line.values["session_id"]
        if session_id is None:
            continue
        if owner is not None and session_id == owner.id:
            _check_row_against_owner(line, owner)
        elif session_id not in declared:
            referenced.setdefault(session_id, number)
    if last == 0:
        raise InvalidInputError("line 1: the file is empty")
    if not ended:
        raise InvalidInputError(f"line {last}: the file ends without its end line (truncated?)")
    await _check_references(store, referenced, declared)
    return counts


async def _check_references(
    store: Store, referenced: dict[uuid.UUID, int], declared: set[uuid.UUID]
) -> None:
    """Rows of sessions not in the file need the session in the database already."""
    for session_id, number in referenced.items():
        if session_id in declared:
            raise InvalidInputError(
                f"line {number}: refers to session {session_id} before its session line"
            )
    pending = sorted(referenced, key=referenced.__getitem__)
    async with _translated(store, "check sessions"), _reading(store) as conn:
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            found = set((await conn.execute(select(s_t.c.id).where(s_t.c.id.in_(chunk)))).scalars())
            for session_id in chunk:
                if session_id not in found:
                    raise InvalidInputError(
                        f"line {referenced[session_id]}: session {session_id} is neither in "
                        "the file nor in the database"
                    )


# ---------------------------------------------------------------------- import: pass 2


@dataclass(slots=True)
class ImportReport:
    """What an import did: rows written, rows already there unchanged, and conflicts."""

    inserted: Counts = field(default_factory=Counts)
    unchanged: Counts = field(default_factory=Counts)
    #: One line per session (or group of unattached calls) that was NOT written.
    conflicts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicts


class _Conflict(Exception):
    """A row exists with other content: the unit is rolled back and reported."""


def _unit_key(line: Line) -> uuid.UUID | None:
    key: uuid.UUID | None = line.values["id" if line.kind == "session" else "session_id"]
    return key


def _runs(lines: Iterable[Line], batch_size: int) -> Iterator[list[Line]]:
    """Consecutive lines of one type, at most ``batch_size`` at a time."""
    run: list[Line] = []
    for line in lines:
        if run and (line.kind != run[0].kind or len(run) >= batch_size):
            yield run
            run = []
        run.append(line)
    if run:
        yield run


async def _merge_run(
    conn: AsyncConnection, run: list[Line], exact: bool, inserted: Counts, unchanged: Counts
) -> None:
    """Insert the run's rows that are missing; identical rows are skipped, others conflict."""
    kind = cast("Kind", run[0].kind)
    table = TABLES[kind]
    prepared = [(line.number, _encoded(kind, line.values, exact)) for line in run]
    ids = [values["id"] for _, values in prepared]
    result = await conn.execute(select(table).where(table.c.id.in_(ids)))
    existing = {row["id"]: row for row in result.mappings()}
    fresh = []
    for number, values in prepared:
        row = existing.get(values["id"])
        if row is None:
            fresh.append(values)
        elif canonical_line(kind, row) != canonical_line(kind, values):
            raise _Conflict(f"line {number}: {kind} {values['id']} exists with other content")
        else:
            unchanged.add(kind)
    if fresh:
        await conn.execute(insert(table), fresh)
        inserted.add(kind, len(fresh))


async def _import_unit(
    store: Store, lines: Iterator[Line], batch_size: int, report: ImportReport
) -> None:
    """One session with its rows (or a group of unattached calls): one transaction."""
    exact = store.url.kind == "postgresql"
    inserted, unchanged = Counts(), Counts()
    first: Line | None = None
    try:
        async with store.engine.begin() as conn:
            for run in _runs(lines, batch_size):
                first = first or run[0]
                await _merge_run(conn, run, exact, inserted, unchanged)
    except _Conflict as conflict:
        report.conflicts.append(f"{_unit_name(first)}: {conflict}; not imported")
        return
    except DRIVER_ERRORS as error:
        if not _is_key_clash(error):
            raise to_backend_error(error, store.url, "import") from error
        report.conflicts.append(
            f"{_unit_name(first)}: a key is taken in the database (another row has this "
            "seq, version or id); not imported"
        )
        return
    report.inserted.merge(inserted)
    report.unchanged.merge(unchanged)


def _unit_name(first: Line | None) -> str:
    if first is None:
        return "(empty)"
    key = _unit_key(first)
    where = f"from line {first.number}"
    return f"session {key} ({where})" if key is not None else f"calls of no session ({where})"


async def import_jsonl(
    store: Store,
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_bytes: Callable[[int], None] | None = None,
    validated: bool = False,
) -> ImportReport:
    """Import an export file: validate every line, then write each session in one transaction.

    Idempotent: rows whose id is already stored with the same content are skipped, so a
    second import changes nothing. A session whose rows exist with OTHER content is not
    written at all and is listed in ``conflicts``; nothing is overwritten. ``validated=True``
    skips pass 1 (the caller ran :func:`validate_file`).
    """
    if not validated:
        await validate_file(store, path)
    exact = store.url.kind == "postgresql"
    report = ImportReport()
    lines = (
        parse_line(number, raw, exact_floats=exact)
        for number, raw in _read_lines(path, on_bytes)
        if number > 1
    )
    rows = (line for line in lines if line.kind in FIELDS)
    for _, unit in itertools.groupby(rows, key=_unit_key):
        await _import_unit(store, unit, batch_size, report)
    return report


# ---------------------------------------------------------------------- copy


@dataclass(slots=True)
class CopyReport:
    """What a copy did, and what verification found."""

    sessions: int = 0
    copied: int = 0
    #: Already at the destination with the same fingerprint: a resumed copy skips them.
    skipped: int = 0
    rows: Counts = field(default_factory=Counts)
    unattached_calls: int = 0
    verified: int = 0
    conflicts: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.mismatches


Outcome = Literal["copied", "skipped", "conflict"]


async def _session_pages(
    store: Store, selection: Selection, batch_size: int
) -> AsyncIterator[list[RowMapping]]:
    """Selected sessions by id, a page per short read transaction (none is held for long)."""
    after: uuid.UUID | None = None
    while True:
        stmt = select(s_t).where(*selection.session_filters())
        if after is not None:
            stmt = stmt.where(s_t.c.id > after)
        async with _translated(store, "list sessions"), _reading(store) as conn:
            page = (await conn.execute(stmt.order_by(s_t.c.id).limit(batch_size))).mappings()
            rows = list(page.all())
        if rows:
            yield rows
        if len(rows) < batch_size:
            return
        after = rows[-1]["id"]


async def _exists(store: Store, session_id: uuid.UUID) -> bool:
    async with _translated(store, "look up a session"), _reading(store) as conn:
        return await _read_session(conn, session_id) is not None


async def _copy_session(
    src: Store, dst: Store, session_id: uuid.UUID, batch_size: int, rows: Counts
) -> tuple[Outcome, Fingerprint | None]:
    """Copy one session in one destination transaction, fingerprinting it on the way."""
    if await _exists(dst, session_id):
        source = await fingerprint(src, session_id, batch_size=batch_size)
        target = await fingerprint(dst, session_id, batch_size=batch_size)
        return ("skipped" if source == target else "conflict"), source
    exact = dst.url.kind == "postgresql"
    digest = _Digest()
    written = Counts()
    async with (
        _translated(src, "read for copy"),
        _reading(src) as source_conn,
        _translated(dst, "copy"),
        dst.engine.begin() as target_conn,
    ):
        session = await _read_session(source_conn, session_id)
        if session is None:  # deleted since it was listed
            return "skipped", None
        batch: list[dict[str, Any]] = []
        batch_kind: Kind = "session"
        async for kind, row in _session_rows(source_conn, session, batch_size):
            digest.add(kind, row)
            if batch and (kind != batch_kind or len(batch) >= batch_size):
                await target_conn.execute(insert(TABLES[batch_kind]), batch)
                batch = []
            batch_kind = kind
            batch.append(_encoded(kind, row, exact))
            written.add(kind)
        await target_conn.execute(insert(TABLES[batch_kind]), batch)
    rows.merge(written)
    return "copied", digest.result()


async def copy_data(
    src: Store,
    dst: Store,
    selection: Selection,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_session: Callable[[uuid.UUID, Outcome], None] | None = None,
    on_verified: Callable[[], None] | None = None,
) -> CopyReport:
    """Copy the selected sessions (with every row) and unattached calls from ``src`` to ``dst``.

    Each session is written in one transaction, so an interrupted copy leaves whole sessions
    only; run it again and sessions already there with the same fingerprint are skipped. A
    session that is at the destination with other content is a conflict, never overwritten.
    At the end every copied or skipped session is re-read at the destination and its counts
    and sha256 compared with the source's: any difference is a mismatch.
    """
    if src.url.kind != "memory" and src.url.display == dst.url.display:
        raise InvalidInputError("source and destination are the same database")
    report = CopyReport()
    expected: dict[uuid.UUID, Fingerprint] = {}
    async for page in _session_pages(src, selection, batch_size):
        for session in page:
            session_id = session["id"]
            report.sessions += 1
            outcome, source = await _try_copy(src, dst, session_id, batch_size, report)
            if outcome == "copied":
                report.copied += 1
            elif outcome == "skipped":
                report.skipped += 1
            if source is not None and outcome != "conflict":
                expected[session_id] = source
            if on_session is not None:
                on_session(session_id, outcome)
    if selection.includes_unattached_calls:
        await _copy_unattached(src, dst, selection, batch_size, report)
    await _verify(dst, expected, batch_size, report, on_verified)
    if selection.includes_unattached_calls:
        await _verify_unattached(src, dst, selection, batch_size, report)
    return report


async def _try_copy(
    src: Store, dst: Store, session_id: uuid.UUID, batch_size: int, report: CopyReport
) -> tuple[Outcome, Fingerprint | None]:
    try:
        outcome, source = await _copy_session(src, dst, session_id, batch_size, report.rows)
    except PersistenceError as error:
        cause = error.__cause__
        if cause is None or not _is_key_clash(cause):
            raise
        report.conflicts.append(
            f"session {session_id}: a key is taken at the destination (another row has this "
            "id, seq or version); not copied"
        )
        return "conflict", None
    if outcome == "conflict":
        report.conflicts.append(
            f"session {session_id}: at the destination with other content; not copied"
        )
    return outcome, source


async def _copy_unattached(
    src: Store, dst: Store, selection: Selection, batch_size: int, report: CopyReport
) -> None:
    """Calls of no session, a batch per transaction; existing identical ones are skipped."""
    exact = dst.url.kind == "postgresql"
    filters = selection.unattached_call_filters()
    async with _translated(src, "read for copy"), _reading(src) as source_conn:
        batches = _batched(_keyset(source_conn, c_t, filters, "id", batch_size), batch_size)
        async for batch in batches:
            lines = [Line(0, "api_call", dict(row)) for row in batch]
            inserted, unchanged = Counts(), Counts()
            try:
                async with _translated(dst, "copy"), dst.engine.begin() as target_conn:
                    await _merge_run(target_conn, lines, exact, inserted, unchanged)
            except _Conflict as conflict:
                report.conflicts.append(f"calls of no session: {conflict}; batch not copied")
                continue
            report.rows.merge(inserted)
            report.unattached_calls += inserted.api_calls + unchanged.api_calls


async def _batched(rows: AsyncIterator[RowMapping], size: int) -> AsyncIterator[list[RowMapping]]:
    batch: list[RowMapping] = []
    async for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _verify(
    dst: Store,
    expected: dict[uuid.UUID, Fingerprint],
    batch_size: int,
    report: CopyReport,
    on_verified: Callable[[], None] | None,
) -> None:
    for session_id, source in expected.items():
        target = await fingerprint(dst, session_id, batch_size=batch_size)
        if target != source:
            report.mismatches.append(_mismatch(session_id, source, target))
        else:
            report.verified += 1
        if on_verified is not None:
            on_verified()


def _mismatch(session_id: uuid.UUID, source: Fingerprint, target: Fingerprint | None) -> str:
    if target is None:
        return f"session {session_id}: missing at the destination"
    for name in ("messages", "states", "api_calls"):
        if getattr(source, name) != getattr(target, name):
            return (
                f"session {session_id}: {getattr(source, name)} {name} at the source, "
                f"{getattr(target, name)} at the destination"
            )
    return f"session {session_id}: checksum differs ({source.sha256[:12]} != {target.sha256[:12]})"


async def _verify_unattached(
    src: Store, dst: Store, selection: Selection, batch_size: int, report: CopyReport
) -> None:
    filters = selection.unattached_call_filters()
    async with _translated(src, "verify"), _reading(src) as source_conn:
        batches = _batched(_keyset(source_conn, c_t, filters, "id", batch_size), batch_size)
        async for batch in batches:
            ids = [row["id"] for row in batch]
            async with _translated(dst, "verify"), _reading(dst) as target_conn:
                found = await target_conn.execute(select(c_t).where(c_t.c.id.in_(ids)))
                stored = {row["id"]: canonical_line("api_call", row) for row in found.mappings()}
            for row in batch:
                if stored.get(row["id"]) != canonical_line("api_call", row):
                    report.mismatches.append(f"api call {row['id']}: differs at the destination")


# ---------------------------------------------------------------------- prune

_AGE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a duration."""
    match = _AGE.fullmatch(text.lower())
    if match is None:
        raise InvalidInputError(f"{text!r} is not an age; write it like 30d, 12h, 90m or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What prune removed, or with ``dry_run`` would remove."""

    mode: Literal["sessions", "messages"]
    cutoff: datetime
    keep_last: int | None
    dry_run: bool
    sessions: int
    messages: int
    states: int


async def prune(
    store: Store,
    *,
    older_than: timedelta,
    keep_last: int | None = None,
    dry_run: bool = False,
    selection: Selection | None = None,
    batch_size: int = 500,
    now: datetime | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> PruneReport:
    """Retention. Without ``keep_last``: delete whole sessions not updated since the cutoff
    (their messages and states go with them; provider calls are kept, unattached). With
    ``keep_last=N``: delete messages older than the cutoff except each session's newest N
    (by seq); sessions, their counters and states are kept.

    Works a batch of sessions per transaction, so it never holds long locks.
    """
    if keep_last is not None and (isinstance(keep_last, bool) or keep_last < 0):
        raise InvalidInputError("keep_last must be a non-negative integer")
    if older_than < timedelta(0):
        raise InvalidInputError("older_than must not be negative")
    cutoff = (now or datetime.now(UTC)) - older_than
    chosen = (selection or Selection()).session_filters()
    if keep_last is None:
        totals = await _prune_sessions(store, chosen, cutoff, dry_run, batch_size, on_batch)
        mode: Literal["sessions", "messages"] = "sessions"
    else:
        totals = await _prune_messages(
            store, chosen, cutoff, keep_last, dry_run, batch_size, on_batch
        )
        mode = "messages"
    return PruneReport(
        mode, cutoff, keep_last, dry_run, totals.sessions, totals.messages, totals.states
    )


async def _candidate_pages(
    store: Store, condition: list[ColumnElement[bool]], batch_size: int
) -> AsyncIterator[list[uuid.UUID]]:
    """Ids of matching sessions, a page at a time, in id order."""
    after: uuid.UUID | None = None
    while True:
        stmt = select(s_t.c.id).where(*condition)
        if after is not None:
            stmt = stmt.where(s_t.c.id > after)
        async with _translated(store, "find sessions to prune"), _reading(store) as conn:
            ids = list((await conn.execute(stmt.order_by(s_t.c.id).limit(batch_size))).scalars())
        if not ids:
            return
        yield ids
        after = ids[-1]


async def _count_in(conn: AsyncConnection, table: Table, filters: list[Any]) -> int:
    stmt = select(func.count()).select_from(table).where(*filters)
    return int((await conn.execute(stmt)).scalar_one())


def _transaction(store: Store, dry_run: bool) -> contextlib.AbstractAsyncContextManager[Any]:
    """A dry run only reads, so on SQLite it does not take the write lock."""
    return _reading(store) if dry_run else store.engine.begin()


async def _prune_sessions(
    store: Store,
    chosen: list[ColumnElement[bool]],
    cutoff: datetime,
    dry_run: bool,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> Counts:
    totals = Counts()
    old = [*chosen, s_t.c.updated_at < cutoff]
    async for ids in _candidate_pages(store, old, batch_size):
        async with _translated(store, "prune sessions"), _transaction(store, dry_run) as conn:
            totals.add("message", await _count_in(conn, m_t, [m_t.c.session_id.in_(ids)]))
            totals.add("state", await _count_in(conn, a_t, [a_t.c.session_id.in_(ids)]))
            if dry_run:
                totals.add("session", len(ids))
            else:
                stmt = delete(s_t).where(s_t.c.id.in_(ids), s_t.c.updated_at < cutoff)
                totals.add("session", (await conn.execute(stmt)).rowcount)
        if on_batch is not None:
            on_batch(len(ids))
    return totals


async def _prune_messages(
    store: Store,
    chosen: list[ColumnElement[bool]],
    cutoff: datetime,
    keep_last: int,
    dry_run: bool,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> Counts:
    totals = Counts()
    # Seq numbers above last_seq - N are the newest N; no other message ever has them.
    prunable = exists().where(
        m_t.c.session_id == s_t.c.id,
        m_t.c.created_at < cutoff,
        m_t.c.seq <= s_t.c.last_seq - keep_last,
    )
    last_seq = select(s_t.c.last_seq).where(s_t.c.id == m_t.c.session_id).scalar_subquery()
    async for ids in _candidate_pages(store, [*chosen, prunable], batch_size):
        doomed = [
            m_t.c.session_id.in_(ids),
            m_t.c.created_at < cutoff,
            m_t.c.seq <= last_seq - literal(keep_last),
        ]
        async with _translated(store, "prune messages"), _transaction(store, dry_run) as conn:
            if dry_run:
                totals.add("message", await _count_in(conn, m_t, doomed))
            else:
                totals.add("message", (await conn.execute(delete(m_t).where(*doomed))).rowcount)
        totals.add("session", len(ids))
        if on_batch is not None:
            on_batch(len(ids))
    return totals


async def count_prune_candidates(
    store: Store, *, older_than: timedelta, keep_last: int | None = None
) -> int:
    """How many sessions prune will visit: the total of its progress bar."""
    cutoff = datetime.now(UTC) - older_than
    condition: ColumnElement[bool]
    if keep_last is None:
        condition = s_t.c.updated_at < cutoff
    else:
        condition = exists().where(
            m_t.c.session_id == s_t.c.id,
            m_t.c.created_at < cutoff,
            m_t.c.seq <= s_t.c.last_seq - keep_last,
        )
    async with _translated(store, "count sessions"), _reading(store) as conn:
        return int((await conn.execute(select(func.count()).where(condition))).scalar_one())


# ---------------------------------------------------------------------- stats

_METRICS = ("sessions", "messages", "states", "api_calls", "tokens")


@dataclass(frozen=True, slots=True)
class Stats:
    """Row counts and tokens, in total, by tenant and by day (UTC) of creation."""

    since: datetime | None
    totals: dict[str, int]
    by_tenant: list[dict[str, Any]]
    by_day: list[dict[str, Any]]


def _day(column: KeyedColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """``YYYY-MM-DD`` of a UTC timestamp column, computed by the database."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    # SQLite keeps ISO text and MySQL a UTC DATETIME: the first 10 characters are the day.
    return func.substr(sql_cast(column, String(32)), 1, 10)


async def collect_stats(store: Store, *, since: datetime | None = None) -> Stats:
    """Sessions, messages, states, provider calls and tokens created since ``since``."""
    if since is not None and since.tzinfo is None:
        raise InvalidInputError("since must be a timezone-aware datetime")
    dialect = store.engine.dialect.name
    by_tenant: dict[str | None, dict[str, int]] = {}
    by_day: dict[str | None, dict[str, int]] = {}
    async with _translated(store, "collect stats"), _reading(store) as conn:
        for metric, group, query in _stat_queries(since, dialect):
            target = by_tenant if group == "tenant" else by_day
            for key, value in await conn.execute(query):
                label = None if key is None else str(key)
                bucket = target.setdefault(label, dict.fromkeys(_METRICS, 0))
                bucket[metric] += int(value or 0)
    totals = dict.fromkeys(_METRICS, 0)
    for bucket in by_tenant.values():
        for metric in _METRICS:
            totals[metric] += bucket[metric]
    tenants = sorted(by_tenant.items(), key=lambda item: (item[0] is not None, item[0] or ""))
    return Stats(
        since,
        totals,
        [{"tenant_id": key, **values} for key, values in tenants],
        [{"day": key, **values} for key, values in sorted(by_day.items(), key=_day_order)],
    )


def _day_order(item: tuple[str | None, dict[str, int]]) -> str:
    return item[0] or ""


def _stat_queries(since: datetime | None, dialect: str) -> Iterator[tuple[str, str, Any]]:
    """(metric, grouping, query) triples; each query yields (key, value) rows."""
    sources: list[tuple[str, Table, Any]] = [
        ("sessions", s_t, func.count()),
        ("messages", m_t, func.count()),
        ("states", a_t, func.count()),
        ("api_calls", c_t, func.count()),
        ("tokens", c_t, func.coalesce(func.sum(c_t.c.total_tokens), 0)),
    ]
    for metric, table, value in sources:
        recent = [] if since is None else [table.c.created_at >= since]
        tenant: Any = table.c.tenant_id if "tenant_id" in table.c else s_t.c.tenant_id
        source: Any = table if table is s_t or table is c_t else table.join(s_t)
        yield (
            metric,
            "tenant",
            select(tenant.label("k"), value).select_from(source).where(*recent).group_by(tenant),
        )
        day = _day(table.c.created_at, dialect).label("day")
        yield metric, "day", select(day, value).where(*recent).group_by(day)


__all__ = [
    "DEFAULT_BATCH",
    "FIELDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "TABLES",
    "CopyReport",
    "Counts",
    "Fingerprint",
    "ImportReport",
    "Line",
    "PruneReport",
    "Selection",
    "Stats",
    "canonical_line",
    "collect_stats",
    "copy_data",
    "count_prune_candidates",
    "count_selection",
    "dump_line",
    "export_jsonl",
    "fingerprint",
    "import_jsonl",
    "iter_export",
    "parse_age",
    "parse_line",
    "prune",
    "record_of",
    "validate_file",
]
