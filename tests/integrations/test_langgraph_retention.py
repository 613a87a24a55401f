"""Retention of LangGraph checkpoints (``RetentionPolicy(checkpoints_per_thread=N)``) on every
backend: the newest N of each thread stay, with everything they need; older ones go with
their writes and the channel values only they used; nothing outside the view is touched."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("langgraph.checkpoint.base")

from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from sqlalchemy import select

import mofa_persist
from mofa_persist import InvalidInputError, RetentionPolicy
from mofa_persist.integrations.langgraph import NAMESPACE, MofaSaver
from mofa_persist.models import (
    langgraph_blobs_table,
    langgraph_checkpoints_table,
    langgraph_writes_table,
)

if TYPE_CHECKING:
    from pathlib import Path

    from langgraph.checkpoint.base import CheckpointTuple

TABLES = {
    "langgraph_checkpoints": langgraph_checkpoints_table,
    "langgraph_writes": langgraph_writes_table,
    "langgraph_blobs": langgraph_blobs_table,
}


def checkpoint(number: int, versions: dict[str, str], values: dict[str, Any]) -> Any:
    return {
        "v": 1,
        "id": f"1ef00000-0000-6000-8000-{number:012d}",
        "ts": "2026-12-03T00:00:00+00:00",
        "channel_values": values,
        "channel_versions": dict(versions),
        "versions_seen": {},
        "updated_channels": None,
    }


async def grow(saver: MofaSaver, thread: str, count: int, ns: str = "") -> list[str]:
    """``count`` checkpoints: channel "fixed" written once, "turn" changed by every one, a
    pending write on each. Returns the checkpoint ids, oldest first."""
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
    versions = {"fixed": saver.get_next_version(None, None)}
    ids = []
    for number in range(1, count + 1):
        versions["turn"] = saver.get_next_version(versions.get("turn"), None)
        new = {"turn": versions["turn"]}
        if number == 1:
            new["fixed"] = versions["fixed"]
        values = {"fixed": b"\x00\xffbinary", "turn": [number] * number}
        config = await saver.aput(
            config, checkpoint(number, versions, values), {"step": number}, new
        )
        await saver.aput_writes(config, [("turn", number), ("other", "x")], f"task-{number}")
        ids.append(config["configurable"]["checkpoint_id"])
    return ids


async def rows(store: mofa_persist.Store, thread: str, view: mofa_persist.Store) -> dict[str, Any]:
    """Every LangGraph row of one thread, per table."""
    session = await view.session_for(NAMESPACE, thread, create=False)
    assert session is not None
    found: dict[str, Any] = {}
    async with store.engine.connect() as conn:
        for name, table in TABLES.items():
            chosen = select(table).where(table.c.session_id == session.id)
            result = await conn.execute(chosen.order_by(table.c.id))  # one order on every run
            found[name] = [dict(row) for row in result.mappings()]
    return found


def summary(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "checkpoints": sorted(r["checkpoint_id"][-2:] for r in found["langgraph_checkpoints"]),
        "writes": sorted(r["checkpoint_id"][-2:] for r in found["langgraph_writes"]),
        "blobs": sorted((r["channel"], r["version"][:32]) for r in found["langgraph_blobs"]),
    }


async def tuples(saver: MofaSaver, thread: str, ns: str = "") -> list[CheckpointTuple]:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
    return [found async for found in saver.alist(config)]


def turn(number: int) -> tuple[str, str]:
    return ("turn", f"{number:032}")


async def test_keeps_the_newest_n_with_their_values_and_drops_the_rest(
    store: mofa_persist.Store,
) -> None:
    tenant = uuid.uuid4()
    view = store.scoped(tenant_id=tenant)
    saver = MofaSaver(view)
    await grow(saver, "long", 6)
    await grow(saver, "long", 4, ns="child:1")  # a subgraph's namespace: kept apart
    await grow(saver, "short", 2)
    other_view = store.scoped(tenant_id=uuid.uuid4())
    other = MofaSaver(other_view)
    await grow(other, "long", 6)  # another tenant's thread of the same id
    newest = (await tuples(saver, "long"))[:2]
    child_newest = (await tuples(saver, "long", "child:1"))[:2]
    other_before = await rows(store, "long", other_view)

    policy = RetentionPolicy(checkpoints_per_thread=2)
    dry = await view.apply_retention(policy, dry_run=True)
    assert summary(await rows(store, "long", view))["checkpoints"] == [
        "01", "01", "02", "02", "03", "03", "04", "04", "05", "06",
    ]  # fmt: skip
    report = await view.apply_retention(policy, batch_size=1)
    # 4 + 2 checkpoints, each with 2 writes and one "turn" blob of its own.
    expected = {"langgraph_checkpoints": 6, "langgraph_writes": 12, "langgraph_blobs": 6}
    assert {name: report.counts[name] for name in TABLES} == expected
    assert dry.counts == report.counts
    assert report.counts["messages"] == 0

    long = summary(await rows(store, "long", view))
    assert long["checkpoints"] == ["03", "04", "05", "06"]  # 2 per namespace
    assert long["writes"] == ["03", "03", "04", "04", "05", "05", "06", "06"]
    # "fixed" was written by checkpoint 1 (gone) and is used by every kept one: it stays.
    fixed = ("fixed", f"{1:032}")
    assert long["blobs"] == sorted([fixed, fixed, turn(3), turn(4), turn(5), turn(6)])
    assert await tuples(saver, "long") == newest
    assert await tuples(saver, "long", "child:1") == child_newest
    assert newest[1].checkpoint["channel_values"] == {"fixed": b"\x00\xffbinary", "turn": [5] * 5}
    assert len(await tuples(saver, "short")) == 2
    assert await rows(store, "long", other_view) == other_before

    again = await view.apply_retention(policy)
    assert {name: again.counts[name] for name in TABLES} == dict.fromkeys(TABLES, 0)


async def test_a_real_graph_resumes_after_its_history_is_pruned(store: mofa_persist.Store) -> None:
    from langgraph.types import Command
    from test_langgraph import build

    view = store.scoped(tenant_id=uuid.uuid4())
    graph = build(MofaSaver(view))
    config: Any = {"configurable": {"thread_id": "pruned"}}
    await graph.ainvoke({"steps": [], "answer": ""}, config)
    before = [s async for s in graph.aget_state_history(config)]
    assert len(before) > 2
    report = await view.apply_retention(RetentionPolicy(checkpoints_per_thread=1))
    assert report.counts["langgraph_checkpoints"] == len(before) - 1
    state = await graph.aget_state(config)
    assert state.next == ("ask",)
    assert state.values["steps"] == ["plan"]
    out = await graph.ainvoke(Command(resume="yes"), config)
    assert out["steps"] == ["plan", "ask", "act:yes"]


class Scrambler:
    """A stand-in cipher (XOR): the library sees bytes it cannot read, as with AES."""

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        return "xor", bytes(byte ^ 0x5A for byte in plaintext)

    def decrypt(self, ciphername: str, ciphertext: bytes) -> bytes:
        assert ciphername == "xor"
        return bytes(byte ^ 0x5A for byte in ciphertext)


async def test_unreadable_checkpoints_keep_their_blobs(store: mofa_persist.Store) -> None:
    """With an encrypting serializer the library cannot see which values a checkpoint uses:
    old checkpoints and writes go, every channel value stays, the newest still read whole."""
    view = store.scoped(tenant_id=uuid.uuid4())
    saver = MofaSaver(view, serde=EncryptedSerializer(Scrambler()))
    await grow(saver, "secret", 4)
    newest = (await tuples(saver, "secret"))[:1]
    report = await view.apply_retention(RetentionPolicy(checkpoints_per_thread=1))
    assert report.counts["langgraph_checkpoints"] == 3
    assert report.counts["langgraph_writes"] == 6
    assert report.counts["langgraph_blobs"] == 0
    assert len(summary(await rows(store, "secret", view))["blobs"]) == 5
    assert await tuples(saver, "secret") == newest


async def test_retention_racing_a_writer_loses_nothing_the_thread_needs(
    store: mofa_persist.Store, database_url: str, backend: str
) -> None:
    """Retention runs (in batches of one) while another store appends checkpoints to the
    same thread: afterwards the newest checkpoints all read back whole."""
    view = store.scoped(tenant_id=uuid.uuid4())
    saver = MofaSaver(view)
    await grow(saver, "busy", 5)
    tenant = view.scope.tenant_id
    if backend == "memory":
        writer_view = view
    else:
        writer_root = await mofa_persist.connect(database_url)
        writer_view = writer_root.scoped(tenant_id=tenant)
    try:
        writer = MofaSaver(writer_view)

        async def write_more() -> None:
            config: Any = {"configurable": {"thread_id": "busy", "checkpoint_ns": ""}}
            latest = await writer.aget_tuple(config)
            assert latest is not None
            versions = dict(latest.checkpoint["channel_versions"])
            config = latest.config
            for number in range(6, 16):
                versions["turn"] = writer.get_next_version(versions["turn"], None)
                values = {"fixed": b"\x00\xffbinary", "turn": [number] * number}
                config = await writer.aput(
                    config,
                    checkpoint(number, versions, values),
                    {"step": number},
                    {"turn": versions["turn"]},
                )

        async def prune() -> None:
            for _ in range(5):
                await view.apply_retention(RetentionPolicy(checkpoints_per_thread=2), batch_size=1)
                await asyncio.sleep(0)

        await asyncio.gather(write_more(), prune())
    finally:
        if writer_view is not view:
            await writer_root.close()
    for found in await tuples(saver, "busy"):
        number = int(found.checkpoint["id"][-2:])
        assert found.checkpoint["channel_values"] == {
            "fixed": b"\x00\xffbinary",
            "turn": [number] * number,
        }
    assert (await tuples(saver, "busy"))[0].checkpoint["id"].endswith("15")


def test_policy_rule_from_toml_and_its_checks(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[retention]\ncheckpoints_per_thread = 3\n", encoding="utf-8")
    assert RetentionPolicy.from_toml(path) == RetentionPolicy(checkpoints_per_thread=3)
    assert RetentionPolicy(checkpoints_per_thread=3).as_dict() == {"checkpoints_per_thread": 3}
    for bad in (0, -1, True, "3"):
        with pytest.raises(InvalidInputError, match="checkpoints_per_thread"):
            RetentionPolicy(checkpoints_per_thread=bad)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_prune_flag_on_the_command_line(
    store: mofa_persist.Store, backend: str, database_url: str
) -> None:
    if backend == "memory":
        pytest.skip("the command line opens a database of its own")
    from test_cli import run, run_json

    tenant = uuid.uuid4()
    view = store.scoped(tenant_id=tenant)
    await grow(MofaSaver(view), "cli", 5)
    args = ["prune", "--checkpoints-per-thread", "2", "--tenant", str(tenant)]
    url = database_url
    dry = await asyncio.to_thread(run_json, *args, "--dry-run", "--url", url)
    real = await asyncio.to_thread(run_json, *args, "--url", url)
    assert dry["policy"] == real["policy"] == {"checkpoints_per_thread": 2}
    assert dry["counts"]["langgraph_checkpoints"] == real["counts"]["langgraph_checkpoints"] == 3
    assert real["counts"]["langgraph_writes"] == 6
    assert len(await tuples(MofaSaver(view), "cli")) == 2
    refused = await asyncio.to_thread(
        run, "prune", "--checkpoints-per-thread", "0", "--url", url, ok=False
    )
    assert refused.exit_code != 0
    assert "checkpoints_per_thread" in refused.output
