"""Agent state versions, optimistic concurrency, and whole turns."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mofa_persist import AgentState, ConflictError, InvalidInputError, NotFoundError, Store


async def test_save_state_counts_versions_from_one(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    first = await scoped_store.save_state(session.id, {"step": 1})
    second = await scoped_store.save_state(session.id, {"step": 2, "notes": ["a"]})
    assert isinstance(first, AgentState)
    assert (first.version, second.version) == (1, 2)
    assert second.state == {"step": 2, "notes": ["a"]}
    assert (await scoped_store.get_session(session.id)).state_version == 2


async def test_load_state_returns_latest_or_requested_version(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    assert await scoped_store.load_state(session.id) is None
    for step in range(1, 4):
        await scoped_store.save_state(session.id, {"step": step})
    latest = await scoped_store.load_state(session.id)
    assert latest is not None
    assert latest.version == 3
    assert latest.state == {"step": 3}
    first = await scoped_store.load_state(session.id, version=1)
    assert first is not None
    assert first.state == {"step": 1}
    with pytest.raises(NotFoundError):
        await scoped_store.load_state(session.id, version=9)


async def test_list_states_is_newest_first(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    for step in range(5):
        await scoped_store.save_state(session.id, {"step": step})
    listed = await scoped_store.list_states(session.id, limit=3)
    assert [s.version for s in listed] == [5, 4, 3]
    assert [s.version for s in await scoped_store.list_states(session.id)] == [5, 4, 3, 2, 1]


async def test_expected_version_guards_the_save(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    first = await scoped_store.save_state(session.id, {"v": 1}, expected_version=0)
    assert first.version == 1
    with pytest.raises(ConflictError):
        await scoped_store.save_state(session.id, {"v": "stale"}, expected_version=0)
    second = await scoped_store.save_state(session.id, {"v": 2}, expected_version=1)
    assert second.version == 2
    latest = await scoped_store.load_state(session.id)
    assert latest is not None
    assert latest.state == {"v": 2}


async def test_concurrent_saves_with_one_expected_version_have_one_winner(
    scoped_store: Store,
) -> None:
    session = await scoped_store.create_session()
    await scoped_store.save_state(session.id, {"v": 0})

    async def attempt(n: int) -> str:
        try:
            await scoped_store.save_state(session.id, {"writer": n}, expected_version=1)
        except ConflictError:
            return "lost"
        return "won"

    outcomes = await asyncio.gather(*(attempt(n) for n in range(10)))
    assert outcomes.count("won") == 1
    assert outcomes.count("lost") == 9
    assert [s.version for s in await scoped_store.list_states(session.id)] == [2, 1]


async def test_save_state_on_unknown_session_is_not_found(scoped_store: Store) -> None:
    with pytest.raises(NotFoundError):
        await scoped_store.save_state(uuid.uuid4(), {"x": 1})
    with pytest.raises(NotFoundError):
        await scoped_store.save_state(uuid.uuid4(), {"x": 1}, expected_version=0)


async def test_record_turn_stores_messages_and_state_together(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    turn = await scoped_store.record_turn(
        session.id,
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "metadata": {"finish_reason": "stop"}},
        ],
        state={"turns": 1},
    )
    assert [m.seq for m in turn.messages] == [1, 2]
    assert turn.state is not None
    assert turn.state.version == 1
    assert await scoped_store.get_messages(session.id) == turn.messages
    assert await scoped_store.load_state(session.id) == turn.state


async def test_record_turn_with_stale_version_writes_nothing(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    await scoped_store.save_state(session.id, {"turns": 0})
    with pytest.raises(ConflictError):
        await scoped_store.record_turn(
            session.id,
            [{"role": "user", "content": "hi"}],
            state={"turns": 1},
            expected_version=0,
        )
    assert await scoped_store.count_messages(session.id) == 0
    assert (await scoped_store.get_session(session.id)).last_seq == 0


async def test_record_turn_with_one_bad_message_writes_nothing(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.record_turn(
            session.id,
            [{"role": "user", "content": "fine"}, {"role": "robot", "content": "bad role"}],
            state={"turns": 1},
        )
    assert await scoped_store.count_messages(session.id) == 0
    assert await scoped_store.load_state(session.id) is None


async def test_record_turn_needs_messages_or_state(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.record_turn(session.id, [])
    with pytest.raises(InvalidInputError):
        await scoped_store.record_turn(
            session.id, [{"role": "user", "content": "x"}], expected_version=0
        )
    state_only = await scoped_store.record_turn(session.id, [], state={"only": True})
    assert state_only.messages == []
    assert state_only.state is not None
