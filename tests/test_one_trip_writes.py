"""Writes that end their own transaction in one trip (writes.lean_turn): a write whose bump
matches no row stores nothing, even right after a write that did on the same connection.

On MySQL the inserts read the seq numbers the bump left in LAST_INSERT_ID, a per-connection
value that outlives the statement: a bump that matched nothing (another tenant's session,
another state version) must not let the next inserts reuse the previous write's numbers.
The calls below run one after another, so they share the store's one pooled connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import update

import mofa_persist
from mofa_persist import BackendError, ConflictError, NotFoundError, Store, writes
from mofa_persist.models import sessions_table as s_t
from mofa_persist.urls import parse_url


async def test_unmatched_writes_store_nothing_after_matched_ones(store: Store) -> None:
    mine = store.scoped(tenant_id=uuid.uuid4())
    theirs = await store.scoped(tenant_id=uuid.uuid4()).create_session()
    session = await mine.create_session()
    first = await mine.record_turn(
        session.id,
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        state={"step": 1},
    )
    assert [m.seq for m in first.messages] == [1, 2]
    assert first.state is not None and (first.state.version, first.state.at_seq) == (1, 2)

    with pytest.raises(NotFoundError):  # out of the view: the bump matches no row
        await mine.append_message(theirs.id, "user", "not mine")
    with pytest.raises(NotFoundError):
        await mine.record_turn(theirs.id, [{"role": "user", "content": "x"}], state={"a": 1})
    with pytest.raises(ConflictError):  # another state version: no row either
        await mine.record_turn(
            session.id, [{"role": "user", "content": "stale"}], state={"step": 9},
            expected_version=0,
        )  # fmt: skip
    with pytest.raises(ConflictError):
        await mine.save_state(session.id, {"step": 9}, expected_version=5)

    assert await store.get_messages(theirs.id) == []
    assert await store.load_state(theirs.id) is None
    assert [m.content for m in await mine.get_messages(session.id)] == ["hi", "hello"]
    current = await mine.load_state(session.id)
    assert current is not None and (current.version, current.state) == (1, {"step": 1})

    later = await mine.record_turn(
        session.id, [{"role": "user", "content": "again"}], state={"step": 2}, expected_version=1
    )
    assert [m.seq for m in later.messages] == [3]
    assert later.state is not None and (later.state.version, later.state.at_seq) == (2, 3)
    stored = await mine.get_messages(session.id)
    assert [(m.seq, m.content) for m in stored] == [(1, "hi"), (2, "hello"), (3, "again")]
    assert (await store.get_session(session.id)).last_seq == 3


async def test_a_write_that_gave_up_waiting_for_the_row_lock_never_lands(server_url: str) -> None:
    """A write that meets the session's row locked by another transaction is redone in a
    transaction that waits (writes.RedoInTransaction). When its call times out there, the
    COMMIT was never sent: the error says the outcome is known, and releasing the lock later
    must not let the write through (a statement left waiting in autocommit would commit)."""
    store = await mofa_persist.connect(server_url, call_timeout=1.5)
    try:
        session = await store.create_session()
        await store.append_message(session.id, "user", "before")
        holder = await store.engine.connect()
        transaction = await holder.begin()
        await holder.execute(update(s_t).where(s_t.c.id == session.id).values(title="held"))
        started = time.monotonic()
        with pytest.raises(BackendError) as timed_out:
            await store.append_message(session.id, "user", "gave up")
        assert time.monotonic() - started < 5
        assert not timed_out.value.outcome_unknown, timed_out.value
        await transaction.rollback()
        await holder.close()
        waiter = asyncio.create_task(store.append_message(session.id, "user", "after"))
        assert (await waiter).seq == 2  # the store carries on
        await asyncio.sleep(0.5)
        assert [m.content for m in await store.get_messages(session.id)] == ["before", "after"]
    finally:
        await store.close()


async def test_a_write_the_driver_refused_to_send_is_retried(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg refuses to start a statement while its protocol is busy with a goodbye the
    server just sent (a terminated connection it has not seen close yet). Nothing was sent,
    so the one-trip write is retried on a fresh connection, not reported as uncertain."""
    if parse_url(server_url).kind != "postgresql":
        pytest.skip("asyncpg's refusal; MySQL writes are not one trip")
    from asyncpg.exceptions import InternalClientError

    store = await mofa_persist.connect(server_url)
    try:
        session = await store.create_session()
        refused = 0
        pg_turn = writes.pg_turn

        async def refuse_once(*args: Any, **kwargs: Any) -> Any:
            nonlocal refused
            if not refused:
                refused += 1
                raise InternalClientError(
                    "cannot switch to state 12; another operation (2) is in progress"
                )
            return await pg_turn(*args, **kwargs)

        monkeypatch.setattr(writes, "pg_turn", refuse_once)
        stored = await store.append_message(session.id, "user", "once")
        assert refused == 1 and stored.seq == 1
        assert [m.content for m in await store.get_messages(session.id)] == ["once"]
    finally:
        await store.close()
