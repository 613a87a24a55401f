"""Group commit: appends to one session that arrive while a write to it is in flight are
written together, as one transaction (one counter bump, one multi-row insert).

Writers of one session queue on its row lock anyway, one transaction each; here they queue
in the process instead and share the next transaction, so N concurrent appends cost about
two round trips of transactions instead of N. Per store backend and per (session, view
scope):

- No write to the session is in flight: the call writes at once, in its own task, exactly
  as without grouping, and marks the session busy while it does.
- A write is in flight: the call queues (after its own input checks, so bad input is its own
  error). When the write ends, a task of the store takes everything queued, in arrival
  order, and writes it as one group; what arrives meanwhile forms the next group.
- Each caller gets its own slice of the group's records (seq gap-free, in arrival order),
  or its own error. A group that fails is rerun one member at a time, so one member's
  failure never fails another's message; a member that has fallen on its own error is
  reported it. The exceptions are failures every member shares: a lost connection, a
  timeout, a closed store, and above all a COMMIT whose answer was lost
  (``BackendError.outcome_unknown``). Rerunning that could store the group twice, so every
  member gets the outcome-unknown error, as a lone write would have.
- A caller cancelled while queued is dropped from its group and nothing of it is stored; one
  cancelled after its group started writing may still be stored, as a lone write cancelled
  during COMMIT may.

Writes carrying an idempotency key, a state snapshot or an ``expected_version`` are never
grouped: their exactly-once and version checks belong to their own transaction.

SQLite (a file or the in-memory database) has one writer at a time whatever the session, and
every transaction pays its own sync: there, appends to *any* session queue together (one
queue per store backend, not per session) and a group spanning several sessions is written
by ``write_many`` as one transaction, each session's part in a savepoint of its own (see
``writes.sqlite_write_sessions``); a part that fails is rerun on its own as above.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import telemetry
from .errors import BackendError, PersistenceError
from .translate import Failure, classify

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable, Sequence

    from .backend import Scope, _Backend
    from .convert import _NewMessage
    from .records import Message

    #: ``write(sid, items, action, span)``: the session's plain one-transaction write of
    #: ``items``; ``span`` says whether it reports a span of its own named ``action``.
    Write = Callable[[uuid.UUID, Sequence[_NewMessage], str, bool], Awaitable[list[Message]]]
    #: ``write_many(parts)``: one transaction over several sessions' (scope, sid, items);
    #: per part its records, or ``None`` when that part stored nothing and must be rerun.
    WriteMany = Callable[
        [list[tuple[Scope, uuid.UUID, list[_NewMessage]]]],
        Awaitable[list[list[Message] | None]],
    ]

#: A group takes queued calls until it has this many calls or messages (at least one call);
#: the rest form the next group, so one transaction stays of a bounded size.
MAX_GROUP = 256
MAX_GROUP_MESSAGES = 2000
#: The span (and duration metric) of a group's transaction; each caller keeps its own span.
GROUP_ACTION = "append a group of messages"


@dataclass(slots=True)
class _Member:
    """One queued call: its session and view, its checked messages, the span name it reports
    under, the plain write of its own view, and its answer."""

    scope: Scope
    sid: uuid.UUID
    items: Sequence[_NewMessage]
    action: str
    write: Write
    future: asyncio.Future[list[Message]]


@dataclass(slots=True)
class _Queue:
    """The calls waiting for the write in flight to one session (its presence: busy)."""

    members: list[_Member] = field(default_factory=list)


@dataclass(slots=True)
class _Groups:
    """Per backend: the busy sessions (SQLite: :data:`_ANY_SESSION`), and the tasks writing
    their groups."""

    busy: dict[object, _Queue] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


_GROUPS: weakref.WeakKeyDictionary[_Backend, _Groups] = weakref.WeakKeyDictionary()
#: The one queue key of a backend whose writes to any session queue together (SQLite).
_ANY_SESSION = object()


async def append(
    backend: _Backend,
    scope: Scope,
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    action: str,
    write: Write,
    write_many: WriteMany | None = None,
) -> list[Message]:
    """Store ``items`` at the session's end, sharing a transaction with concurrent appends
    (with ``write_many``: concurrent appends to any session of the backend)."""
    groups = _GROUPS.get(backend)
    if groups is None:
        groups = _GROUPS[backend] = _Groups()
    key: object = (sid, scope) if write_many is None else _ANY_SESSION
    queue = groups.busy.get(key)
    if queue is not None:
        future = asyncio.get_running_loop().create_future()
        queue.members.append(_Member(scope, sid, items, action, write, future))
        # The caller's own span covers its wait; cancelling it cancels only its future.
        return await telemetry.observe(backend, action, future)
    queue = groups.busy[key] = _Queue()
    try:
        stored = await write(sid, items, action, True)
    finally:
        _hand_over(backend, groups, key, queue, write_many)
    telemetry.grouped(backend, 1)
    return stored


def _hand_over(
    backend: _Backend,
    groups: _Groups,
    key: object,
    queue: _Queue,
    write_many: WriteMany | None,
) -> None:
    """The write in flight ended: a task writes what queued meanwhile, or the session is idle."""
    if not _live(queue.members):
        del groups.busy[key]
        return
    # A context of its own: the group's span must not nest under the caller that ended.
    task = asyncio.get_running_loop().create_task(
        _drain(backend, groups, key, queue, write_many), context=contextvars.Context()
    )
    groups.tasks.add(task)
    task.add_done_callback(groups.tasks.discard)


def _live(members: list[_Member]) -> bool:
    return any(not member.future.done() for member in members)


async def _drain(
    backend: _Backend,
    groups: _Groups,
    key: object,
    queue: _Queue,
    write_many: WriteMany | None,
) -> None:
    """Write the queued calls group by group until none is left, then mark the session idle."""
    try:
        while True:
            if not _live(queue.members):
                # Callers just answered usually append again at once: let them queue first.
                await asyncio.sleep(0)
                if not _live(queue.members):
                    break
            batch, queue.members = _take(queue.members)
            await _write_group(backend, batch, write_many)
    finally:
        del groups.busy[key]
        for member in queue.members:  # only if this task itself was cancelled
            member.future.cancel()


def _take(members: list[_Member]) -> tuple[list[_Member], list[_Member]]:
    """The next group from the front of the queue, and what stays queued."""
    batch: list[_Member] = []
    messages = 0
    for index, member in enumerate(members):
        if member.future.done():  # cancelled while queued
            continue
        if batch and (len(batch) == MAX_GROUP or messages + len(member.items) > MAX_GROUP_MESSAGES):
            return batch, members[index:]
        batch.append(member)
        messages += len(member.items)
    return batch, []


async def _write_group(
    backend: _Backend, batch: list[_Member], write_many: WriteMany | None
) -> None:
    """One transaction for the whole batch: one session's, or several sessions' (write_many)."""
    parts: dict[tuple[uuid.UUID, Scope], list[_Member]] = {}
    for member in batch:
        parts.setdefault((member.sid, member.scope), []).append(member)
    if write_many is None or len(parts) == 1:
        for members in parts.values():
            await _write_session(backend, members)
        return
    try:
        results = await write_many(
            [
                (members[0].scope, members[0].sid, [i for m in members for i in m.items])
                for members in parts.values()
            ]
        )
    except PersistenceError as error:
        if _shared(error):
            for member in batch:
                _answer_error(member, _copy(error))
            return
        results = [None] * len(parts)
    except Exception as error:  # not a store error: a bug; every caller must hear of it
        for member in batch:
            _answer_error(member, error)
        return
    written = list(zip(parts.values(), results, strict=True))
    if calls := sum(len(members) for members, stored in written if stored is not None):
        telemetry.grouped(backend, calls)
    for members, stored in written:
        if stored is None:  # this session's part stored nothing: each member on its own
            await _one_by_one(backend, members)
        else:
            _answer_slices(members, stored)


async def _write_session(backend: _Backend, batch: list[_Member]) -> None:
    """One transaction for members of one session; on failure, each alone (see the module)."""
    if len(batch) == 1:
        await _one_by_one(backend, batch)
        return
    first = batch[0]
    items = [item for member in batch for item in member.items]
    try:
        stored = await first.write(first.sid, items, GROUP_ACTION, True)
    except PersistenceError as error:
        if _shared(error):
            for member in batch:
                _answer_error(member, _copy(error))
        else:
            await _one_by_one(backend, batch)
        return
    except Exception as error:  # not a store error: a bug; every caller must hear of it
        for member in batch:
            _answer_error(member, error)
        return
    telemetry.grouped(backend, len(batch))
    _answer_slices(batch, stored)


def _answer_slices(batch: list[_Member], stored: list[Message]) -> None:
    """Each member's slice of its group's records, in the order the members queued."""
    start = 0
    for member in batch:
        end = start + len(member.items)
        if not member.future.done():  # cancelled after the group started: stored anyway
            member.future.set_result(stored[start:end])
        start = end


async def _one_by_one(backend: _Backend, batch: list[_Member]) -> None:
    """Write members alone, in order (a failed group's, or a lone one); each gets its own
    outcome. Each caller's own span already covers this write: it makes none of its own."""
    for member in batch:
        if member.future.done():  # cancelled meanwhile: the group stored nothing of it
            continue
        try:
            stored = await member.write(member.sid, member.items, member.action, False)
        except Exception as error:
            _answer_error(member, error)
            continue
        telemetry.grouped(backend, 1)
        if not member.future.done():
            member.future.set_result(stored)


def _shared(error: PersistenceError) -> bool:
    """Whether ``error`` is the database's or the connection's, not one member's doing:
    the commit's answer lost, the store closed, the server unreachable or timed out."""
    if not isinstance(error, BackendError):
        return False
    if error.outcome_unknown:
        return True
    cause = error.__cause__
    return cause is None or classify(cause) is Failure.CONNECTION


def _copy(error: PersistenceError) -> PersistenceError:
    """A member's own instance of a shared error (tracebacks of one instance would pile up)."""
    copy: PersistenceError
    if isinstance(error, BackendError):
        copy = BackendError(
            str(error),
            host=error.host,
            database=error.database,
            outcome_unknown=error.outcome_unknown,
        )
    else:
        copy = type(error)(str(error))
    copy.__cause__ = error
    return copy


def _answer_error(member: _Member, error: BaseException) -> None:
    if not member.future.done():
        member.future.set_exception(error)
