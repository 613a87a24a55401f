"""Views (``store.scoped``) across every operation: transfer, stats, cursors, narrowing.

The bug that started this: a prune through one tenant's view deleted another tenant's
messages. Each test seeds two tenants (and two agents of one user) and checks that work done
through one view leaves the other's rows exactly as they were.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

import mofa_persist
from mofa_persist import InvalidInputError, NotFoundError, transfer
from mofa_persist.transfer import Selection

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class World:
    """Two tenants; in tenant ``a`` one user with two agents."""

    store: mofa_persist.Store
    a: uuid.UUID
    b: uuid.UUID
    user: uuid.UUID
    bot: uuid.UUID
    other_bot: uuid.UUID
    sessions: dict[str, uuid.UUID]

    def view(self, name: str) -> mofa_persist.Store:
        return {
            "a": self.store.scoped(tenant_id=self.a),
            "b": self.store.scoped(tenant_id=self.b),
            "bot": self.store.scoped(tenant_id=self.a, user_id=self.user, agent_id=self.bot),
        }[name]

    async def counts(self) -> dict[str, int]:
        return {name: await self.store.count_messages(sid) for name, sid in self.sessions.items()}


@pytest.fixture
async def world(store: mofa_persist.Store) -> World:
    a, b, user, bot, other_bot = (uuid.uuid4() for _ in range(5))
    sessions = {}
    for name, tenant, agent in (
        ("bot", a, bot),
        ("other_bot", a, other_bot),
        ("b", b, None),
    ):
        view = store.scoped(tenant_id=tenant)
        session = await view.create_session(user_id=user, agent_id=agent, title=name)
        await view.append_messages(
            session.id, [{"role": "user", "content": f"{name} {i}"} for i in range(5)]
        )
        await view.save_state(session.id, {"who": name})
        await view.record_api_call(
            session_id=session.id, model="m", status="success", latency_ms=5, total_tokens=10
        )
        sessions[name] = session.id
    return World(store, a, b, user, bot, other_bot, sessions)


async def test_prune_through_a_view_leaves_other_tenants_alone(world: World) -> None:
    before = await world.counts()
    report = await transfer.prune(world.view("a"), older_than=timedelta(0), keep_last=1)
    assert report.messages == 8  # 4 from each of tenant a's two sessions
    assert await world.counts() == {**before, "bot": 1, "other_bot": 1}
    # Whole-session mode through tenant b's view: only b's session goes.
    await transfer.prune(world.view("b"), older_than=timedelta(0))
    with pytest.raises(NotFoundError):
        await world.store.get_session(world.sessions["b"])
    assert await world.store.count_messages(world.sessions["bot"]) == 1


async def test_export_and_count_through_a_view_hold_only_its_rows(world: World) -> None:
    out = io.StringIO()
    counts = await transfer.export_jsonl(world.view("bot"), out, Selection())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    sessions = {line["id"] for line in lines if line["type"] == "session"}
    assert sessions == {str(world.sessions["bot"])}
    assert (counts.sessions, counts.messages, counts.states, counts.api_calls) == (1, 5, 1, 1)
    assert await transfer.count_selection(world.view("bot"), Selection()) == counts
    with pytest.raises(InvalidInputError, match="outside this store's view"):
        await transfer.count_selection(world.view("a"), Selection(tenant_id=world.b))


async def test_stats_and_usage_through_a_view(world: World) -> None:
    stats = await transfer.collect_stats(world.view("a"))
    assert stats.totals == {
        "sessions": 2,
        "messages": 10,
        "states": 2,
        "api_calls": 2,
        "tokens": 20,
    }
    assert [row["tenant_id"] for row in stats.by_tenant] == [str(world.a)]
    usage = await world.view("bot").usage()
    assert (usage.calls, usage.total_tokens) == (1, 10)


async def test_copy_between_views(world: World, tmp_path: Path) -> None:
    async with await mofa_persist.connect(f"sqlite://{tmp_path}/copy.db") as target:
        report = await transfer.copy_data(world.view("b"), target, Selection())
        assert report.ok
        assert report.copied == 1
        listed = await target.list_sessions()
        assert [s.id for s in listed.items] == [world.sessions["b"]]
        # A destination view accepts only its own rows.
        with pytest.raises(InvalidInputError, match="outside this store's view"):
            await transfer.copy_data(world.view("a"), target.scoped(tenant_id=world.b), Selection())


async def test_import_into_a_view_refuses_foreign_rows_before_writing(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "all.jsonl"
    with path.open("w", encoding="utf-8", newline="\n") as out:
        await transfer.export_jsonl(world.store, out, Selection())
    async with await mofa_persist.connect(f"sqlite://{tmp_path}/import.db") as target:
        with pytest.raises(InvalidInputError, match="outside the store's view"):
            await transfer.import_jsonl(target.scoped(tenant_id=world.a), path)
        assert (await target.list_sessions()).items == []


async def test_a_view_can_only_be_narrowed(world: World) -> None:
    tenant = world.view("a")
    narrowed = tenant.scoped(tenant_id=world.a, user_id=world.user).scoped(
        tenant_id=world.a, agent_id=world.bot
    )
    assert narrowed.scope.agent_id == world.bot
    assert narrowed.scope.user_id == world.user
    assert [s.id for s in (await narrowed.list_sessions()).items] == [world.sessions["bot"]]
    for attempt in (
        lambda: tenant.scoped(tenant_id=world.b),
        lambda: narrowed.scoped(tenant_id=world.a, agent_id=world.other_bot),
        lambda: narrowed.scoped(tenant_id=world.a, user_id=uuid.uuid4()),
    ):
        with pytest.raises(InvalidInputError, match="can only be narrowed"):
            attempt()
    with pytest.raises(InvalidInputError, match="outside this store's scope"):
        await narrowed.create_session(agent_id=world.other_bot)


async def test_cursors_are_bound_to_the_view_and_the_query(world: World) -> None:
    tenant = world.view("a")
    first = await tenant.list_sessions(limit=1)
    assert first.next_cursor is not None
    second = await tenant.list_sessions(limit=1, cursor=first.next_cursor)
    assert {s.id for s in first.items + second.items} == {
        world.sessions["bot"],
        world.sessions["other_bot"],
    }
    replays = [
        lambda: world.view("b").list_sessions(limit=1, cursor=first.next_cursor),
        lambda: world.store.list_sessions(limit=1, cursor=first.next_cursor),
        lambda: tenant.list_sessions(limit=1, cursor=first.next_cursor, agent_id=world.bot),
    ]
    for replay in replays:
        with pytest.raises(InvalidInputError, match="does not belong to this query"):
            await replay()
    # Tampered: move the position to another session id, keep the signature.
    body = first.next_cursor.removeprefix("v2.")
    stamp, _, mac = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().split("|")
    forged = "v2." + base64.urlsafe_b64encode(
        f"{stamp}|{uuid.uuid4().hex}|{mac}".encode()
    ).decode().rstrip("=")
    respelled = [
        first.next_cursor[:-1] + char
        for char in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        if char != first.next_cursor[-1]
    ]
    for bad in (forged, first.next_cursor[:-2], "v1.abc", "garbage", *respelled):
        with pytest.raises(InvalidInputError):
            await tenant.list_sessions(limit=1, cursor=bad)
