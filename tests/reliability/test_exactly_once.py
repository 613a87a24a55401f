"""Keyed writes stay exactly-once when the connection is cut at COMMIT, on private servers.

A store talks to a private PostgreSQL or MariaDB through ``CommitCutter`` (commit_cutter.py).
100 times the cutter is armed and a keyed write is made: its COMMIT reaches the server, which
commits, but the client connection is dropped before any byte of the answer arrives. The call
must raise ``BackendError`` with ``outcome_unknown=True``; the caller then retries with the
same key and payload until the retry answers, and the answer must be exactly the rows the cut
call committed (read back past the proxy). Unkeyed writes run in between. At the end, read
directly from the server: every keyed write's rows exist once (0 duplicates, 0 losses), seq
and state versions count 1, 2, 3, ... without gaps, and there is one key row per keyed call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import tally
from commit_cutter import CommitCutter
from common import message_rows, state_rows
from rootconf import admin
from sqlalchemy import select

import mofa_persist
from mofa_persist import BackendError
from mofa_persist.models import (
    agent_state_table,
    api_calls_table,
    idempotency_keys_table,
    messages_table,
)
from mofa_persist.records import AgentState, ApiCall, Message, Turn

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable

    from servers import PrivateMariaDB, PrivatePostgres

CUTS = 100
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 5.0
#: Retries of one cut call before the test gives up on it (the first should answer).
RETRY_ATTEMPTS = 5
#: The keyed calls, in turn. Each stores messages, a state snapshot or an API call.
KINDS = (
    "append_message",
    "record_turn",
    "append_messages",
    "save_state",
    "append_message",
    "record_turn",
    "append_messages",
    "record_api_call",
)


@dataclass
class Call:
    """One write: how to make it, and what it must leave in the database."""

    name: str
    make: Callable[[], Awaitable[Any]]
    key: str | None = None
    contents: list[str] = field(default_factory=list)
    state: dict[str, Any] | None = None
    model: str | None = None


@dataclass
class Ledger:
    """What the calls so far must have stored, in order."""

    contents: list[str] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def add(self, call: Call) -> None:
        self.contents += call.contents
        if call.state is not None:
            self.states.append(call.state)
        if call.model is not None:
            self.models.append(call.model)
        if call.key is not None:
            self.keys.append(call.key)


def keyed_call(store: mofa_persist.Store, sid: uuid.UUID, number: int, version: int) -> Call:
    """The ``number``-th keyed write; ``version`` is the session's state version before it."""
    kind = KINDS[number % len(KINDS)]
    key = f"cut-{number:03d}-{kind}"
    tag = f"k{number:03d}"
    meta = {"call": number}
    if kind == "append_message":
        text = f"{tag}-0"
        return Call(
            kind,
            lambda: store.append_message(sid, "user", text, metadata=meta, idempotency_key=key),
            key,
            [text],
        )
    if kind == "append_messages":
        texts = [f"{tag}-{i}" for i in range(3)]
        items = [{"role": "assistant", "content": t, "metadata": meta} for t in texts]
        return Call(
            kind, lambda: store.append_messages(sid, items, idempotency_key=key), key, texts
        )
    if kind == "record_turn":
        texts = [f"{tag}-{i}" for i in range(2)]
        items = [
            {"role": role, "content": t}
            for role, t in zip(("user", "assistant"), texts, strict=True)
        ]
        state = {"turn": number, "notes": [tag]}
        return Call(
            kind,
            lambda: store.record_turn(
                sid, items, state=state, expected_version=version, idempotency_key=key
            ),
            key,
            texts,
            state,
        )
    if kind == "save_state":
        state = {"saved": number}
        return Call(
            kind,
            lambda: store.save_state(sid, state, expected_version=version, idempotency_key=key),
            key,
            state=state,
        )
    model = f"model-{tag}"
    return Call(
        kind,
        lambda: store.record_api_call(
            session_id=sid,
            model=model,
            status="success",
            latency_ms=number,
            prompt_tokens=number,
            completion_tokens=1,
            idempotency_key=key,
        ),
        key,
        model=model,
    )


def unkeyed_call(store: mofa_persist.Store, sid: uuid.UUID, number: int) -> Call:
    """A write without a key, made with the cutter disarmed."""
    tag = f"u{number:03d}"
    if number % 3 == 0:
        state = {"unkeyed": number}
        return Call("save_state", lambda: store.save_state(sid, state), state=state)
    if number % 3 == 1:
        text = f"{tag}-0"
        return Call(
            "append_message", lambda: store.append_message(sid, "system", text), None, [text]
        )
    texts = [f"{tag}-{i}" for i in range(2)]
    items = [{"role": "tool", "content": t} for t in texts]
    return Call("append_messages", lambda: store.append_messages(sid, items), None, texts)


