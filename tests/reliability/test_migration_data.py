"""Migrations keep data: rows written at every earlier revision survive ``upgrade head`` and a
``downgrade -1`` / ``upgrade head`` cycle, on SQLite, PostgreSQL and MySQL.

Each revision has a writer below that stores data using what that revision offers; a new
migration without a writer fails the test, so the check grows with the schema.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
import tally
from alembic.script import ScriptDirectory
from common import backend_of

import mofa_persist
from mofa_persist import migrate
from mofa_persist.engine import create_engine
from mofa_persist.keys import database_key
from mofa_persist.models import sessions_table
from mofa_persist.types import JSONDocument, UTCDateTime
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.migrations

Facts = dict[str, Any]


# agent_state as revision 0001 made it (no at_seq yet): what that revision's code wrote.
STATE_0001 = sa.Table(
    "agent_state",
    sa.MetaData(),
    sa.Column("id", sa.Uuid()),
    sa.Column("session_id", sa.Uuid()),
    sa.Column("version", sa.Integer()),
    sa.Column("state", JSONDocument),
    sa.Column("created_at", UTCDateTime()),
)


async def write_0001(store: mofa_persist.Store, facts: Facts) -> None:
    tenant = "8b0d3a52-5a43-4a8e-9a7e-0c1f1a1d2e3f"
    session = await store.create_session(
        tenant_id=tenant, title="written at 0001 ✓", metadata={"rev": "0001", "n": 2**70}
    )
    stored = await store.append_messages(
        session.id,
        [{"role": "user", "content": "héllo 😀"}, {"role": "assistant", "content": "x" * 70_000}],
    )
    states = [{"step": 1, "nested": {"list": [1.5, None, True]}}, {"step": 2}]
    async with store.engine.begin() as conn:
        for version, state in enumerate(states, start=1):
            await conn.execute(
                sa.insert(STATE_0001),
                {
                    "id": uuid.uuid4(),
                    "session_id": session.id,
                    "version": version,
                    "state": state,
                    "created_at": stored[-1].created_at + timedelta(microseconds=version),
                },
            )
        await conn.execute(
            sa.update(sessions_table)
            .where(sessions_table.c.id == session.id)
            .values(state_version=len(states))
        )
    facts["0001"] = {"session": session.id, "tenant": tenant}


async def check_0001(store: mofa_persist.Store, facts: Facts) -> None:
    sid = facts["0001"]["session"]
    extra = facts["0001"].get("extra", 0)  # writes made by earlier checks
    session = await store.scoped(tenant_id=facts["0001"]["tenant"]).get_session(sid)
    assert session.title == "written at 0001 ✓"
    assert session.metadata == {"rev": "0001", "n": 2**70}
    assert (session.last_seq, session.state_version) == (2 + extra, 2 + extra)
    messages = await store.get_messages(sid)
    assert [(m.seq, m.role, m.content) for m in messages] == [
        (1, "user", "héllo 😀"),
        (2, "assistant", "x" * 70_000),
    ] + [(3 + k, "user", f"after {k}") for k in range(extra)]
    states = await store.list_states(sid, limit=None)
    assert [(s.version, s.state) for s in reversed(states)] == [
        (1, {"step": 1, "nested": {"list": [1.5, None, True]}}),
        (2, {"step": 2}),
    ] + [(3 + k, {"after": k}) for k in range(extra)]
    # The store keeps working on old rows: seq and versions go on where they were.
    assert (await store.append_message(sid, "user", f"after {extra}")).seq == 3 + extra
    await store.save_state(sid, {"after": extra}, expected_version=2 + extra)
    facts["0001"]["extra"] = extra + 1


async def write_0002(store: mofa_persist.Store, facts: Facts) -> None:
    session = await store.create_session(title="written at 0002")
    call = await store.record_api_call(
        session_id=session.id,
        model="m",
        status="success",
        latency_ms=12,
        prompt_tokens=3,
        completion_tokens=4,
    )
    facts["0002"] = {"session": session.id, "call": call.id}


async def check_0002(store: mofa_persist.Store, facts: Facts) -> None:
    usage = await store.usage(session_id=facts["0002"]["session"])
    assert (usage.calls, usage.total_tokens, usage.latency_p50_ms) == (1, 7, 12.0)


async def write_0003(store: mofa_persist.Store, facts: Facts) -> None:
    facts["0003"] = {"key": await database_key(store)}


async def check_0003(store: mofa_persist.Store, facts: Facts) -> None:
    # The database's key survived: cursors and erasure hashes made before still verify.
    url = store.url.sa_url.render_as_string(hide_password=False)
    async with await mofa_persist.connect(url, migrate=False) as fresh:
        assert await database_key(fresh) == facts["0003"]["key"]


async def write_0004(store: mofa_persist.Store, facts: Facts) -> None:
    session = await store.create_session(title="written at 0004")
    first = await store.record_turn(
        session.id, [{"role": "user", "content": "a"}], state={"n": 1}, idempotency_key="k-0004"
    )
    await store.append_messages(session.id, [{"role": "user", "content": f"{i}"} for i in range(3)])
    fork = await store.fork_session(session.id, at_seq=1)
    await store.rewind(session.id, 2)
    facts["0004"] = {"session": session.id, "fork": fork.id, "first": first}


async def check_0004(store: mofa_persist.Store, facts: Facts) -> None:
    fact = facts["0004"]
    # The key still answers with the first call's rows after the upgrade.
    again = await store.record_turn(
        fact["session"],
        [{"role": "user", "content": "a"}],
        state={"n": 1},
        idempotency_key="k-0004",
    )
    assert again == fact["first"]
    assert (await store.get_session(fact["session"])).last_seq == 2
    forks = await store.list_sessions(parent_session_id=fact["session"])
    assert [(s.id, s.forked_at_seq) for s in forks.items] == [(fact["fork"], 1)]
    # The backfill of 0004: a snapshot saved by a turn records that turn's last seq.
    oldest = (await store.list_states(facts["0001"]["session"], limit=None))[-1]
    assert (oldest.version, oldest.at_seq) == (1, 2)


async def write_0005(store: mofa_persist.Store, facts: Facts) -> None:
    view = store.scoped(tenant_id="7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d")
    session = await view.session_for("openai-agents", "Thread with spaces ✓")
    assert session is not None
    await view.append_message(session.id, "user", "kept")
    facts["0005"] = {"session": session.id}


async def check_0005(store: mofa_persist.Store, facts: Facts) -> None:
    view = store.scoped(tenant_id="7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d")
    found = await view.session_for("openai-agents", "Thread with spaces ✓", create=False)
    assert found is not None
    assert found.id == facts["0005"]["session"]
    assert await view.external_id_of(found.id) == ("openai-agents", "Thread with spaces ✓")


# Every byte value, to show the payload columns are binary on every backend.
PAYLOAD_0006 = bytes(range(256)) * 3


async def write_0006(store: mofa_persist.Store, facts: Facts) -> None:
    from mofa_persist.ids import uuid7
    from mofa_persist.models import langgraph_checkpoints_table

    view = store.scoped(tenant_id="0c8f2e4a-6b1d-4c3e-9a7f-5d2b8e1c4a60")
    session = await view.session_for("langgraph", "graph thread ✓")
    assert session is not None
    checkpoint_id = str(uuid7())
    async with store.engine.begin() as conn:
        await conn.execute(
            langgraph_checkpoints_table.insert().values(
                id=uuid7(),
                session_id=session.id,
                checkpoint_ns="",
                checkpoint_id=checkpoint_id,
                parent_checkpoint_id=None,
                run_id="run-1",
                checkpoint_type="msgpack",
                checkpoint=PAYLOAD_0006,
                metadata_type="msgpack",
                metadata=b"\x80",
                created_at=utc_now_0006(),
            )
        )
    facts["0006"] = {"session": session.id, "checkpoint_id": checkpoint_id}


async def check_0006(store: mofa_persist.Store, facts: Facts) -> None:
    from mofa_persist.models import langgraph_checkpoints_table as table

    view = store.scoped(tenant_id="0c8f2e4a-6b1d-4c3e-9a7f-5d2b8e1c4a60")
    found = await view.session_for("langgraph", "graph thread ✓", create=False)
    assert found is not None
    assert found.id == facts["0006"]["session"]
    stmt = sa.select(table.c.checkpoint, table.c.metadata).where(
        table.c.session_id == found.id, table.c.checkpoint_id == facts["0006"]["checkpoint_id"]
    )
    async with store.engine.connect() as conn:
        row = (await conn.execute(stmt)).one()
    assert bytes(row.checkpoint) == PAYLOAD_0006
    assert bytes(row.metadata) == b"\x80"


def utc_now_0006() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def write_0007(store: mofa_persist.Store, facts: Facts) -> None:
    from mofa_persist.ids import uuid7
    from mofa_persist.models import adk_sessions_table, adk_states_table

    view = store.scoped(tenant_id="5e1d7c3b-9a2f-4b6e-8d0c-2f4a6b8c0e17")
    name = f"adk session {uuid7()} ✓"
    session = await view.session_for("adk", name)
    assert session is not None
    key_hash = uuid7().hex * 2
    async with store.engine.begin() as conn:
        await conn.execute(
            adk_sessions_table.insert().values(
                id=uuid7(),
                session_id=session.id,
                tenant_id=view.scope.tenant_id,
                app_name="app ✓",
                adk_user_id="user 😀",
                adk_session_id=name,
                state={"k": [1, 2.5, None]},
                update_time=1765000000.123456,
                created_at=utc_now_0006(),
            )
        )
        await conn.execute(
            adk_states_table.insert().values(
                id=uuid7(),
                key_hash=key_hash,
                kind="user",
                tenant_id=view.scope.tenant_id,
                user_id=None,
                agent_id=None,
                app_name="app ✓",
                adk_user_id="user 😀",
                state={"theme": "dark"},
                updated_at=utc_now_0006(),
            )
        )
    facts["0007"] = {"session": session.id, "name": name, "key_hash": key_hash}


async def check_0007(store: mofa_persist.Store, facts: Facts) -> None:
    from mofa_persist.models import adk_sessions_table, adk_states_table

    fact = facts["0007"]
    view = store.scoped(tenant_id="5e1d7c3b-9a2f-4b6e-8d0c-2f4a6b8c0e17")
    found = await view.session_for("adk", fact["name"], create=False)
    assert found is not None
    assert found.id == fact["session"]
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(adk_sessions_table).where(adk_sessions_table.c.session_id == found.id)
            )
        ).one()
        state = (
            await conn.execute(
                sa.select(adk_states_table.c.state).where(
                    adk_states_table.c.key_hash == fact["key_hash"]
                )
            )
        ).scalar_one()
    assert (row.app_name, row.adk_user_id, row.adk_session_id) == ("app ✓", "user 😀", fact["name"])
    assert row.state == {"k": [1, 2.5, None]}
    assert row.update_time == 1765000000.123456
    assert state == {"theme": "dark"}


SEARCH_TENANT = "0b7f3e29-6c1d-4a85-9e42-7d3a1c5b8f60"


async def write_0008(store: mofa_persist.Store, facts: Facts) -> None:
    view = store.scoped(tenant_id=SEARCH_TENANT)
    session = await view.create_session(title="search ✓")
    message = await view.append_message(session.id, "user", "Где мой заказ kumquat_42? ΔΡΟΜΟΣ.")
    fact = facts.setdefault("0008", {"session": session.id, "messages": []})
    fact["messages"].append(message.id)


async def check_0008(store: mofa_persist.Store, facts: Facts) -> None:
    # Searched by check_0009: on SQLite search needs revision 0009's rowid map.
    fact = facts["0008"]
    view = store.scoped(tenant_id=SEARCH_TENANT)
    messages = await view.get_messages(fact["session"])
    assert {message.id for message in messages} >= set(fact["messages"])


async def write_0009(store: mofa_persist.Store, facts: Facts) -> None:
    view = store.scoped(tenant_id=SEARCH_TENANT)
    session = await view.create_session(title="search at 0009")
    message = await view.append_message(session.id, "user", "kumquat_42, δρομος again")
    facts.setdefault("0009", {"messages": []})["messages"].append(message.id)


async def check_0009(store: mofa_persist.Store, facts: Facts) -> None:
    view = store.scoped(tenant_id=SEARCH_TENANT)
    hits = (await view.search_messages("kumquat_42 δρομος", limit=100)).items
    expected = set(facts["0008"]["messages"]) | set(facts.get("0009", {}).get("messages", []))
    assert {hit.message.id for hit in hits} == expected
    # Messages written before the index existed are in it too.
    old = store.scoped(tenant_id=facts["0001"]["tenant"])
    found = (await old.search_messages("HÉLLO")).items
    assert [hit.session_id for hit in found] == [facts["0001"]["session"]]


WRITERS: dict[str, tuple[Callable[[mofa_persist.Store, Facts], Awaitable[None]], ...]] = {
    "0001": (write_0001, check_0001),
    "0002": (write_0002, check_0002),
    "0003": (write_0003, check_0003),
    "0004": (write_0004, check_0004),
    "0005": (write_0005, check_0005),
    "0006": (write_0006, check_0006),
    "0007": (write_0007, check_0007),
    "0008": (write_0008, check_0008),
    "0009": (write_0009, check_0009),
}


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


async def _to(url: str, revision: str, *, down: bool = False) -> None:
    engine = create_engine(parse_url(url), use_null_pool=True, enforce_foreign_keys=False)
    try:
        if down:
            await migrate.downgrade(engine, revision)
        else:
            await migrate.upgrade(engine, revision)
    finally:
        await engine.dispose()


async def test_data_of_every_revision_survives_upgrade_and_a_down_up_cycle(
    shared_url: str,
) -> None:
    revisions = _revisions()
    assert set(revisions) == set(WRITERS), "every migration needs a writer in this test"
    facts: Facts = {}
    checks = 0

    async def check_all(upto: list[str]) -> None:
        nonlocal checks
        async with await mofa_persist.connect(shared_url, migrate=False) as store:
            for revision in upto:
                await WRITERS[revision][1](store, facts)
                checks += 1

    for revision in revisions:
        await _to(shared_url, revision)
        async with await mofa_persist.connect(shared_url, migrate=False) as store:
            await WRITERS[revision][0](store, facts)
    await _to(shared_url, "head")
    await check_all(revisions)
    # One step down and back up: what older revisions wrote is still there and usable.
    await _to(shared_url, "-1", down=True)
    await check_all(revisions[:-1])
    await _to(shared_url, "head")
    await check_all(revisions[:-1])
    # And a fresh write at head works after the cycle.
    async with await mofa_persist.connect(shared_url) as store:
        await WRITERS[revisions[-1]][0](store, facts)
        await WRITERS[revisions[-1]][1](store, facts)
    tally.add(
        "migrations",
        backend_of(shared_url),
        revisions=len(revisions),
        checks=checks,
        down_up_cycles=1,
    )
