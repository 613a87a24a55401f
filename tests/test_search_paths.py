"""Search's two ways to the same answer, on every backend: without filters the candidates are
sorted from the index alone (SQLite: the FTS5 table and its rowid map, which holds each
message's created_at), with filters ``messages`` is joined for every match. Both must give
the same hits in the same order, and the map must follow the messages it stands for."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from conftest import selected_backends
from sqlalchemy import text

from mofa_persist.repository import search as search_module

if TYPE_CHECKING:
    from mofa_persist import MessageHit, Store

SQLITE_KINDS = [name for name in selected_backends() if name in ("sqlite", "memory")]


async def _pages(store: Store, query: str, limit: int, **filters: object) -> list[MessageHit]:
    hits: list[MessageHit] = []
    cursor = None
    while True:
        page = await store.search_messages(query, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        hits += page.items
        if page.next_cursor is None:
            return hits
        cursor = page.next_cursor


@pytest.mark.parametrize("windowed", [False, True])
async def test_unfiltered_and_filtered_searches_agree(
    store: Store, tenant: uuid.UUID, windowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if windowed:  # SQLite's rank window from 10 matches on
        monkeypatch.setattr(search_module, "WINDOW_FROM", 10)
    word = f"qz{uuid.uuid4().hex[:12]}"  # a word no other test writes: the store is shared
    view = store.scoped(tenant_id=tenant)
    first = await view.create_session(title="first")
    second = await view.create_session(title="second")
    for session, offset in ((first, 0), (second, 1)):
        await view.append_messages(
            session.id,
            [
                {"role": "user", "content": f"{(word + ' ') * (1 + (index + offset) % 3)}n{index}"}
                for index in range(17)
            ],
        )
    await view.append_message(first.id, "assistant", "nothing to find here")
    everything = await _pages(store, word, 5)
    assert len(everything) == 34
    keys = [(hit.rank, hit.message.created_at, hit.message.id) for hit in everything]
    assert keys == sorted(keys, reverse=True)
    expected = [(hit.message.id, hit.rank, hit.session_title) for hit in everything]
    early = datetime(2000, 1, 1, tzinfo=UTC)
    for reader, filters in (
        (view, {}),
        (store, {"since": early}),
        (store, {"role": "user"}),
    ):
        hits = await _pages(reader, word, 4, **filters)
        assert [(hit.message.id, hit.rank, hit.session_title) for hit in hits] == expected
    own = await _pages(store, word, 3, session_id=second.id)
    assert [hit.message.id for hit in own] == [
        hit.message.id for hit in everything if hit.session_id == second.id
    ]


@pytest.mark.parametrize("backend", SQLITE_KINDS, indirect=True)
async def test_the_sqlite_map_follows_its_messages(store: Store) -> None:
    """The rowid map holds created_at as the message has it: on insert, on an update of
    created_at (no API does one today; a trigger keeps the map right if one ever does), and
    it loses the row on delete."""
    word = f"qz{uuid.uuid4().hex[:12]}"
    session = await store.create_session()
    messages = await store.append_messages(
        session.id, [{"role": "user", "content": f"{word} {index}"} for index in range(3)]
    )

    async def mapped() -> dict[str, str]:
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT k.message_id, k.created_at, m.created_at FROM messages_search_map k"
                    " LEFT JOIN messages m ON m.id = k.message_id WHERE k.message_id IN "
                    f"({', '.join(repr(message.id.hex) for message in messages)})"
                )
            )
            found = {}
            for message_id, in_map, in_messages in rows:
                assert in_map == in_messages
                found[message_id] = in_map
            return found

    assert len(await mapped()) == 3
    moved = messages[0].id.hex
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE messages SET created_at = '2001-02-03 04:05:06.000000' WHERE id = :id"),
            {"id": moved},
        )
    assert (await mapped())[moved] == "2001-02-03 04:05:06.000000"
    hits = await _pages(store, word, 2)
    assert [hit.message.id.hex for hit in hits][-1] == moved  # oldest last among equal ranks
    await store.delete_session(session.id)
    assert await mapped() == {}
    assert (await store.search_messages(word)).items == []
