"""Export, import and copy carry LangGraph threads (format version 3): a thread's checkpoints,
channel values and pending writes travel with its session, and so does its external key, so
the copy is found again by its thread id and reads back exactly (binary payloads included),
between every pair of backends and along a chain SQLite -> PostgreSQL -> MySQL."""

from __future__ import annotations

import json
import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("langgraph.checkpoint.base")

from conftest import create_database, drop_database, selected_backends
from langgraph.types import Command
from test_langgraph import build

import mofa_persist
from mofa_persist import transfer
from mofa_persist.errors import InvalidInputError
from mofa_persist.integrations.langgraph import NAMESPACE, MofaSaver
from mofa_persist.models import (
    langgraph_blobs_table,
    langgraph_checkpoints_table,
    langgraph_writes_table,
)
from mofa_persist.transfer import Selection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from langgraph.checkpoint.base import CheckpointTuple

BACKENDS = selected_backends()
SQL = [name for name in BACKENDS if name != "memory"]
PAIRS = [(a, b) for a in BACKENDS for b in BACKENDS]
CHAIN = [name for name in ("sqlite", "postgresql", "mysql") if name in BACKENDS]
LANGGRAPH_TABLES = (langgraph_writes_table, langgraph_blobs_table, langgraph_checkpoints_table)


@pytest.fixture(scope="module")
def second_databases() -> Iterator[dict[str, str]]:
    created: dict[str, str] = {}
    yield created
    for dialect, url in created.items():
        drop_database(dialect, url)


@pytest.fixture
def url_of(
    server_databases: dict[str, str], second_databases: dict[str, str], tmp_path: Path
) -> Any:
    """``url_of(backend, second=False)``: a database of this run (another one if asked)."""

    def pick(backend: str, second: bool = False) -> str:
        if backend == "memory":
            return "memory://"
        if backend == "sqlite":
            return f"sqlite://{tmp_path / ('second.db' if second else 'first.db')}"
        pool = second_databases if second else server_databases
        if backend not in pool:
            pool[backend] = create_database(backend)
        return pool[backend]

    return pick


@pytest.fixture
def pair(request: pytest.FixtureRequest, url_of: Any) -> tuple[str, str]:
    """(source URL, destination URL), made before the test's event loop runs."""
    source, target = request.param
    return url_of(source), url_of(target, second=source == target)


@pytest.fixture
def chain(url_of: Any) -> list[str]:
    return [url_of(name) for name in CHAIN]


@pytest.fixture
def two_urls(url_of: Any) -> tuple[str, str]:
    backend = SQL[0] if SQL else "memory"
    return url_of(backend), url_of(backend, second=True)


@pytest.fixture(autouse=True)
async def leave_no_checkpoints(
    server_databases: dict[str, str], second_databases: dict[str, str]
) -> AsyncIterator[None]:
    """Suites that read every table of the run's shared databases find no bytes from here."""
    yield
    for url in [*server_databases.values(), *second_databases.values()]:
        if url.startswith(("sqlite", "memory")):
            continue
        async with await mofa_persist.connect(url) as store, store.engine.begin() as conn:
            for table in LANGGRAPH_TABLES:
                await conn.execute(table.delete())


BIG = os.urandom(3 * 1024 * 1024) + b"\x00" * 7  # binary, not UTF-8, several MiB


async def seed_thread(view: mofa_persist.Store, thread: str) -> None:
    """A graph paused on interrupt() (checkpoints, blobs, pending writes), then raw
    checkpoints with binary values in a subgraph namespace."""
    saver = MofaSaver(view)
    await build(saver).ainvoke({"steps": [], "answer": ""}, {"configurable": {"thread_id": thread}})
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": "child:ß"}}
    versions: dict[str, Any] = {}
    for number in range(1, 4):
        versions["data"] = saver.get_next_version(versions.get("data"), None)
        checkpoint: Any = {
            "v": 1,
            "id": f"1ef00000-0000-6000-8000-{number:012d}",
            "ts": "2026-12-03T00:00:00+00:00",
            "channel_values": {"data": BIG[: number * 1000] if number < 3 else BIG},
            "channel_versions": dict(versions),
            "versions_seen": {},
            "updated_channels": None,
        }
        config = await saver.aput(
            config, checkpoint, {"step": number, "note": "ü"}, {"data": versions["data"]}
        )
        await saver.aput_writes(config, [("data", b"\xff\x00"), ("__error__", "e")], "t✓")


