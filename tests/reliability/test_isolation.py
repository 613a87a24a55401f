"""Tenant isolation: random call sequences through two scoped stores of different tenants.

A model tracks what each tenant wrote. After every step each tenant sees exactly its own
sessions, messages and states, and every call aimed at the other tenant's session answers
``NotFoundError`` and changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mofa_persist
from mofa_persist import NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterator

OPERATIONS = ["create", "append", "turn", "save", "update", "delete", "poke"]
steps = st.lists(
    st.tuples(
        st.integers(0, 1),  # which tenant acts
        st.sampled_from(OPERATIONS),
        st.integers(0, 7),  # which of that tenant's sessions (modulo how many it has)
        # Storable text only (no NUL, no lone surrogates): refused input is test_hostile's job.
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10),
    ),
    min_size=1,
    max_size=25,
)


class Model:
    def __init__(self) -> None:
        # session id -> {"messages": [content], "states": [state], "title": str | None}
        self.sessions: list[dict[uuid.UUID, dict[str, Any]]] = [{}, {}]


@pytest.fixture
def two_tenants(any_url: str) -> Iterator[tuple[asyncio.Runner, list[mofa_persist.Store]]]:
    with asyncio.Runner() as runner:
        store = runner.run(mofa_persist.connect(any_url))
        try:
            yield runner, [store]
        finally:
            runner.run(store.close())


async def _poke(store: mofa_persist.Store, sid: uuid.UUID) -> int:
    """Every call on a session id of the other tenant: each must be NotFoundError."""
    calls = [
        store.get_session(sid),
        store.update_session(sid, title="stolen"),
        store.append_message(sid, "user", "intrusion"),
        store.append_messages(sid, [{"role": "user", "content": "intrusion"}]),
        store.append_messages(sid, []),
        store.record_turn(sid, [{"role": "user", "content": "x"}], state={"x": 1}),
        store.get_messages(sid),
        store.get_messages(sid, limit=0),
        store.count_messages(sid),
        store.save_state(sid, {"stolen": True}),
        store.save_state(sid, {"stolen": True}, expected_version=0),
        store.load_state(sid),
        store.load_state(sid, version=1),
        store.list_states(sid),
        store.delete_session(sid),
        store.record_api_call(session_id=sid, model="m", status="success", latency_ms=1),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            await call
    return len(calls)


async def _check(stores: list[mofa_persist.Store], model: Model) -> None:
    for tenant, store in enumerate(stores):
        listed = (await store.list_sessions(limit=1000)).items
        assert {s.id for s in listed} == set(model.sessions[tenant])
        for sid, expected in model.sessions[tenant].items():
            session = await store.get_session(sid)
            assert session.title == expected["title"]
            assert [m.content for m in await store.get_messages(sid)] == expected["messages"]
            states = await store.list_states(sid, limit=None)
            assert [s.state for s in reversed(states)] == expected["states"]


def _run_isolation(
    two_tenants: tuple[asyncio.Runner, list[mofa_persist.Store]], config: settings, check: str
) -> None:
    runner, (root,) = two_tenants
    counts = {"sequences": 0, "calls": 0, "foreign_calls_refused": 0}

    @config
    @given(steps=steps)
    def prop(steps: list[tuple[int, str, int, str]]) -> None:
        stores = [root.scoped(tenant_id=uuid.uuid4()), root.scoped(tenant_id=uuid.uuid4())]
        model = Model()

        async def play() -> None:
            for tenant, operation, pick, text in steps:
                store, own = stores[tenant], model.sessions[tenant]
                other = model.sessions[1 - tenant]
                counts["calls"] += 1
                if operation == "create" or not own:
                    created = await store.create_session(title=text or None)
                    own[created.id] = {"messages": [], "states": [], "title": text or None}
                    continue
                sid = list(own)[pick % len(own)]
                entry = own[sid]
                if operation == "append":
                    await store.append_message(sid, "user", text)
                    entry["messages"].append(text)
                elif operation == "turn":
                    await store.record_turn(
                        sid, [{"role": "assistant", "content": text}], state={"t": text}
                    )
                    entry["messages"].append(text)
                    entry["states"].append({"t": text})
                elif operation == "save":
                    await store.save_state(sid, {"s": text}, expected_version=len(entry["states"]))
                    entry["states"].append({"s": text})
                elif operation == "update":
                    await store.update_session(sid, title=text)
                    entry["title"] = text
                elif operation == "delete":
                    await store.delete_session(sid)
                    del own[sid]
                elif operation == "poke" and other:
                    target = list(other)[pick % len(other)]
                    counts["foreign_calls_refused"] += await _poke(store, target)
                await _check(stores, model)
            await _check(stores, model)

        runner.run(play())
        counts["sequences"] += 1

    prop()
    tally.add(check, root.url.kind, **counts)


ISOLATION = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    print_blob=True,  # a failure prints @reproduce_failure(...) to replay it exactly
)


def test_two_tenants_never_see_or_change_each_other(
    two_tenants: tuple[asyncio.Runner, list[mofa_persist.Store]],
) -> None:
    _run_isolation(two_tenants, ISOLATION, "tenant-isolation")


@pytest.mark.soak
def test_soak_two_tenants_never_see_or_change_each_other(
    two_tenants: tuple[asyncio.Runner, list[mofa_persist.Store]],
) -> None:
    _run_isolation(two_tenants, settings(ISOLATION, max_examples=300), "tenant-isolation-soak")