def _document(value: Any) -> Any:
    """A JSON column's value as Python data (MariaDB's JSON may come back as text)."""
    return json.loads(value) if isinstance(value, str) else value


def parts(result: Any) -> tuple[list[Message], AgentState | None, ApiCall | None]:
    """The records a write call returned."""
    if isinstance(result, Message):
        return [result], None, None
    if isinstance(result, list):
        return result, None, None
    if isinstance(result, Turn):
        return list(result.messages), result.state, None
    if isinstance(result, AgentState):
        return [], result, None
    assert isinstance(result, ApiCall), f"unexpected result {result!r}"
    return [], None, result


async def stored_records(
    direct: mofa_persist.Store, result: Any
) -> tuple[list[Message], AgentState | None, ApiCall | None]:
    """The rows with the ids of ``result``'s records, read on the direct connection."""
    messages, state, api_call = parts(result)
    m, a, c = messages_table, agent_state_table, api_calls_table
    async with direct.engine.connect() as conn:
        stored_messages = []
        if messages:
            stmt = select(m).where(m.c.id.in_([r.id for r in messages])).order_by(m.c.seq)
            for row in await conn.execute(stmt):
                values = dict(row._mapping)
                values["metadata"] = _document(values["metadata"])
                stored_messages.append(Message(**values))
        stored_state = None
        if state is not None:
            row = (await conn.execute(select(a).where(a.c.id == state.id))).first()
            if row is not None:
                stored_state = AgentState(**{**row._mapping, "state": _document(row.state)})
        stored_call = None
        if api_call is not None:
            row = (await conn.execute(select(c).where(c.c.id == api_call.id))).first()
            stored_call = None if row is None else ApiCall(**row._mapping)
    return stored_messages, stored_state, stored_call


async def rows_of(direct: mofa_persist.Store, sid: uuid.UUID, call: Call) -> dict[str, int]:
    """How many rows of ``call`` the server has (by content tag, state, model and key)."""
    m, c, k = messages_table, api_calls_table, idempotency_keys_table
    async with direct.engine.connect() as conn:
        contents = [
            row.content
            for row in await conn.execute(select(m.c.content).where(m.c.session_id == sid))
        ]
        models = [
            row.model for row in await conn.execute(select(c.c.model).where(c.c.session_id == sid))
        ]
        keys = [row.key for row in await conn.execute(select(k.c.key).where(k.c.session_id == sid))]
    states = [_document(row.state) for row in await state_rows(direct, sid)]
    return {
        "messages": sum(contents.count(text) for text in call.contents),
        "states": 0 if call.state is None else states.count(call.state),
        "api_calls": 0 if call.model is None else models.count(call.model),
        "keys": keys.count(call.key),
    }


def _expected_rows(call: Call) -> dict[str, int]:
    return {
        "messages": len(call.contents),
        "states": int(call.state is not None),
        "api_calls": int(call.model is not None),
        "keys": 1,
    }


async def cut_call(cutter: CommitCutter, call: Call, number: int) -> None:
    """Make ``call`` with its COMMIT cut; it must fail as "outcome unknown"."""
    before = cutter.cuts
    cutter.arm()
    try:
        result = await call.make()
    except BackendError as error:
        if cutter.cuts != before + 1:
            pytest.fail(
                f"keyed call {number} ({call.name}) failed before its COMMIT was cut: "
                f"{error!r}; client messages: {list(cutter.recent)}"
            )
        if not error.outcome_unknown:
            pytest.fail(
                f"keyed call {number} ({call.name}) lost its connection during COMMIT but "
                f"raised BackendError with outcome_unknown=False: {error}"
            )
    except Exception as error:
        pytest.fail(
            f"keyed call {number} ({call.name}) raised {type(error).__name__}: {error} "
            f"(cut: {cutter.cuts != before}), expected BackendError(outcome_unknown=True)"
        )
    else:
        pytest.fail(
            f"keyed call {number} ({call.name}) returned {result!r} though the cutter was "
            f"armed (COMMITs cut: {cutter.cuts - before}); client messages: "
            f"{list(cutter.recent)}"
        )
    finally:
        cutter.disarm()


