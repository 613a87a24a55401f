"""Messages: seq numbering, the context window, paging, counting, exact content."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mofa_persist import InvalidInputError, Message, NotFoundError, Store
from mofa_persist.validate import MAX_TEXT_BYTES


async def test_append_message_numbers_seq_from_one(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    first = await scoped_store.append_message(session.id, "user", "hello")
    second = await scoped_store.append_message(session.id, "assistant", "hi", metadata={"m": 1})
    assert isinstance(first, Message)
    assert (first.seq, second.seq) == (1, 2)
    assert first.id.version == 7
    assert first.id < second.id
    assert second.metadata == {"m": 1}
    assert first.created_at.tzinfo is not None


async def test_appended_messages_read_back_exactly(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    written = await scoped_store.append_messages(
        session.id,
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what's 2+2?", "metadata": {"lang": "en"}},
            {"role": "assistant", "content": "4", "metadata": {"tokens": 1}},
            {"role": "tool", "content": '{"result": 4}'},
        ],
    )
    assert [m.seq for m in written] == [1, 2, 3, 4]
    assert await scoped_store.get_messages(session.id) == written


async def test_append_moves_session_updated_at_and_last_seq(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    await scoped_store.append_messages(session.id, [{"role": "user", "content": "x"}] * 4)
    after = await scoped_store.get_session(session.id)
    assert after.updated_at > session.updated_at
    assert after.last_seq == 4


async def test_append_to_unknown_session_is_not_found_and_writes_nothing(
    scoped_store: Store,
) -> None:
    with pytest.raises(NotFoundError):
        await scoped_store.append_message(uuid.uuid4(), "user", "lost?")


async def test_append_empty_batch_returns_nothing(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    assert await scoped_store.append_messages(session.id, []) == []
    with pytest.raises(NotFoundError):
        await scoped_store.append_messages(uuid.uuid4(), [])


async def test_get_messages_with_limit_returns_the_newest_in_order(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    await scoped_store.append_messages(
        session.id, [{"role": "user", "content": f"m{i}"} for i in range(1, 21)]
    )
    window = await scoped_store.get_messages(session.id, limit=5)
    assert [m.seq for m in window] == [16, 17, 18, 19, 20]
    assert [m.content for m in window] == ["m16", "m17", "m18", "m19", "m20"]


async def test_get_messages_pages_backwards_and_forwards(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    await scoped_store.append_messages(
        session.id, [{"role": "user", "content": str(i)} for i in range(1, 11)]
    )
    older = await scoped_store.get_messages(session.id, limit=3, before_seq=8)
    assert [m.seq for m in older] == [5, 6, 7]
    newer = await scoped_store.get_messages(session.id, limit=3, after_seq=4)
    assert [m.seq for m in newer] == [5, 6, 7]
    between = await scoped_store.get_messages(session.id, after_seq=2, before_seq=6)
    assert [m.seq for m in between] == [3, 4, 5]
    assert [m.seq for m in await scoped_store.get_messages(session.id, after_seq=8)] == [9, 10]
    assert await scoped_store.get_messages(session.id, after_seq=10) == []
    assert await scoped_store.get_messages(session.id, limit=0) == []


async def test_get_messages_of_empty_and_unknown_sessions(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    assert await scoped_store.get_messages(session.id, limit=50) == []
    assert await scoped_store.count_messages(session.id) == 0
    with pytest.raises(NotFoundError):
        await scoped_store.get_messages(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await scoped_store.count_messages(uuid.uuid4())


async def test_count_messages(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    await scoped_store.append_messages(session.id, [{"role": "user", "content": "x"}] * 7)
    assert await scoped_store.count_messages(session.id) == 7


async def test_concurrent_appends_keep_seq_gap_free(scoped_store: Store) -> None:
    session = await scoped_store.create_session()

    async def writer(name: int) -> list[int]:
        seqs = []
        for i in range(10):
            message = await scoped_store.append_message(session.id, "user", f"{name}:{i}")
            seqs.append(message.seq)
        return seqs

    results = await asyncio.gather(*(writer(n) for n in range(8)))
    for seqs in results:
        assert seqs == sorted(seqs)  # each writer sees its own messages in order
    everything = await scoped_store.get_messages(session.id)
    assert [m.seq for m in everything] == list(range(1, 81))
    assert sorted(m.content for m in everything) == sorted(
        f"{n}:{i}" for n in range(8) for i in range(10)
    )


@pytest.mark.parametrize(
    "content",
    [
        "",
        "emoji 😀🚀 and 4-byte 𝄞 𠜎",
        "quotes ' \" ` and backslashes \\ \\\\",
        "'; DROP TABLE messages; --",
        "Robert'); DELETE FROM sessions WHERE ('1'='1",
        "line\nbreaks\r\nand\ttabs",
        "\u200b zero width \ufeff BOM \u202e RTL",
        "%s %(name)s :name ? $1 {0}",
    ],
)
async def test_content_round_trips_verbatim(scoped_store: Store, content: str) -> None:
    session = await scoped_store.create_session()
    await scoped_store.append_message(session.id, "user", content)
    (stored,) = await scoped_store.get_messages(session.id)
    assert stored.content == content


async def test_ten_megabyte_message_fits(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    content = ("0123456789abcdef" * 65536) * 10  # 10 MiB
    await scoped_store.append_message(session.id, "assistant", content)
    (stored,) = await scoped_store.get_messages(session.id, limit=1)
    assert len(stored.content) == len(content)
    assert stored.content == content


async def test_content_over_the_limit_is_refused(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError, match="limit"):
        await scoped_store.append_message(session.id, "user", "x" * (MAX_TEXT_BYTES + 1))
    assert await scoped_store.count_messages(session.id) == 0