async def history(view: mofa_persist.Store, thread: str) -> list[CheckpointTuple]:
    saver = MofaSaver(view)
    found = []
    for ns in ("", "child:ß"):
        config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
        found += [item async for item in saver.alist(config)]
    return found


async def assert_same_thread(src: mofa_persist.Store, dst: mofa_persist.Store, thread: str) -> None:
    before, after = await history(src, thread), await history(dst, thread)
    assert len(before) > 5
    assert after == before
    latest = await MofaSaver(dst).aget_tuple({"configurable": {"thread_id": thread}})
    assert latest == before[0]
    assert after[-len(after) // 2].checkpoint["channel_values"]  # values came along
    binary = [t for t in after if t.checkpoint["channel_values"].get("data") == BIG]
    assert len(binary) == 1
    assert binary[0].pending_writes == [("t✓", "__error__", "e"), ("t✓", "data", b"\xff\x00")]
    src_session = await src.session_for(NAMESPACE, thread, create=False)
    dst_session = await dst.session_for(NAMESPACE, thread, create=False)
    assert src_session is not None and dst_session is not None
    assert dst_session.id == src_session.id


async def resume(view: mofa_persist.Store, thread: str) -> list[str]:
    out = await build(MofaSaver(view)).ainvoke(
        Command(resume="go"), {"configurable": {"thread_id": thread}}
    )
    return list(out["steps"])


@pytest.mark.parametrize("pair", PAIRS, indirect=True, ids="-to-".join)
async def test_copy_and_import_carry_a_thread_exactly(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    src_url, dst_url = pair
    tenant = uuid.uuid4()
    thread = f"thread ✓ {uuid.uuid4()}"
    async with (
        await mofa_persist.connect(src_url) as src_root,
        await mofa_persist.connect(dst_url) as dst_root,
    ):
        src, dst = src_root.scoped(tenant_id=tenant), dst_root.scoped(tenant_id=tenant)
        await seed_thread(src, thread)
        await src.session_for("openai_agents", "agents-session-1")  # another framework's key
        report = await transfer.copy_data(src, dst, Selection(tenant_id=tenant))
        assert report.ok, (report.conflicts, report.mismatches)
        assert (report.copied, report.verified) == (2, 2)
        assert report.rows.external_keys == 2
        assert report.rows.langgraph_checkpoints == len(await history(src, thread))
        await assert_same_thread(src, dst, thread)
        agents = await dst.session_for("openai_agents", "agents-session-1", create=False)
        assert agents is not None
        assert agents.id == (await src.session_for("openai_agents", "agents-session-1")).id  # type: ignore[union-attr]
        again = await transfer.copy_data(src, dst, Selection(tenant_id=tenant))
        assert (again.ok, again.skipped, again.copied) == (True, 2, 0)

        # Export and import: into a fresh view of the destination's own database.
        path = tmp_path / "export.jsonl"
        with path.open("w", encoding="utf-8") as out:
            counts = await transfer.export_jsonl(src, out, Selection(tenant_id=tenant))
        assert counts.langgraph_blobs > 0
        imported = await transfer.import_jsonl(dst, path)
        assert imported.ok
        assert imported.inserted.total == 0  # the copy wrote the same rows: all unchanged
        assert imported.unchanged == counts
        assert await resume(dst, thread) == ["plan", "ask", "act:go"]
        # The source thread is untouched by the copy.
        assert (
            await MofaSaver(src).aget_tuple({"configurable": {"thread_id": thread}})
        ) is not None


@pytest.mark.skipif(len(CHAIN) < 3, reason="needs SQLite, PostgreSQL and MySQL")
async def test_chain_sqlite_postgresql_mysql(chain: list[str], tmp_path: Path) -> None:
    """Copy SQLite -> PostgreSQL, export PostgreSQL, import into MySQL: the same thread."""
    tenant = uuid.uuid4()
    thread = "chain"
    async with (
        await mofa_persist.connect(chain[0]) as lite,
        await mofa_persist.connect(chain[1]) as pg,
        await mofa_persist.connect(chain[2]) as my,
    ):
        views = [store.scoped(tenant_id=tenant) for store in (lite, pg, my)]
        await seed_thread(views[0], thread)
        copied = await transfer.copy_data(views[0], views[1], Selection(tenant_id=tenant))
        assert copied.ok
        path = tmp_path / "pg.jsonl"
        with path.open("w", encoding="utf-8") as out:
            await transfer.export_jsonl(views[1], out, Selection(tenant_id=tenant))
        header = json.loads(path.read_text(encoding="utf-8").split("\n", 1)[0])
        assert header["version"] == 3
        imported = await transfer.import_jsonl(views[2], path)
        assert imported.ok
        assert imported.inserted.langgraph_checkpoints > 0
        await assert_same_thread(views[0], views[2], thread)
        assert await resume(views[2], thread) == ["plan", "ask", "act:go"]


async def test_a_thread_whose_id_is_taken_at_the_destination_is_not_copied(
    two_urls: tuple[str, str],
) -> None:
    """The same thread id in the same view at both ends, as two different sessions: a
    conflict; nothing of the source session is written (all or nothing)."""
    tenant = uuid.uuid4()
    async with (
        await mofa_persist.connect(two_urls[0]) as src_root,
        await mofa_persist.connect(two_urls[1]) as dst_root,
    ):
        src, dst = src_root.scoped(tenant_id=tenant), dst_root.scoped(tenant_id=tenant)
        await seed_thread(src, "taken")
        await build(MofaSaver(dst)).ainvoke(
            {"steps": [], "answer": ""}, {"configurable": {"thread_id": "taken"}}
        )
        theirs = await history(dst, "taken")
        report = await transfer.copy_data(src, dst, Selection(tenant_id=tenant))
        assert not report.ok
        assert len(report.conflicts) == 1
        assert "key is taken" in report.conflicts[0]
        session = await src.session_for(NAMESPACE, "taken", create=False)
        assert session is not None
        assert await transfer.fingerprint(dst, session.id) is None
        assert await history(dst, "taken") == theirs


def lines_of(*records: dict[str, Any]) -> str:
    return "".join(transfer.dump_line(record) for record in records)


async def test_import_checks_the_new_lines(store: mofa_persist.Store, tmp_path: Path) -> None:
    view = store.scoped(tenant_id=uuid.uuid4())
    await seed_thread(view, "checked")
    good = tmp_path / "good.jsonl"
    with good.open("w", encoding="utf-8") as out:
        await transfer.export_jsonl(view, out, Selection(tenant_id=view.scope.tenant_id))
    records = [json.loads(line) for line in good.read_text(encoding="utf-8").splitlines()]
    kinds = [record["type"] for record in records]
    assert kinds[:3] == ["header", "session", "external_key"]
    number = kinds.index("langgraph_blob")
    for field, value, message in (
        ("value", "not base64!", "value is not valid base64"),
        ("channel", "", "channel must be 1 to 200 characters"),
        ("idx", 1, "unknown idx"),
    ):
        bad = [dict(record) for record in records]
        bad[number][field] = value
        path = tmp_path / "bad.jsonl"
        path.write_text(lines_of(*bad), encoding="utf-8")
        with pytest.raises(InvalidInputError, match=f"line {number + 1}: .*{message}"):
            await transfer.validate_file(view, path)
    bad = [dict(record) for record in records]
    key = kinds.index("external_key")
    bad[key]["key_hash"] = "XYZ"
    path = tmp_path / "bad.jsonl"
    path.write_text(lines_of(*bad), encoding="utf-8")
    with pytest.raises(InvalidInputError, match=f"line {key + 1}: key_hash must be 64"):
        await transfer.validate_file(view, path)


def test_fields_match_the_new_tables() -> None:
    for kind in ("external_key", "langgraph_checkpoint", "langgraph_blob", "langgraph_write"):
        table = transfer.TABLES[kind]  # type: ignore[index]
        assert list(transfer.FIELDS[kind]) == [column.key for column in table.c]  # type: ignore[index]