async def retry(call: Call, number: int) -> tuple[Any, int]:
    """Repeat ``call`` with its key until it answers; the answer and the retries made."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return await call.make(), attempt
        except BackendError as error:
            if attempt == RETRY_ATTEMPTS:
                pytest.fail(f"keyed call {number} ({call.name}): {attempt} retries failed: {error}")
            await asyncio.sleep(0.05 * attempt)
        except Exception as error:
            pytest.fail(
                f"keyed call {number} ({call.name}): retry {attempt} with the same key raised "
                f"{type(error).__name__}: {error}"
            )
    raise AssertionError("unreachable")


async def _exactly_once(server: PrivatePostgres | PrivateMariaDB) -> None:
    started = time.monotonic()
    await admin(server.admin_url, ["CREATE DATABASE mofa_exactly_once"])
    direct_url = server.url("mofa_exactly_once")
    direct = await mofa_persist.connect(
        direct_url, connect_timeout=CONNECT_TIMEOUT, call_timeout=CALL_TIMEOUT, pool_size=2
    )
    cutter = CommitCutter(server.kind, server.port)
    await cutter.start()
    store = None
    try:
        store = await mofa_persist.connect(
            direct_url.replace(f":{server.port}/", f":{cutter.port}/", 1),
            migrate=False,
            connect_timeout=CONNECT_TIMEOUT,
            call_timeout=CALL_TIMEOUT,
            pool_size=2,
        )
        sid = (await store.create_session(title="exactly once")).id
        ledger = Ledger()
        retries = unkeyed = 0
        for number in range(CUTS):
            if number % 4 == 3:
                plain = unkeyed_call(store, sid, number)
                await plain.make()
                ledger.add(plain)
                unkeyed += 1
            call = keyed_call(store, sid, number, len(ledger.states))
            await cut_call(cutter, call, number)
            await cutter.settle()
            # The server committed the cut call before the retry: the retry must replay it.
            assert cutter.committed_on_server == cutter.cuts, (
                f"keyed call {number}: the server did not confirm the cut COMMIT"
            )
            landed = await rows_of(direct, sid, call)
            assert landed == _expected_rows(call), (
                f"keyed call {number} ({call.name}) before its retry: {landed}"
            )
            result, attempts = await retry(call, number)
            retries += attempts
            ledger.add(call)
            assert await rows_of(direct, sid, call) == _expected_rows(call), (
                f"keyed call {number} ({call.name}): its retry wrote again"
            )
            # The retry answers with exactly the rows on the server.
            assert await stored_records(direct, result) == parts(result), (
                f"keyed call {number} ({call.name}): the retry's answer {result!r} is not what "
                "the server stored"
            )
        rows = await message_rows(direct, sid)
        states = await state_rows(direct, sid)
        k, c = idempotency_keys_table, api_calls_table
        async with direct.engine.connect() as conn:
            keys = [r.key for r in await conn.execute(select(k.c.key).where(k.c.session_id == sid))]
            models = [
                r.model for r in await conn.execute(select(c.c.model).where(c.c.session_id == sid))
            ]
    finally:
        if store is not None:
            await store.close()
        await cutter.close()
        await direct.close()

    stored = Counter(row.content for row in rows)
    duplicates = sum(count - 1 for count in stored.values()) + sum(
        count - 1 for count in Counter(models).values()
    )
    losses = len(set(ledger.contents) - set(stored)) + len(set(ledger.models) - set(models))
    tally.add(
        "exactly-once at a cut COMMIT",
        server.kind,
        cuts=cutter.cuts,
        committed_on_server=cutter.committed_on_server,
        retries=retries,
        keyed_calls=len(ledger.keys),
        unkeyed_writes=unkeyed,
        messages=len(rows),
        state_versions=len(states),
        api_calls=len(models),
        key_rows=len(keys),
        duplicates=duplicates,
        losses=losses,
        seconds=round(time.monotonic() - started),
    )
    assert cutter.cuts == CUTS
    assert duplicates == 0, [text for text, count in stored.items() if count > 1]
    assert losses == 0, sorted(set(ledger.contents) - set(stored))
    assert sorted(stored) == sorted(ledger.contents), "rows no call wrote"
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1)), "seq has gaps"
    assert [row.content for row in rows] == ledger.contents, "messages out of call order"
    assert [row.version for row in states] == list(range(1, len(states) + 1)), "version gaps"
    assert [_document(row.state) for row in states] == ledger.states
    assert sorted(models) == sorted(ledger.models)
    assert sorted(keys) == sorted(ledger.keys), "not one idempotency key row per keyed call"


async def test_keyed_writes_cut_at_commit_land_exactly_once(
    private: PrivatePostgres | PrivateMariaDB,
) -> None:
    await _exactly_once(private)
