"""Export, import and copy carry Google ADK sessions (format version 3): a session's
``adk_sessions`` row travels with it, and the view's app and user state (``adk_states``) as
lines of their own, so ``MofaSessionService`` at the destination finds the session again with
the same events and merged state, between every pair of backends."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("google.adk")

from conftest import create_database, drop_database, selected_backends
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.genai import types

import mofa_persist
from mofa_persist import transfer
from mofa_persist.errors import InvalidInputError
from mofa_persist.integrations.adk import MofaSessionService
from mofa_persist.transfer import Selection

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from google.adk.sessions import Session

BACKENDS = selected_backends()
PAIRS = [(a, b) for a in BACKENDS for b in BACKENDS]
APP = "travel ✓"
USERS = ("alice", "bob 🐝")


@pytest.fixture(scope="module")
def second_databases() -> Iterator[dict[str, str]]:
    created: dict[str, str] = {}
    yield created
    for dialect, url in created.items():
        drop_database(dialect, url)


@pytest.fixture
def pair(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    second_databases: dict[str, str],
    tmp_path: Path,
) -> tuple[str, str]:
    """(source URL, destination URL): the run's databases, another one when both are alike."""

    def pick(backend: str, second: bool) -> str:
        if backend == "memory":
            return "memory://"
        if backend == "sqlite":
            return f"sqlite://{tmp_path / ('second.db' if second else 'first.db')}"
        pool = second_databases if second else server_databases
        if backend not in pool:
            pool[backend] = create_database(backend)
        return pool[backend]

    source, target = request.param
    return pick(source, False), pick(target, source == target)


def event(text: str, at: float, state: dict[str, Any], author: str = "user") -> Event:
    made = Event(
        invocation_id="inv-1",
        author=author,
        content=types.Content(
            role="user" if author == "user" else "model", parts=[types.Part(text=text)]
        ),
        actions=EventActions(state_delta=state),
    )
    made.timestamp = at
    return made


async def seed(view: mofa_persist.Store) -> list[tuple[str, str]]:
    """Two users' sessions with events and app, user and session state; float timestamps
    that only an exact copy keeps (``update_time`` is ADK's ``last_update_time``)."""
    service = MofaSessionService(view)
    made = []
    for number, user in enumerate(USERS):
        session = await service.create_session(
            app_name=APP,
            user_id=user,
            session_id=f"chat {number} ✓",
            state={"app:theme": "dark", f"user:lang{number}": "de", "local": [1, 2.5]},
        )
        at = 1_764_720_000.123456 + number + 1 / 3
        await service.append_event(session, event("hello", at, {"count": 1, "app:n": number}))
        reply = event("hi ü", at + 0.1, {"user:seen": True, "nested": {"a": None}}, "model")
        await service.append_event(session, reply)
        made.append((user, session.id))
    return made


async def sessions_of(view: mofa_persist.Store, made: list[tuple[str, str]]) -> list[Session]:
    service = MofaSessionService(view)
    found = []
    for user, ident in made:
        session = await service.get_session(app_name=APP, user_id=user, session_id=ident)
        assert session is not None
        found.append(session)
    return found


async def assert_same_sessions(
    src: mofa_persist.Store, dst: mofa_persist.Store, made: list[tuple[str, str]]
) -> None:
    before, after = await sessions_of(src, made), await sessions_of(dst, made)
    for old, new in zip(before, after, strict=True):
        assert len(new.events) == 2
        dump = [e.model_dump(mode="json", exclude_none=True) for e in new.events]
        assert dump == [e.model_dump(mode="json", exclude_none=True) for e in old.events]
        assert new.state == old.state
        assert new.state["app:theme"] == "dark"
        assert new.last_update_time == old.last_update_time  # the exact float
    listed = await MofaSessionService(dst).list_sessions(app_name=APP)
    assert sorted((s.user_id, s.id) for s in listed.sessions) == sorted(made)
    assert [s.state for s in listed.sessions] == [
        s.state for s in sorted(before, key=lambda s: s.last_update_time)
    ]
    for user, ident in made[:1]:
        with pytest.raises(AlreadyExistsError):
            await MofaSessionService(dst).create_session(
                app_name=APP, user_id=user, session_id=ident
            )


