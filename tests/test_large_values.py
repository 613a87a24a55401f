"""Large values: a 10 MB message, or a 12 MiB document, round-trips on every backend.

MySQL is the hard case: pymysql escapes values into the statement text (``\\``, quotes,
newlines... take two bytes each), and MariaDB refuses a statement longer than its
max_allowed_packet (16 MiB by default). Values are compared by length and SHA-256, so a
failure never prints megabytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import admin, selected_backends, unavailable
from sqlalchemy import update

import mofa_persist
from mofa_persist import InvalidInputError, Store, sql, writes
from mofa_persist.convert import _NewMessage, _now
from mofa_persist.ids import uuid7
from mofa_persist.models import messages_table, sessions_table
from mofa_persist.translate import Failure, classify, to_backend_error
from mofa_persist.urls import parse_url
from mofa_persist.validate import MAX_TEXT_BYTES, encode_document

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TEN_MB = 10_000_000
#: The MySQL-only tests: an empty list deselects them (see conftest).
MYSQL = [name for name in selected_backends() if name == "mysql"]


def digest(text: str) -> tuple[int, str]:
    return len(text), hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_digest(document: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {key: digest(value) for key, value in document.items()}


def _mixed(chars: int) -> str:
    # Every character pymysql escapes, plus 2- and 3-byte ones: 17 bytes per 14 characters.
    pattern = "\\'\"\n\r\x1a" * 2 + "é€"
    return (pattern * (chars // len(pattern) + 1))[:chars]


CONTENTS = {
    "backslashes": lambda: "\\" * TEN_MB,
    "quotes": lambda: "'" * TEN_MB,
    "newlines": lambda: "\n" * TEN_MB,
    "mixed": lambda: _mixed(TEN_MB),
    "emoji_at_the_limit": lambda: "\U0001f600" * (MAX_TEXT_BYTES // 4),
}


@pytest.mark.parametrize("kind", list(CONTENTS))
async def test_large_message_round_trips(store: Store, kind: str) -> None:
    content = CONTENTS[kind]()
    assert len(content.encode("utf-8")) <= MAX_TEXT_BYTES
    session = await store.create_session()
    written = await store.append_message(session.id, "assistant", content)
    assert digest(written.content) == digest(content)
    (read,) = await store.get_messages(session.id)
    assert (read.id, read.seq) == (written.id, 1)
    assert digest(read.content) == digest(content)


async def test_large_content_and_metadata_in_one_message(store: Store) -> None:
    content = "\\" * TEN_MB
    # JSON keeps a quote as is: 12 MiB of document, twice that once escaped for MySQL.
    metadata = {"q": "'" * (MAX_TEXT_BYTES - 16)}
    session = await store.create_session()
    await store.append_message(session.id, "tool", content, metadata=metadata)
    (read,) = await store.get_messages(session.id)
    assert digest(read.content) == digest(content)
    assert document_digest(read.metadata) == document_digest(metadata)


async def test_record_turn_with_large_messages_and_state(store: Store) -> None:
    contents = ["\\" * 6_000_000, "\\" * 6_000_000]
    # JSON doubles the backslashes: 5 MB of document, about 10 MB escaped.
    state = {"notes": "\\'" * 1_666_666}
    session = await store.create_session()
    turn = await store.record_turn(
        session.id,
        [{"role": "user", "content": contents[0]}, {"role": "assistant", "content": contents[1]}],
        state=state,
    )
    assert [m.seq for m in turn.messages] == [1, 2]
    assert turn.state is not None
    assert turn.state.version == 1
    read = await store.get_messages(session.id)
    assert [digest(m.content) for m in read] == [digest(c) for c in contents]
    loaded = await store.load_state(session.id)
    assert loaded is not None
    assert document_digest(loaded.state) == document_digest(state)


async def test_append_messages_with_three_large_items(store: Store) -> None:
    contents = [char * 5_000_000 for char in ("\\", "'", "\n")]
    session = await store.create_session()
    written = await store.append_messages(
        session.id, [{"role": "user", "content": content} for content in contents]
    )
    assert [m.seq for m in written] == [1, 2, 3]
    read = await store.get_messages(session.id)
    assert [digest(m.content) for m in read] == [digest(c) for c in contents]


async def test_large_and_small_messages_in_one_batch(store: Store) -> None:
    contents = ["first", "'" * TEN_MB, "middle", "\\" * TEN_MB, "last"]
    session = await store.create_session()
    written = await store.append_messages(
        session.id,
        [
            {"role": "user", "content": content, "metadata": {"n": index}}
            for index, content in enumerate(contents)
        ],
    )
    assert [m.seq for m in written] == [1, 2, 3, 4, 5]
    read = await store.get_messages(session.id)
    assert [(m.seq, m.metadata, digest(m.content)) for m in read] == [
        (index + 1, {"n": index}, digest(content)) for index, content in enumerate(contents)
    ]


async def test_large_state_round_trips(store: Store) -> None:
    state = {"q": "'" * (MAX_TEXT_BYTES - 16)}
    session = await store.create_session()
    await store.save_state(session.id, state)
    loaded = await store.load_state(session.id)
    assert loaded is not None
    assert document_digest(loaded.state) == document_digest(state)


async def test_large_session_metadata_round_trips(store: Store) -> None:
    metadata = {"q": "'" * (MAX_TEXT_BYTES - 16)}
    session = await store.create_session(metadata=metadata)
    assert document_digest((await store.get_session(session.id)).metadata) == document_digest(
        metadata
    )
    replaced = {"b": "\\\n" * ((MAX_TEXT_BYTES - 16) // 4)}  # JSON doubles both
    await store.update_session(session.id, metadata=replaced)
    assert document_digest((await store.get_session(session.id)).metadata) == document_digest(
        replaced
    )


async def test_core_write_takes_large_rows(store: Store) -> None:
    """The Core turn (keyed writes; SQLite without RETURNING) handles them like the lean one."""
    session = await store.create_session()
    content = "\\" * TEN_MB
    metadata = {"q": "'" * 3_000_000}
    state = {"s": "'" * (MAX_TEXT_BYTES - 16)}
    items = [
        _NewMessage("user", content, encode_document("metadata", metadata)),
        _NewMessage("assistant", "small", encode_document("metadata", {})),
    ]
    async with store.engine.begin() as conn:
        stored, saved = await writes.core_write(
            store._backend, store._scope, session.id, items,
            encode_document("state", state), None, conn,
        )  # fmt: skip
    assert [m.seq for m in stored] == [1, 2]
    assert saved is not None
    first, second = await store.get_messages(session.id)
    assert (digest(first.content), document_digest(first.metadata)) == (
        digest(content),
        document_digest(metadata),
    )
    assert (second.content, second.metadata) == ("small", {})
    loaded = await store.load_state(session.id)
    assert loaded is not None
    assert document_digest(loaded.state) == document_digest(state)


async def test_execute_fitted_updates_a_large_document(store: Store) -> None:
    """The helper for one-row Core writes (session metadata)."""
    session = await store.create_session()
    metadata = {"q": "\\\n" * ((MAX_TEXT_BYTES - 16) // 4)}  # JSON doubles both
    values = {"metadata": encode_document("metadata", metadata), "updated_at": _now()}
    async with store.engine.begin() as conn:
        statement = update(sessions_table).where(sessions_table.c.id == session.id)
        result = await writes.execute_fitted(store._backend, conn, statement, values)
        assert result.rowcount == 1
    read = await store.get_session(session.id)
    assert document_digest(read.metadata) == document_digest(metadata)


async def test_insert_rows_copies_large_rows(store: Store) -> None:
    """The helper for Core copies of rows (forks, imports): large rows go one by one."""
    session = await store.create_session()
    contents = ["before", "\\" * TEN_MB, "after"]
    now = _now()
    rows = [
        {
            "id": uuid7(),
            "session_id": session.id,
            "seq": index + 1,
            "role": "user",
            "content": content,
            "metadata": encode_document("metadata", {"n": index}),
            "created_at": now,
        }
        for index, content in enumerate(contents)
    ]
    async with store.engine.begin() as conn:
        await writes.insert_rows(store._backend, conn, messages_table, rows)
    read = await store.get_messages(session.id)
    assert [(m.seq, m.metadata, digest(m.content)) for m in read] == [
        (index + 1, {"n": index}, digest(content)) for index, content in enumerate(contents)
    ]


async def test_just_over_the_limit_is_refused_before_writing(store: Store) -> None:
    session = await store.create_session()
    await store.append_message(session.id, "user", "kept")
    over = "\\" * (MAX_TEXT_BYTES + 1)
    with pytest.raises(InvalidInputError, match="content"):
        await store.append_message(session.id, "user", over)
    with pytest.raises(InvalidInputError, match="messages"):
        await store.append_messages(
            session.id,
            [{"role": "user", "content": "fits"}, {"role": "user", "content": over}],
        )
    with pytest.raises(InvalidInputError, match="metadata"):
        await store.append_message(
            session.id, "user", "fits", metadata={"q": "'" * (MAX_TEXT_BYTES - 7)}
        )
    with pytest.raises(InvalidInputError, match="state"):
        await store.record_turn(
            session.id,
            [{"role": "user", "content": "fits"}],
            state={"q": "'" * (MAX_TEXT_BYTES - 7)},
        )
    assert await store.count_messages(session.id) == 1
    assert await store.load_state(session.id) is None


# -- the planner, without a server


@pytest.mark.parametrize("text", ["plain", "\\'\"\n\r\x1a", "é€\U0001f600", _mixed(1000), ""])
def test_literal_size_is_what_pymysql_sends(text: str) -> None:
    converters = pytest.importorskip("pymysql.converters")
    assert sql.literal_size(text) == len(converters.escape_str(text).encode("utf-8"))


def test_plan_row_stages_the_largest_values_first() -> None:
    packet = 8192  # budget: 8192 - STATEMENT_SLACK = 6144 bytes
    assert sql.plan_row(("a", "b"), ("x" * 3000, "y" * 3000), packet) == (False, False)
    assert sql.plan_row(("a", "b"), ("'" * 3000, "y" * 100), packet) == (False, False)
    assert sql.plan_row(("a", "b"), ("'" * 3100, "y" * 100), packet) == (True, False)
    assert sql.plan_row(("a", "b"), ("'" * 3200, "\\" * 3100), packet) == (True, True)
    assert sql.plan_row(("a", "b"), ("'" * 2000, "\\" * 2500), packet) == (False, True)


def test_a_value_larger_than_a_tiny_packet_is_refused() -> None:
    with pytest.raises(InvalidInputError) as refused:
        sql.plan_row(("messages[0].content", "messages[0].metadata"), ("x" * 5000, "{}"), 4096)
    message = str(refused.value)
    assert "messages[0].content" in message
    assert "max_allowed_packet is 4096" in message
    # Multi-byte characters count in UTF-8 bytes.
    with pytest.raises(InvalidInputError, match="1200 bytes"):
        sql.plan_row(("state",), ("\U0001f600" * 300,), 3000)
    assert sql.plan_row(("state",), ("\U0001f600" * 200,), 3000) == (False,)


@pytest.mark.parametrize("packet", [2049, 3000, 4096, 65536])
def test_staging_statements_fit_the_packet_and_rebuild_the_value(packet: int) -> None:
    data = _mixed(20_000).encode("utf-8") + "\U0001f600".encode() * 1001
    statements = list(sql.staging_statements("v", data, packet))
    assert len(statements) == -(-len(data) // sql.chunk_bytes(packet))
    assert all(len(statement.encode()) <= packet for statement in statements)
    assert statements[0].startswith("SET @v = X'")
    assert all(s.startswith("SET @v = CONCAT(@v, X'") for s in statements[1:])
    rebuilt = b"".join(bytes.fromhex(s.split("X'")[1].split("'")[0]) for s in statements)
    assert rebuilt == data  # pieces may split a character; only the whole is decoded


# -- translation of packet errors


def _packet_errors() -> tuple[Any, Any]:
    pymysql = pytest.importorskip("pymysql")
    too_large = pymysql.err.OperationalError(
        1153, "Got a packet bigger than 'max_allowed_packet' bytes"
    )
    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    return too_large, lost


def test_a_packet_error_is_not_a_lost_connection() -> None:
    too_large, lost = _packet_errors()
    assert classify(too_large) is Failure.TOO_LARGE
    assert classify(lost) is Failure.CONNECTION
    lost.__context__ = too_large  # as when the dropped connection is used again
    assert classify(lost) is Failure.TOO_LARGE
    url = parse_url("mysql://u:secret@db.example:3306/app")
    translated = to_backend_error(too_large, url, "append a message")
    assert isinstance(translated, InvalidInputError)
    assert "max_allowed_packet" in str(translated)
    assert "cannot reach" not in str(translated)
    assert "secret" not in str(translated)


# -- MySQL only


@pytest.mark.parametrize("backend", MYSQL)
async def test_mysql_stages_only_what_the_packet_cannot_hold(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged: list[int] = []
    original = sql.MySqlLane.stage

    async def spy(self: sql.MySqlLane, db: Any, variable: str, data: bytes, packet: int) -> None:
        staged.append(len(data))
        await original(self, db, variable, data, packet)

    monkeypatch.setattr(sql.MySqlLane, "stage", spy)
    packet = await _server_packet(store)
    session = await store.create_session()
    await store.append_message(session.id, "user", "small")
    await store.append_message(session.id, "user", "x" * TEN_MB)  # measured, sent as is
    assert staged == []
    await store.append_message(session.id, "user", "\\" * TEN_MB)
    assert staged == ([TEN_MB] if packet - sql.STATEMENT_SLACK < 2 * TEN_MB + 2 else [])


@pytest.mark.parametrize("backend", MYSQL)
async def test_mysql_packet_error_is_reported_as_too_large(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement over the packet (forced here by disabling the planner) gets 1153: that is
    an InvalidInputError naming max_allowed_packet, tried once, and the store carries on."""
    packet = await _server_packet(store)
    if packet > 2 * TEN_MB:
        pytest.skip(f"max_allowed_packet is {packet}: a 10 MB message always fits")
    session = await store.create_session()
    attempts = 0
    lean_write = writes.lean_write

    async def counted(*args: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return await lean_write(*args)

    monkeypatch.setattr(writes, "lean_write", counted)
    monkeypatch.setattr(sql, "FAST_CHARS", 10 * TEN_MB)
    with pytest.raises(InvalidInputError, match="max_allowed_packet") as refused:
        await store.append_message(session.id, "user", "\\" * TEN_MB)
    assert "cannot reach" not in str(refused.value)
    assert attempts == 1
    assert await store.count_messages(session.id) == 0
    await store.append_message(session.id, "user", "after")
    assert await store.count_messages(session.id) == 1


async def _server_packet(store: Store) -> int:
    async with store.engine.connect() as conn:
        value = (await conn.exec_driver_sql("SELECT @@max_allowed_packet")).scalar_one()
    return int(value)


def _private_servers() -> Any:
    """tests/reliability/servers.py, which starts a private MariaDB of a test's own."""
    name = "mofa_tests_private_servers"
    if name not in sys.modules:
        path = Path(__file__).parent / "reliability" / "servers.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


SMALL_PACKET = 1024 * 1024


@pytest.fixture
async def small_packet_store() -> AsyncIterator[Store]:
    """A store on a private MariaDB whose max_allowed_packet is 1 MiB: set there with SET
    GLOBAL, which the shared server must never get."""
    servers = _private_servers()
    try:
        server = servers.PrivateMariaDB()
        await asyncio.to_thread(server.start)
    except (servers.ServerUnavailable, OSError) as error:
        unavailable("private MariaDB server", error)
        raise  # unreachable: unavailable() fails or skips
    try:
        assert server.port != 3306
        await admin(
            server.admin_url,
            [
                f"SET GLOBAL max_allowed_packet = {SMALL_PACKET}",
                "CREATE DATABASE small CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            ],
        )
        async with await mofa_persist.connect(server.url("small")) as store:
            yield store
    finally:
        await asyncio.to_thread(server.destroy)


@pytest.mark.slow
@pytest.mark.parametrize("backend", MYSQL)
async def test_mysql_with_a_small_packet(backend: str, small_packet_store: Store) -> None:
    """Values staged in many pieces, a batch cut to the packet, and what can never fit on
    this server refused before anything is written, naming max_allowed_packet."""
    store = small_packet_store
    assert await _server_packet(store) == SMALL_PACKET
    session = await store.create_session()
    budget = SMALL_PACKET - sql.STATEMENT_SLACK
    fits = "'" * budget  # 2 MiB escaped: staged in two pieces
    batch = [{"role": "user", "content": "\\" * 200_000} for _ in range(12)]  # 4.8 MB escaped
    await store.append_message(session.id, "user", fits)
    await store.append_messages(session.id, batch)
    state = {"q": "\\" * (budget // 2 - 10)}  # JSON doubles it: staged
    await store.save_state(session.id, state)
    read = await store.get_messages(session.id)
    assert [digest(m.content) for m in read] == [digest(fits)] + [
        digest(item["content"]) for item in batch
    ]
    with pytest.raises(InvalidInputError, match=f"max_allowed_packet is {SMALL_PACKET}"):
        await store.append_message(session.id, "user", "x" * (budget + 1))
    with pytest.raises(InvalidInputError, match=r"state .*max_allowed_packet"):
        await store.record_turn(
            session.id, [{"role": "user", "content": "small"}], state={"q": "y" * budget}
        )
    assert await store.count_messages(session.id) == 13
    loaded = await store.load_state(session.id)
    assert loaded is not None
    assert (loaded.version, document_digest(loaded.state)) == (1, document_digest(state))
