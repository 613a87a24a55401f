"""Exactly-once writes and history operations, on every backend: idempotency keys, pop,
rewind and fork (and a rewind racing with appends)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mofa_persist import ConflictError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from mofa_persist import Store


# ---------------------------------------------------------------------- idempotency keys


async def test_a_retry_with_the_key_returns_the_first_result_and_writes_nothing(
    store: Store,
) -> None:
    session = await store.create_session()
    first = await store.append_message(session.id, "user", "hi", idempotency_key="m-1")
    again = await store.append_message(session.id, "user", "hi", idempotency_key="m-1")
    assert again == first
    turn = await store.record_turn(
        session.id,
        [{"role": "assistant", "content": "hello", "metadata": {"a": 1}}],
        state={"step": 1},
        idempotency_key="t-1",
    )
    assert (
        await store.record_turn(
            session.id,
            [{"role": "assistant", "content": "hello", "metadata": {"a": 1}}],
            state={"step": 1},
            idempotency_key="t-1",
        )
        == turn
    )
    batch = [{"role": "user", "content": str(i)} for i in range(3)]
    stored = await store.append_messages(session.id, batch, idempotency_key="b-1")
    assert await store.append_messages(session.id, batch, idempotency_key="b-1") == stored
    saved = await store.save_state(session.id, {"step": 2}, idempotency_key="s-1")
    assert await store.save_state(session.id, {"step": 2}, idempotency_key="s-1") == saved
    call = {"model": "m", "status": "success", "latency_ms": 3, "idempotency_key": "c-1"}
    recorded = await store.record_api_call(session_id=session.id, **call)
    assert await store.record_api_call(session_id=session.id, **call) == recorded
    lone = await store.record_api_call(session_id=None, **call)  # per tenant: another scope
    assert lone.id != recorded.id
    assert await store.record_api_call(session_id=None, **call) == lone
    after = await store.get_session(session.id)
    assert (after.last_seq, after.state_version) == (5, 2)
    assert (await store.usage(session_id=session.id)).calls == 1


async def test_the_same_key_with_another_payload_is_a_conflict(store: Store) -> None:
    session = await store.create_session()
    await store.append_message(session.id, "user", "hi", idempotency_key="k")
    for attempt in (
        store.append_message(session.id, "user", "other", idempotency_key="k"),
        store.append_message(session.id, "user", "hi", metadata={"x": 1}, idempotency_key="k"),
        store.save_state(session.id, {"a": 1}, idempotency_key="k"),
    ):
        with pytest.raises(ConflictError, match="different"):
            await attempt
    assert await store.count_messages(session.id) == 1
    # Keys are per session: another session may use the same key.
    other = await store.create_session()
    assert (await store.append_message(other.id, "user", "x", idempotency_key="k")).seq == 1


@pytest.mark.parametrize("key", ["", "x" * 201, "line\nbreak", "tab\there", 42, b"bytes"])
async def test_malformed_keys_are_refused_before_writing(store: Store, key: object) -> None:
    session = await store.create_session()
    with pytest.raises(InvalidInputError, match="idempotency_key"):
        await store.append_message(session.id, "user", "x", idempotency_key=key)  # type: ignore[arg-type]
    assert await store.count_messages(session.id) == 0


async def test_concurrent_calls_with_one_key_store_once(store: Store) -> None:
    session = await store.create_session()
    results = await asyncio.gather(
        *(
            store.record_turn(
                session.id,
                [{"role": "user", "content": "once"}],
                state={"n": 1},
                idempotency_key="race",
            )
            for _ in range(10)
        )
    )
    assert all(result == results[0] for result in results)
    assert await store.count_messages(session.id) == 1
    assert (await store.get_session(session.id)).state_version == 1


async def test_a_key_of_another_view_is_not_replayed_there(store: Store) -> None:
    tenant = store.scoped(tenant_id=uuid.uuid4())
    session = await tenant.create_session()
    await tenant.append_message(session.id, "user", "secret", idempotency_key="k")
    stranger = store.scoped(tenant_id=uuid.uuid4())
    with pytest.raises(NotFoundError):
        await stranger.append_message(session.id, "user", "secret", idempotency_key="k")


async def test_keys_go_with_their_session(store: Store) -> None:
    session = await store.create_session()
    await store.append_message(session.id, "user", "x", idempotency_key="k")
    await store.delete_session(session.id)
    with pytest.raises(NotFoundError):
        await store.append_message(session.id, "user", "x", idempotency_key="k")


# ---------------------------------------------------------------------- pop and rewind


async def test_pop_returns_the_newest_message_and_its_seq_is_reused(store: Store) -> None:
    session = await store.create_session()
    assert await store.pop_message(session.id) is None
    stored = await store.append_messages(
        session.id, [{"role": "user", "content": str(i)} for i in range(3)]
    )
    popped = await store.pop_message(session.id)
    assert popped == stored[-1]
    assert [m.content for m in await store.get_messages(session.id)] == ["0", "1"]
    assert (await store.append_message(session.id, "user", "again")).seq == 3
    with pytest.raises(NotFoundError):
        await store.pop_message(uuid.uuid4())


async def test_rewind_cuts_history_and_the_state_saved_after_the_cut(store: Store) -> None:
    session = await store.create_session()
    for step in range(1, 5):  # turns at seq 2, 4, 6, 8 with states 1..4
        await store.record_turn(
            session.id,
            [{"role": "user", "content": f"q{step}"}, {"role": "assistant", "content": f"a{step}"}],
            state={"step": step},
        )
    result = await store.rewind(session.id, 4)
    assert (result.last_seq, result.state_version) == (4, 2)
    assert (result.messages_deleted, result.states_deleted) == (4, 2)
    assert [m.seq for m in await store.get_messages(session.id)] == [1, 2, 3, 4]
    newest = await store.load_state(session.id)
    assert newest is not None
    assert (newest.version, newest.state, newest.at_seq) == (2, {"step": 2}, 4)
    turn = await store.record_turn(
        session.id, [{"role": "user", "content": "new"}], state={"step": 9}, expected_version=2
    )
    assert turn.messages[0].seq == 5
    assert turn.state is not None
    assert turn.state.version == 3
    with pytest.raises(InvalidInputError, match="beyond"):
        await store.rewind(session.id, 99)
    with pytest.raises(InvalidInputError):
        await store.rewind(session.id, -1)
    assert (await store.rewind(session.id, 0)).last_seq == 0
    assert await store.get_messages(session.id) == []
    assert await store.load_state(session.id) is None


async def test_a_key_whose_rows_were_rewound_stores_again(store: Store) -> None:
    session = await store.create_session()
    await store.append_message(session.id, "user", "keep")
    gone = await store.append_message(session.id, "user", "undo me", idempotency_key="k")
    await store.rewind(session.id, 1)
    again = await store.append_message(session.id, "user", "undo me", idempotency_key="k")
    assert again.id != gone.id
    assert again.seq == 2


# ---------------------------------------------------------------------- fork


async def test_fork_copies_history_and_state_up_to_the_point(store: Store) -> None:
    tenant = uuid.uuid4()
    view = store.scoped(tenant_id=tenant)
    session = await view.create_session(title="plan", metadata={"k": "v"})
    for step in range(1, 4):
        await view.record_turn(
            session.id, [{"role": "user", "content": f"m{step}"}], state={"step": step}
        )
    fork = await view.fork_session(session.id, at_seq=2, title="plan B")
    assert (fork.parent_session_id, fork.forked_at_seq) == (session.id, 2)
    assert (fork.tenant_id, fork.title, fork.metadata) == (tenant, "plan B", {"k": "v"})
    assert (fork.last_seq, fork.state_version) == (2, 2)
    copied = await view.get_messages(fork.id)
    assert [(m.seq, m.content) for m in copied] == [(1, "m1"), (2, "m2")]
    assert {m.id for m in copied}.isdisjoint({m.id for m in await view.get_messages(session.id)})
    state = await view.load_state(fork.id)
    assert state is not None
    assert (state.version, state.state) == (2, {"step": 2})
    assert (await view.append_message(fork.id, "user", "branch")).seq == 3
    assert await view.count_messages(session.id) == 3  # the parent is untouched
    children = await view.list_sessions(parent_session_id=session.id)
    assert [s.id for s in children.items] == [fork.id]
    whole = await view.fork_session(session.id)
    assert whole.forked_at_seq == 3
    with pytest.raises(InvalidInputError, match="beyond"):
        await view.fork_session(session.id, at_seq=4)
    with pytest.raises(NotFoundError):
        await store.scoped(tenant_id=uuid.uuid4()).fork_session(session.id)


async def test_fork_of_a_long_session_is_exact(store: Store) -> None:
    session = await store.create_session()
    for start in range(0, 2500, 500):
        await store.append_messages(
            session.id, [{"role": "user", "content": f"{i}"} for i in range(start, start + 500)]
        )
    fork = await store.fork_session(session.id, batch_size=400)
    assert await store.count_messages(fork.id) == 2500
    tail = await store.get_messages(fork.id, limit=2)
    assert [(m.seq, m.content) for m in tail] == [(2499, "2498"), (2500, "2499")]


# ---------------------------------------------------------------------- rewind racing appends


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    appends=st.integers(min_value=2, max_value=12),
    cut=st.integers(min_value=0, max_value=6),
    writers=st.integers(min_value=1, max_value=4),
)
async def test_a_rewind_racing_with_appends_leaves_a_consistent_session(
    store: Store, appends: int, cut: int, writers: int
) -> None:
    session = await store.create_session()
    await store.append_messages(session.id, [{"role": "user", "content": "seed"}] * 6)
    await store.save_state(session.id, {"v": 0})

    async def writer(number: int) -> None:
        for i in range(appends):
            await store.record_turn(
                session.id,
                [{"role": "user", "content": f"w{number}-{i}"}],
                state={"w": number, "i": i},
            )

    results = await asyncio.gather(
        *(writer(n) for n in range(writers)), store.rewind(session.id, cut)
    )
    rewound = results[-1]
    messages = await store.get_messages(session.id)
    after = await store.get_session(session.id)
    # Gap-free, and ending at last_seq.
    assert [m.seq for m in messages] == list(range(1, after.last_seq + 1))
    # Nothing appended before the cut survives above it: every message above the cut
    # was written after the rewind committed, so it belongs to a writer, in order per writer.
    above = [m for m in messages if m.seq > rewound.last_seq]
    assert all(not m.content.startswith("seed") for m in above)
    for number in range(writers):
        mine = [int(m.content.split("-")[1]) for m in above if m.content.startswith(f"w{number}-")]
        assert mine == sorted(mine)
    states = await store.list_states(session.id, limit=None)
    versions = [s.version for s in reversed(states)]
    assert versions == list(range(1, after.state_version + 1))
    assert all(s.at_seq <= after.last_seq for s in states)
    assert [s.at_seq for s in reversed(states)] == sorted(s.at_seq for s in states)