@pytest.mark.parametrize("pair", PAIRS, indirect=True, ids="-to-".join)
async def test_import_and_copy_carry_adk_sessions(pair: tuple[str, str], tmp_path: Path) -> None:
    src_url, dst_url = pair
    imported_tenant, copied_tenant = uuid.uuid4(), uuid.uuid4()
    async with (
        await mofa_persist.connect(src_url) as src_root,
        await mofa_persist.connect(dst_url) as dst_root,
    ):
        # Export and import, twice: the second changes nothing.
        src, dst = (
            src_root.scoped(tenant_id=imported_tenant),
            dst_root.scoped(tenant_id=imported_tenant),
        )
        made = await seed(src)
        path = tmp_path / "adk.jsonl"
        with path.open("w", encoding="utf-8") as out:
            counts = await transfer.export_jsonl(src, out, Selection(tenant_id=imported_tenant))
        assert (counts.sessions, counts.adk_sessions, counts.adk_states) == (2, 2, 3)
        first = await transfer.import_jsonl(dst, path)
        assert first.ok, first.conflicts
        assert first.inserted == counts
        await assert_same_sessions(src, dst, made)
        again = await transfer.import_jsonl(dst, path)
        assert again.ok, again.conflicts
        assert (again.inserted.total, again.unchanged) == (0, counts)
        await assert_same_sessions(src, dst, made)

        # Copy, twice: the second skips every session.
        src, dst = (
            src_root.scoped(tenant_id=copied_tenant),
            dst_root.scoped(tenant_id=copied_tenant),
        )
        made = await seed(src)
        report = await transfer.copy_data(src, dst, Selection(tenant_id=copied_tenant))
        assert report.ok, (report.conflicts, report.mismatches)
        assert (report.copied, report.verified) == (2, 2)
        assert (report.rows.adk_sessions, report.rows.adk_states) == (2, 3)
        await assert_same_sessions(src, dst, made)
        repeat = await transfer.copy_data(src, dst, Selection(tenant_id=copied_tenant))
        assert (repeat.ok, repeat.skipped, repeat.copied, repeat.rows.total) == (True, 2, 0, 0)
        await assert_same_sessions(src, dst, made)


async def export_records(view: mofa_persist.Store, path: Path) -> list[dict[str, Any]]:
    with path.open("w", encoding="utf-8") as out:
        await transfer.export_jsonl(view, out, Selection(tenant_id=view.scope.tenant_id))
    return read_records(path)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(transfer.dump_line(record) for record in records), encoding="utf-8")
    return path


async def test_lines_are_in_order_and_checked(store: mofa_persist.Store, tmp_path: Path) -> None:
    view = store.scoped(tenant_id=uuid.uuid4())
    await seed(view)
    records = await export_records(view, tmp_path / "good.jsonl")
    kinds = [record["type"] for record in records]
    assert kinds[:4] == ["header", "session", "external_key", "adk_session"]
    assert kinds[-4:] == ["adk_state", "adk_state", "adk_state", "end"]
    number = kinds.index("adk_session")
    assert isinstance(records[number]["update_time"], float)
    state = kinds.index("adk_state")
    for index, field, value, message in (
        (number, "update_time", "soon", "update_time must be a number"),
        (number, "app_name", "x" * 129, "app_name must be 1 to 128"),
        (number, "tenant_id", str(uuid.uuid4()), "not its session's tenant_id"),
        (state, "kind", "session", "kind must be app or user"),
        (state, "app_name", "another app", "key_hash does not match"),
        (state, "state", [1], "state must be a JSON object"),
    ):
        bad = [dict(record) for record in records]
        bad[index][field] = value
        with pytest.raises(InvalidInputError, match=f"line {index + 1}: .*{message}"):
            await transfer.validate_file(view, write(tmp_path / "bad.jsonl", bad))


async def test_a_file_without_adk_lines_still_imports(
    store: mofa_persist.Store, tmp_path: Path
) -> None:
    """A file written before ADK rows were exported: its sessions import (without ADK's row,
    as before)."""
    source = store.scoped(tenant_id=uuid.uuid4())
    made = await seed(source)
    records = await export_records(source, tmp_path / "all.jsonl")
    kept = [r for r in records if r["type"] not in ("adk_session", "adk_state")]
    kept[-1]["counts"] = {k: v for k, v in kept[-1]["counts"].items() if not k.startswith("adk")}
    async with await mofa_persist.connect("memory://") as other:
        view = other.scoped(tenant_id=source.scope.tenant_id)
        report = await transfer.import_jsonl(view, write(tmp_path / "old.jsonl", kept))
        assert report.ok
        assert report.inserted.sessions == 2
        user, ident = made[0]
        service = MofaSessionService(view)
        assert await service.get_session(app_name=APP, user_id=user, session_id=ident) is None


async def test_other_app_state_at_the_destination_is_kept_and_reported(
    store: mofa_persist.Store, tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    source = store.scoped(tenant_id=tenant)
    made = await seed(source)
    path = tmp_path / "adk.jsonl"
    await export_records(source, path)
    async with await mofa_persist.connect("memory://") as other:
        view = other.scoped(tenant_id=tenant)
        service = MofaSessionService(view)
        await service.create_session(app_name=APP, user_id="carol", state={"app:theme": "light"})
        report = await transfer.import_jsonl(view, path)
        assert len(report.conflicts) == 1
        assert "ADK app state of app 'travel ✓' exists with other content" in report.conflicts[0]
        assert (report.inserted.sessions, report.inserted.adk_states) == (2, 2)
        user, ident = made[0]
        session = await service.get_session(app_name=APP, user_id=user, session_id=ident)
        assert session is not None
        assert session.state["app:theme"] == "light"  # the destination's row stays
        assert session.state["user:lang0"] == "de"


def test_fields_match_the_adk_tables() -> None:
    for kind in ("adk_session", "adk_state"):
        table = transfer.TABLES[kind]  # type: ignore[index]
        assert list(transfer.FIELDS[kind]) == [column.key for column in table.c]  # type: ignore[index]
