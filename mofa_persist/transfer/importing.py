"""Import: an export file back into a store, in two passes.

Pass 1 checks every line, and that every row's session is in the file or the database, before
anything is written. Pass 2 writes each session with its rows in one transaction, skipping
rows already there unchanged and reporting (never overwriting) those with other content.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from sqlalchemy import select

from ..backend import scope_filter
from ..errors import InvalidInputError
from ..translate import DRIVER_ERRORS, to_backend_error
from .common import DEFAULT_BATCH, Counts, Kind, s_t
from .lines import FIELDS, Line, check_end, check_header, parse_line, read_lines
from .merging import Conflict, merge_adk_states, merge_rows
from .reading import exact_floats, is_key_clash, reading, translated

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

    from ..store import Store


# ---------------------------------------------------------------------- pass 1: validation


@dataclass(slots=True)
class _Owner:
    """The session whose rows are being read, for the cheap in-file consistency checks."""

    id: uuid.UUID
    last_seq: int
    state_version: int
    tenant_id: uuid.UUID | None


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
    if line.kind == "adk_session" and values["tenant_id"] != owner.tenant_id:
        raise InvalidInputError(
            f"line {line.number}: adk_session tenant_id is not its session's tenant_id"
        )


async def validate_file(
    store: Store, path: Path, *, on_bytes: Callable[[int], None] | None = None
) -> Counts:
    """Pass 1 of an import: check every line before anything is written.

    Each row must refer to a session earlier in the file or already in the database.
    Returns the file's counts; raises ``InvalidInputError`` naming the first bad line.
    """
    exact = exact_floats(store)
    counts = Counts()
    declared: set[uuid.UUID] = set()
    referenced: dict[uuid.UUID, int] = {}  # sessions not (yet) in the file -> first line
    owner: _Owner | None = None
    ended = False
    last = 0
    for number, raw in read_lines(path, on_bytes):
        last = number
        if number == 1:
            check_header(number, raw)
            continue
        line = parse_line(number, raw, exact_floats=exact)
        if ended:
            raise InvalidInputError(f"line {number}: content after the end line")
        if line.kind == "header":
            raise InvalidInputError(f"line {number}: a second header line")
        if line.kind == "end":
            check_end(line, counts)
            ended = True
            continue
        kind = cast("Kind", line.kind)  # parse_line checked it
        counts.add(kind)
        _check_in_view(store, line)
        if kind == "session":
            if line.values["id"] in declared:
                raise InvalidInputError(f"line {number}: session {line.values['id']} twice")
            declared.add(line.values["id"])
            values = line.values
            owner = _Owner(
                values["id"], values["last_seq"], values["state_version"], values["tenant_id"]
            )
            continue
        if kind == "adk_state":  # owned by tenant/user/agent, not by a session
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


def _check_in_view(store: Store, line: Line) -> None:
    """Into a scoped store, only sessions and calls that belong to its view are imported."""
    if line.kind not in ("session", "api_call", "adk_state") or not store.scope.restricted:
        return
    values = line.values
    owner = (values["tenant_id"], values["user_id"], values["agent_id"])
    if not store.scope.covers(owner):
        raise InvalidInputError(
            f"line {line.number}: this {line.kind.replace('_', ' ')} belongs outside the "
            f"store's view ({store.scope.describe()}); import it through a wider view"
        )


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
    async with translated(store, "check sessions"), reading(store) as conn:
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            visible = select(s_t.c.id).where(s_t.c.id.in_(chunk), *scope_filter(store.scope))
            found = set((await conn.execute(visible)).scalars())
            for session_id in chunk:
                if session_id not in found:
                    raise InvalidInputError(
                        f"line {referenced[session_id]}: session {session_id} is neither in "
                        "the file nor in the database (within this store's view)"
                    )


# ---------------------------------------------------------------------- pass 2: writing


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


def _unit_key(line: Line) -> uuid.UUID | str | None:
    """A session's id for its lines; ADK app/user state lines are a unit of their own."""
    if line.kind == "adk_state":
        return "adk_state"
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


async def _import_unit(
    store: Store, lines: Iterator[Line], batch_size: int, report: ImportReport
) -> None:
    """One session with its rows (or a group of unattached calls): one transaction."""
    exact = exact_floats(store)
    inserted, unchanged = Counts(), Counts()
    first: Line | None = None
    try:
        async with store.engine.begin() as conn:
            for run in _runs(lines, batch_size):
                first = first or run[0]
                kind = cast("Kind", run[0].kind)
                numbered = [(line.number, line.values) for line in run]
                if kind == "adk_state":
                    found = await merge_adk_states(conn, numbered, exact, inserted, unchanged)
                    report.conflicts.extend(found)
                else:
                    await merge_rows(conn, kind, numbered, exact, inserted, unchanged)
    except Conflict as conflict:
        report.conflicts.append(f"{_unit_name(first)}: {conflict}; not imported")
        return
    except DRIVER_ERRORS as error:
        if not is_key_clash(error):
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
    if key == "adk_state":
        return f"ADK app and user state ({where})"
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
    exact = exact_floats(store)
    report = ImportReport()
    lines = (
        parse_line(number, raw, exact_floats=exact)
        for number, raw in read_lines(path, on_bytes)
        if number > 1
    )
    rows = (line for line in lines if line.kind in FIELDS)
    for _, unit in itertools.groupby(rows, key=_unit_key):
        await _import_unit(store, unit, batch_size, report)
    return report
