"""Group commit: concurrent appends to one session share a transaction, and every caller still
gets its own records (gap-free seq, its own order) or its own error, on every backend.

Whether calls were grouped is read off ``created_at``: one write stamps all its messages
with one time, and separate writes never share one (see writes.py and grouping.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from conftest import create_database, drop_database

import mofa_persist
from mofa_persist import BackendError, Message, NotFoundError, PersistenceError, Store, grouping

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterator
    from pathlib import Path

TASKS = 20
PER_TASK = 10


def _check_history(history: list[Message], tasks: dict[str, list[Message]]) -> None:
    """seq is 1..n; each task's messages are stored once each, in its own order, exactly
    as the calls returned them."""
    assert [message.seq for message in history] == list(range(1, len(history) + 1))
    assert len({message.id for message in history}) == len(history)
    by_id = {message.id: message for message in history}
    assert sum(len(returned) for returned in tasks.values()) == len(history)
    for returned in tasks.values():
        assert [by_id[message.id] for message in returned] == returned
        seqs = [message.seq for message in returned]
        assert seqs == sorted(seqs)


async def test_concurrent_tasks_into_one_session(store: Store) -> None:
    session = await store.create_session()
    returned: dict[str, list[Message]] = {}

    async def task(number: int) -> None:
        mine = returned.setdefault(f"t{number}", [])
        for index in range(PER_TASK):
            content = f"t{number}-{index}"
            if index % 3 == 0:
                mine.append(await store.append_message(session.id, "user", content))
            elif index % 3 == 1:
                pair = await store.append_messages(
                    session.id,
                    [
                        {"role": "user", "content": content},
                        {"role": "tool", "content": content + "b", "metadata": {"n": index}},
                    ],
                )
                assert [message.content for message in pair] == [content, content + "b"]
                assert pair[1].seq == pair[0].seq + 1
                mine += pair
            else:
                turn = await store.record_turn(
                    session.id, [{"role": "assistant", "content": content}]
                )
                assert turn.state is None
                mine += turn.messages

    await asyncio.gather(*(task(number) for number in range(TASKS)))
    history = await store.get_messages(session.id)
    _check_history(history, returned)
    calls = TASKS * PER_TASK
    assert len(history) == calls + TASKS * sum(1 for i in range(PER_TASK) if i % 3 == 1)
    # Calls shared transactions: far fewer write times than calls.
    transactions = len({message.created_at for message in history})
    assert transactions < calls // 2, (transactions, calls)
    assert (await store.get_session(session.id)).last_seq == len(history)


async def test_mixed_sessions_and_views(store: Store, tenant: uuid.UUID) -> None:
    view = store.scoped(tenant_id=tenant)
    sessions = [await view.create_session() for _ in range(5)]
    returned: dict[str, list[Message]] = {}

    async def task(writer: Store, sid: uuid.UUID, name: str) -> None:
        mine = returned.setdefault(name, [])
        for index in range(8):
            mine.append(await writer.append_message(sid, "user", f"{name}-{index}"))

    # Four tasks per session, half through the view and half through the whole store: the
    # two scopes queue separately but still share the session's row.
    await asyncio.gather(
        *(
            task(view if number % 2 else store, session.id, f"{session.id}-{number}")
            for session in sessions
            for number in range(4)
        )
    )
    for session in sessions:
        history = await view.get_messages(session.id)
        mine = {name: got for name, got in returned.items() if name.startswith(str(session.id))}
        _check_history(history, mine)
        assert len(history) == 32


async def test_missing_session_fails_every_caller_on_its_own(store: Store) -> None:
    missing = uuid.uuid4()
    outcomes = await asyncio.gather(
        *(store.append_message(missing, "user", f"m{number}") for number in range(6)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, NotFoundError) for outcome in outcomes), outcomes
    assert len({id(outcome) for outcome in outcomes}) == len(outcomes)
    assert all(str(missing) in str(outcome) for outcome in outcomes)


async def test_cancelled_waiting_caller_stores_nothing_and_loses_nothing(store: Store) -> None:
    session = await store.create_session()
    tasks = [
        asyncio.create_task(store.append_message(session.id, "user", f"c{number}"))
        for number in range(8)
    ]
    await asyncio.sleep(0)  # every task has run to its first wait: the first one is writing
    tasks[3].cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[3], asyncio.CancelledError)
    stored = [outcome for number, outcome in enumerate(outcomes) if number != 3]
    assert all(isinstance(outcome, Message) for outcome in stored), outcomes
    history = await store.get_messages(session.id)
    assert [message.content for message in history] == [
        f"c{number}" for number in range(8) if number != 3
    ]
    assert history == stored
    assert [message.seq for message in history] == list(range(1, 8))
    # The calls after the cancelled one still went as a group.
    assert len({message.created_at for message in history}) < len(history)


async def test_keyed_appends_are_exactly_once_among_grouped_ones(store: Store) -> None:
    session = await store.create_session()
    calls = [store.append_message(session.id, "user", f"plain{number}") for number in range(6)]
    calls[2:2] = [
        store.append_message(session.id, "user", "keyed", idempotency_key="k-1") for _ in range(3)
    ]
    outcomes = await asyncio.gather(*calls)
    keyed = [message for message in outcomes if message.content == "keyed"]
    assert len({message.id for message in keyed}) == 1
    history = await store.get_messages(session.id)
    assert Counter(message.content for message in history)["keyed"] == 1
    assert len(history) == 7
    assert [message.seq for message in history] == list(range(1, 8))


# ---------------------------------------------------------------- a member the database refuses

POISON = "poison-" + uuid.uuid4().hex


def _refuse_poison(backend: str) -> list[str]:
    """DDL that makes the database itself refuse a message with POISON as its content."""
    if backend in ("memory", "sqlite"):
        return [
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages "
            f"WHEN NEW.content = '{POISON}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
    return [f"ALTER TABLE messages ADD CONSTRAINT refuse_poison CHECK (content <> '{POISON}')"]


@pytest.fixture
def own_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own: its schema gets changed."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite://{tmp_path / 'poison.db'}"
    else:
        url = create_database(backend)
        try:
            yield url
        finally:
            drop_database(backend, url)


@pytest.fixture
async def refusing_store(own_url: str, backend: str) -> AsyncIterator[Store]:
    async with await mofa_persist.connect(own_url) as connected:
        async with connected.engine.begin() as conn:
            for statement in _refuse_poison(backend):
                await conn.exec_driver_sql(statement)
        yield connected


async def test_a_member_the_database_refuses_fails_alone(refusing_store: Store) -> None:
    store = refusing_store
    session = await store.create_session()
    contents = [f"ok{number}" for number in range(10)]
    contents[4] = POISON
    outcomes = await asyncio.gather(
        *(store.append_message(session.id, "user", content) for content in contents),
        return_exceptions=True,
    )
    assert isinstance(outcomes[4], BackendError), outcomes[4]
    assert not outcomes[4].outcome_unknown
    good = [outcome for number, outcome in enumerate(outcomes) if number != 4]
    assert all(isinstance(outcome, Message) for outcome in good), outcomes
    history = await store.get_messages(session.id)
    assert history == good  # in arrival order, each once
    assert [message.seq for message in history] == list(range(1, 10))
    # The next append continues the gap-free numbering.
    assert (await store.append_message(session.id, "user", "after")).seq == 10


async def test_a_refused_member_among_many_appends(refusing_store: Store) -> None:
    store = refusing_store
    session = await store.create_session()
    returned: dict[str, list[Message]] = {}
    refused: list[PersistenceError] = []

    async def task(number: int) -> None:
        mine = returned.setdefault(f"t{number}", [])
        for index in range(6):
            content = POISON if (number, index) == (7, 3) else f"t{number}-{index}"
            try:
                mine.append(await store.append_message(session.id, "user", content))
            except PersistenceError as error:
                refused.append(error)

    await asyncio.gather(*(task(number) for number in range(12)))
    assert len(refused) == 1 and isinstance(refused[0], BackendError)
    history = await store.get_messages(session.id)
    assert len(history) == 12 * 6 - 1
    _check_history(history, returned)


async def test_a_large_queue_is_written_in_bounded_groups(store: Store) -> None:
    session = await store.create_session()
    size = grouping.MAX_GROUP_MESSAGES * 3 // 10  # three calls fit in a group, four do not

    def batch(number: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"b{number}-{index}"} for index in range(size)]

    outcomes = await asyncio.gather(
        *(store.append_messages(session.id, batch(number)) for number in range(6))
    )
    history = await store.get_messages(session.id)
    _check_history(history, {str(number): got for number, got in enumerate(outcomes)})
    assert [message.content for message in history] == [
        f"b{number}-{index}" for number in range(6) for index in range(size)
    ]
    # The first call alone, then calls 1-3 and calls 4-5.
    assert len({message.created_at for message in history}) == 3


async def test_appends_to_many_sessions_at_once(refusing_store: Store, tenant: uuid.UUID) -> None:
    """Tasks appending to many sessions, through two views, among calls that must fail on
    their own (a missing session, another view's session, a value the database refuses).
    SQLite has one writer whatever the session: there, appends to different sessions share
    transactions (writes.sqlite_write_sessions), each session's part in its own savepoint."""
    store = refusing_store
    view = store.scoped(tenant_id=tenant)
    others = await store.scoped(tenant_id=uuid.uuid4()).create_session()
    sessions = [await (view if n % 2 else store).create_session() for n in range(8)]
    returned: dict[str, list[Message]] = {}
    failures: dict[str, BaseException] = {}

    async def task(writer: Store, sid: uuid.UUID, name: str) -> None:
        mine = returned.setdefault(name, [])
        for index in range(6):
            mine.append(await writer.append_message(sid, "user", f"{name}-{index}"))

    async def failing(name: str, call: Awaitable[Message]) -> None:
        with pytest.raises(PersistenceError) as failed:
            await call
        failures[name] = failed.value

    owner = {session.id: (view if n % 2 else store) for n, session in enumerate(sessions)}
    await asyncio.gather(
        *(task(owner[s.id], s.id, f"{s.id}-{n}") for s in sessions for n in range(3)),
        failing("other view", view.append_message(others.id, "user", "not in this view")),
        failing("missing", store.append_message(uuid.uuid4(), "user", "no such session")),
        failing("refused", store.append_message(sessions[0].id, "user", POISON)),
    )
    assert isinstance(failures["other view"], NotFoundError)
    assert isinstance(failures["missing"], NotFoundError)
    refused = failures["refused"]
    assert isinstance(refused, BackendError) and not refused.outcome_unknown, refused
    assert await store.get_messages(others.id) == []
    stamps: dict[object, set[uuid.UUID]] = {}
    for session in sessions:
        history = await store.get_messages(session.id)
        mine = {name: got for name, got in returned.items() if name.startswith(str(session.id))}
        _check_history(history, mine)
        assert len(history) == 18
        for message in history:
            stamps.setdefault(message.created_at, set()).add(session.id)
    if store.url.kind in ("sqlite", "memory"):
        assert any(len(sids) > 1 for sids in stamps.values()), "no transaction spanned sessions"
