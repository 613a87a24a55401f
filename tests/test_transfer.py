"""Export, import, copy, prune and stats at the Python level, on every backend and every pair.

Round trips compare canonical JSON (sorted keys, so PostgreSQL's JSONB key order does not
matter, but ``1`` and ``1.0`` still differ). Tests that need two databases of the same dialect
get a second one from ``second_url``.
"""

from __future__ import annotations

import io
import json
import os
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from conftest import create_database, drop_database, selected_backends

import mofa_persist
from mofa_persist import transfer
from mofa_persist.errors import InvalidInputError
from mofa_persist.transfer import Selection

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BACKENDS = selected_backends()
SQL_DIALECTS = [name for name in BACKENDS if name != "memory"]
ALL_PAIRS = [(a, b) for a in BACKENDS for b in BACKENDS]
SQL_PAIRS = [(a, b) for a in SQL_DIALECTS for b in SQL_DIALECTS]


# ---------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def second_databases() -> Iterator[dict[str, str]]:
    """A second database per server dialect, for same-dialect pairs; dropped afterwards."""
    created: dict[str, str] = {}
    yield created
    for dialect, url in created.items():
        drop_database(dialect, url)


@pytest.fixture
def url_of(
    server_databases: dict[str, str],
    second_databases: dict[str, str],
    tmp_path: Path,
) -> Any:
    """``url_of(backend, second=False)``: a URL this run owns, the second one if asked."""

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
    """(source URL, destination URL) for a (source, target) backend pair; never the same DB."""
    source, target = request.param
    return url_of(source), url_of(target, second=source == target)


@pytest.fixture
def two_urls(backend: str, url_of: Any) -> tuple[str, str]:
    return url_of(backend), url_of(backend, second=True)


@pytest.fixture
def every_backend(url_of: Any) -> list[str]:
    return [url_of(backend, second=True) for backend in BACKENDS]


async def seed(store: mofa_persist.Store, tenant: uuid.UUID, sessions: int = 3) -> list[uuid.UUID]:
    """Sessions with awkward content: every role, unicode, U+2028, exact numbers, api calls."""
    made = []
    for index in range(sessions):
        session = await store.create_session(
            tenant_id=tenant,
            user_id=uuid.uuid4(),
            agent_id=uuid.uuid4() if index % 2 else None,
            title=f"séance {index} 🚀",
            metadata={"z": 1, "a": [1.5, 1e16, 2**70, None, True], "nested": {"k": "v"}},
        )
        await store.append_messages(
            session.id,
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "line\u2028sep and\nnewline and 'quotes' 😀"},
                {"role": "assistant", "content": "ok", "metadata": {"tokens": 3, "f": 0.1}},
                {"role": "tool", "content": json.dumps({"result": 42})},
            ],
        )
        await store.save_state(session.id, {"step": 1, "notes": ["a", "b"]})
        await store.save_state(session.id, {"step": 2, "done": False, "ratio": 2.5})
        await store.record_api_call(
            session_id=session.id,
            model="gpt-test",
            status="success",
            latency_ms=12,
            prompt_tokens=10,
            completion_tokens=5,
            provider="echo",
        )
        await store.record_api_call(
            session_id=session.id, model="gpt-test", status="timeout", latency_ms=3, error="slow"
        )
        made.append(session.id)
    # A call whose session is gone: it is kept, unattached, with the tenant copied onto it.
    doomed = await store.create_session(tenant_id=tenant)
    await store.record_api_call(session_id=doomed.id, model="m", status="failed", latency_ms=1)
    await store.delete_session(doomed.id)
    return made


async def export_text(store: mofa_persist.Store, selection: Selection) -> str:
    buffer = io.StringIO()
    await transfer.export_jsonl(store, buffer, selection, batch_size=3)
    return buffer.getvalue()


def canonical_rows(text: str) -> list[str]:
    """Export lines without the header, as canonical JSON (only ``\\n`` splits lines)."""
    lines = text.split("\n")
    assert lines[-1] == ""
    return [json.dumps(json.loads(line), sort_keys=True) for line in lines[1:-1]]


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(transfer.dump_line(line) for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- export


async def test_export_format_header_order_and_end_line(
    store: mofa_persist.Store, tenant: uuid.UUID
) -> None:
    ids = await seed(store, tenant, sessions=2)
    lines = [
        json.loads(line)
        for line in (await export_text(store, Selection(tenant_id=tenant))).split("\n")[:-1]
    ]
    header, end = lines[0], lines[-1]
    assert header["type"] == "header"
    assert header["format"] == "mofa-persist"
    assert header["version"] == 3
    assert header["source"] == store.url.kind
    assert header["selection"] == {"tenant_id": str(tenant)}
    assert end == {
        "type": "end",
        "counts": {"sessions": 2, "messages": 8, "states": 4, "api_calls": 5},
    }
    kinds = [line["type"] for line in lines[1:-1]]
    one_session = ["session"] + ["message"] * 4 + ["state"] * 2 + ["api_call"] * 2
    assert kinds == one_session * 2 + ["api_call"]  # then the call of no session
    assert [line["id"] for line in lines if line["type"] == "session"] == sorted(map(str, ids))
    message = lines[3]
    assert message["content"] == "line\u2028sep and\nnewline and 'quotes' 😀"
    assert lines[1]["metadata"]["a"] == [1.5, 1e16, 2**70, None, True]
    assert isinstance(lines[1]["metadata"]["a"][1], float)


async def test_export_of_one_session_has_no_unattached_calls(
    store: mofa_persist.Store, tenant: uuid.UUID
) -> None:
    first, *_ = await seed(store, tenant, sessions=2)
    text = await export_text(store, Selection(session_id=first))
    rows = [json.loads(line) for line in text.split("\n")[1:-2]]
    assert {row.get("session_id", row["id"]) for row in rows} == {str(first)}


async def test_counts_match_the_export(store: mofa_persist.Store, tenant: uuid.UUID) -> None:
    await seed(store, tenant)
    counts = await transfer.count_selection(store, Selection(tenant_id=tenant))
    written = await transfer.export_jsonl(store, io.StringIO(), Selection(tenant_id=tenant))
    assert counts == written
    assert counts.as_dict() == {"sessions": 3, "messages": 12, "states": 6, "api_calls": 7}


# ---------------------------------------------------------------------- import


@pytest.mark.parametrize("pair", ALL_PAIRS, indirect=True, ids="-to-".join)
async def test_export_import_round_trips_exactly_between_every_pair(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    async with (
        await mofa_persist.connect(pair[0]) as src,
        await mofa_persist.connect(pair[1]) as dst,
    ):
        await seed(src, tenant)
        selection = Selection(tenant_id=tenant)
        exported = await export_text(src, selection)
        path = tmp_path / "export.jsonl"
        path.write_text(exported, encoding="utf-8")

        first = await transfer.import_jsonl(dst, path, batch_size=2)
        assert first.ok, first.conflicts
        assert first.inserted.as_dict() == {
            "sessions": 3,
            "messages": 12,
            "states": 6,
            "api_calls": 7,
        }
        assert canonical_rows(await export_text(dst, selection)) == canonical_rows(exported)

        again = await transfer.import_jsonl(dst, path)  # idempotent: nothing changes
        assert again.ok
        assert again.inserted.total == 0
        assert again.unchanged == first.inserted
        assert canonical_rows(await export_text(dst, selection)) == canonical_rows(exported)

        # The imported sessions keep their counters: the API continues their numbering.
        some = (await dst.list_sessions(tenant_id=tenant, limit=1)).items[0]
        appended = await dst.append_message(some.id, "user", "after import")
        assert appended.seq == 5
        assert (await dst.save_state(some.id, {"n": 3})).version == 3


def header() -> dict[str, Any]:
    return {"type": "header", "format": "mofa-persist", "version": 1}


def session_line(session_id: uuid.UUID, **changes: Any) -> dict[str, Any]:
    line = {
        "type": "session",
        "id": str(session_id),
        "user_id": None,
        "tenant_id": None,
        "agent_id": None,
        "title": "t",
        "metadata": {},
        "last_seq": 1,
        "state_version": 0,
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
    return {**line, **changes}


def message_line(session_id: uuid.UUID, **changes: Any) -> dict[str, Any]:
    line = {
        "type": "message",
        "id": str(uuid.uuid4()),
        "session_id": str(session_id),
        "seq": 1,
        "role": "user",
        "content": "hi",
        "metadata": {},
        "created_at": "2026-01-01T00:00:00.000001+00:00",
    }
    return {**line, **changes}


def end(
    sessions: int = 1, messages: int = 1, states: int = 0, api_calls: int = 0
) -> dict[str, Any]:
    counts = {"sessions": sessions, "messages": messages, "states": states, "api_calls": api_calls}
    return {"type": "end", "counts": counts}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], "line 1: the file is empty"),
        ([{"format": "other"}], "line 1: not a mofa-persist export"),
        ([{**header(), "version": 9}], "line 1: format version 9 is not supported"),
        ([header(), "SESSION"], "line 2: session fields: missing"),
        ([header(), "ROW", end()], "line 3: message seq 2 is above"),
        ([header(), "BAD_UUID"], "line 2: id is not a valid UUID"),
        ([header(), "NAIVE"], "line 2: created_at has no UTC offset"),
        ([header(), "ROLE"], "line 3: role must be one of"),
        ([header(), "NUL"], "line 3: content contains a NUL character"),
        ([header(), "ORPHAN", end(0, 1)], "line 2: session"),
        ([header(), "LATE", end()], "line 2: refers to session"),
        ([header(), "TRUNCATED"], "line 3: the file ends without its end line"),
        ([header(), "COUNTS"], "line 4: the end line counts"),
        ([header(), "AFTER_END"], "line 5: content after the end line"),
        ([header(), "NOT_JSON"], "line 2: is not valid JSON"),
        ([header(), "UNKNOWN_KEY"], "line 2: session fields: unknown extra"),
        ([header(), "TWICE"], "line 3: session"),
    ],
)
async def test_import_validates_every_line_first_and_names_the_line(
    store: mofa_persist.Store, tmp_path: Path, lines: list[Any], expected: str
) -> None:
    sid = uuid.uuid4()
    ok_session, ok_message = session_line(sid), message_line(sid)
    replacements: dict[str, list[Any]] = {
        "SESSION": [{"type": "session", "id": str(sid)}],
        "ROW": [ok_session, message_line(sid, seq=2)],
        "BAD_UUID": [session_line(sid, id="nope")],
        "NAIVE": [session_line(sid, created_at="2026-01-01T00:00:00")],
        "ROLE": [ok_session, message_line(sid, role="robot")],
        "NUL": [ok_session, message_line(sid, content="a\x00b")],
        "ORPHAN": [message_line(uuid.uuid4())],
        "LATE": [ok_message, ok_session],
        "TRUNCATED": [ok_session, ok_message],
        "COUNTS": [ok_session, ok_message, end(messages=2)],
        "AFTER_END": [ok_session, ok_message, end(), ok_message],
        "UNKNOWN_KEY": [session_line(sid, extra=1)],
        "TWICE": [ok_session, ok_session, end(2, 0)],
    }
    body: list[str] = []
    for line in lines:
        if line == "NOT_JSON":
            body.append("{not json\n")
        elif isinstance(line, str):
            body.extend(transfer.dump_line(item) for item in replacements[line])
        else:
            body.append(transfer.dump_line(line))
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(body), encoding="utf-8")
    with pytest.raises(InvalidInputError) as caught:
        await transfer.import_jsonl(store, path)
    assert str(caught.value).startswith(expected), str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(mofa_persist.NotFoundError):
        await store.get_session(sid)  # nothing was written


async def test_rows_may_refer_to_a_session_already_in_the_database(
    store: mofa_persist.Store, tenant: uuid.UUID, tmp_path: Path
) -> None:
    (session_id,) = await seed(store, tenant, sessions=1)
    exported = (await export_text(store, Selection(session_id=session_id))).split("\n")[1:-2]
    rows = [json.loads(line) for line in exported if json.loads(line)["type"] != "session"]
    path = write(tmp_path / "rows.jsonl", [header(), *rows, end(0, 4, 2, 2)])
    report = await transfer.import_jsonl(store, path)
    assert report.ok
    assert report.unchanged.as_dict() == {"sessions": 0, "messages": 4, "states": 2, "api_calls": 2}

    # Another message at a taken seq: a conflict; the session is left as it was.
    clash = message_line(session_id, seq=1, content="intruder")
    path = write(tmp_path / "clash.jsonl", [header(), clash, end(0, 1)])
    report = await transfer.import_jsonl(store, path)
    assert not report.ok
    assert "key is taken" in report.conflicts[0]
    assert "intruder" not in [m.content for m in await store.get_messages(session_id)]


async def test_a_differing_existing_row_is_a_conflict_not_an_overwrite(
    store: mofa_persist.Store, tenant: uuid.UUID, tmp_path: Path
) -> None:
    first, second, _ = await seed(store, tenant)
    path = tmp_path / "backup.jsonl"
    path.write_text(await export_text(store, Selection(tenant_id=tenant)), encoding="utf-8")
    await store.update_session(first, title="renamed after the backup")
    report = await transfer.import_jsonl(store, path)
    assert len(report.conflicts) == 1
    assert str(first) in report.conflicts[0]
    assert "exists with other content" in report.conflicts[0]
    assert (await store.get_session(first)).title == "renamed after the backup"
    assert report.unchanged.sessions == 2  # the other sessions were checked and left alone
    assert (await store.get_session(second)).title == "séance 1 🚀"


# ---------------------------------------------------------------------- copy


@pytest.mark.parametrize("pair", SQL_PAIRS, indirect=True, ids="-to-".join)
async def test_interrupted_copy_resumes_without_duplicates(pair: tuple[str, str]) -> None:
    tenant = uuid.uuid4()
    selection = Selection(tenant_id=tenant)
    async with (
        await mofa_persist.connect(pair[0]) as src,
        await mofa_persist.connect(pair[1]) as dst,
    ):
        await seed(src, tenant, sessions=5)
        seen: list[uuid.UUID] = []

        def crash_after_two(session_id: uuid.UUID, outcome: str) -> None:
            seen.append(session_id)
            if len(seen) == 2:
                raise KeyboardInterrupt  # as if the operator pressed Ctrl-C

        with pytest.raises(KeyboardInterrupt):
            await transfer.copy_data(src, dst, selection, batch_size=2, on_session=crash_after_two)
        assert (await transfer.count_selection(dst, selection)).sessions == 2

        report = await transfer.copy_data(src, dst, selection, batch_size=2)
        assert report.ok, (report.conflicts, report.mismatches)
        assert (report.sessions, report.skipped, report.copied) == (5, 2, 3)
        assert report.verified == 5
        assert canonical_rows(await export_text(dst, selection)) == canonical_rows(
            await export_text(src, selection)
        )
        again = await transfer.copy_data(src, dst, selection)
        assert (again.skipped, again.copied, again.rows.total) == (5, 0, 0)
        assert again.ok


async def test_copy_reports_a_session_that_differs_at_the_destination(
    two_urls: tuple[str, str],
) -> None:
    tenant = uuid.uuid4()
    selection = Selection(tenant_id=tenant)
    async with (
        await mofa_persist.connect(two_urls[0]) as src,
        await mofa_persist.connect(two_urls[1]) as dst,
    ):
        first, *_ = await seed(src, tenant, sessions=2)
        await transfer.copy_data(src, dst, selection)
        await dst.append_message(first, "user", "only at the destination")
        report = await transfer.copy_data(src, dst, selection)
        assert not report.ok
        assert report.conflicts == [
            f"session {first}: at the destination with other content; not copied"
        ]
        assert await dst.count_messages(first) == 5  # untouched


async def test_fingerprint_is_the_same_on_every_backend(
    every_backend: list[str], tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    prints = set()
    path: Path | None = None
    for url in every_backend:
        async with await mofa_persist.connect(url) as store:
            if path is None:
                (session_id, *_) = await seed(store, tenant, sessions=1)
                text = await export_text(store, Selection(session_id=session_id))
                path = tmp_path / "one.jsonl"
                path.write_text(text, encoding="utf-8")
            else:
                assert (await transfer.import_jsonl(store, path)).ok
            prints.add(await transfer.fingerprint(store, session_id))
    assert len(prints) == 1


async def test_copy_refuses_the_same_database(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'same.db'}"
    async with (
        await mofa_persist.connect(url) as one,
        await mofa_persist.connect(url) as two,
    ):
        with pytest.raises(InvalidInputError, match="same database"):
            await transfer.copy_data(one, two, Selection())


# ---------------------------------------------------------------------- prune


async def test_prune_sessions_by_age_with_dry_run(
    store: mofa_persist.Store, tenant: uuid.UUID
) -> None:
    await seed(store, tenant)
    later = datetime.now(UTC) + timedelta(days=31)
    selection = Selection(tenant_id=tenant)
    kept = await store.create_session(tenant_id=tenant)
    dry = await transfer.prune(
        store, older_than=timedelta(days=30), dry_run=True, selection=selection, now=later
    )
    assert (dry.mode, dry.sessions, dry.messages, dry.states) == ("sessions", 4, 12, 6)
    assert (await transfer.count_selection(store, selection)).sessions == 4
    untouched = await transfer.prune(
        store, older_than=timedelta(days=30), selection=selection, batch_size=2
    )
    assert untouched.sessions == 0
    done = await transfer.prune(
        store, older_than=timedelta(days=30), selection=selection, now=later, batch_size=2
    )
    assert (done.sessions, done.messages, done.states, done.dry_run) == (4, 12, 6, False)
    with pytest.raises(mofa_persist.NotFoundError):
        await store.get_session(kept.id)
    usage = await store.usage(tenant_id=tenant)
    assert usage.calls == 7  # provider calls outlive their sessions


async def test_prune_old_messages_keeps_the_newest_n(
    store: mofa_persist.Store, tenant: uuid.UUID
) -> None:
    ids = await seed(store, tenant)
    selection = Selection(tenant_id=tenant)
    later = datetime.now(UTC) + timedelta(hours=13)
    dry = await transfer.prune(
        store,
        older_than=timedelta(hours=12),
        keep_last=1,
        dry_run=True,
        selection=selection,
        now=later,
    )
    assert (dry.mode, dry.sessions, dry.messages) == ("messages", 3, 9)
    done = await transfer.prune(
        store, older_than=timedelta(hours=12), keep_last=1, selection=selection, now=later
    )
    assert (done.sessions, done.messages, done.states) == (3, 9, 0)
    for session_id in ids:
        remaining = await store.get_messages(session_id)
        assert [m.seq for m in remaining] == [4]
        assert (await store.get_session(session_id)).last_seq == 4
        assert len(await store.list_states(session_id)) == 2
    again = await transfer.prune(
        store, older_than=timedelta(hours=12), keep_last=1, selection=selection, now=later
    )
    assert again.messages == 0


def test_parse_age() -> None:
    assert transfer.parse_age("30d") == timedelta(days=30)
    assert transfer.parse_age("12h") == timedelta(hours=12)
    assert transfer.parse_age("90m") == timedelta(minutes=90)
    assert transfer.parse_age(" 2w ") == timedelta(weeks=2)
    for bad in ("", "30", "d", "1.5d", "-3d", "3y"):
        with pytest.raises(InvalidInputError, match="is not an age"):
            transfer.parse_age(bad)


# ---------------------------------------------------------------------- stats


async def test_stats_by_tenant_and_day(store: mofa_persist.Store, tenant: uuid.UUID) -> None:
    await seed(store, tenant)
    result = await transfer.collect_stats(store)
    (mine,) = [row for row in result.by_tenant if row["tenant_id"] == str(tenant)]
    assert mine == {
        "tenant_id": str(tenant),
        "sessions": 3,
        "messages": 12,
        "states": 6,
        "api_calls": 7,
        "tokens": 45,
    }
    today = datetime.now(UTC).date().isoformat()
    assert any(row["day"] == today and row["messages"] >= 12 for row in result.by_day)
    assert result.totals["messages"] == sum(row["messages"] for row in result.by_day)
    future = await transfer.collect_stats(store, since=datetime.now(UTC) + timedelta(days=1))
    assert future.totals == dict.fromkeys(future.totals, 0)
    with pytest.raises(InvalidInputError):
        await transfer.collect_stats(store, since=datetime(2026, 1, 1))


def test_fields_match_the_tables() -> None:
    for kind, table in transfer.TABLES.items():
        assert list(transfer.FIELDS[kind]) == [column.key for column in table.c]


# ---------------------------------------------------------------------- memory


async def fill(store: mofa_persist.Store, tenant: uuid.UUID, messages: int) -> None:
    per_session = 1000
    text = "x" * 200
    for _ in range(max(1, messages // per_session)):
        session = await store.create_session(tenant_id=tenant)
        await store.append_messages(
            session.id,
            [{"role": "user", "content": text, "metadata": {"i": i}} for i in range(per_session)],
        )


class _Sink(io.TextIOBase):
    """Counts what is written and keeps nothing, so only the exporter's memory is measured."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, text: str) -> int:
        self.size += len(text)
        return len(text)


async def measure_export(store: mofa_persist.Store, tenant: uuid.UUID) -> tuple[int, float, int]:
    sink = _Sink()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        await transfer.export_jsonl(store, sink, Selection(tenant_id=tenant))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, time.perf_counter() - started, sink.size


@pytest.mark.slow
async def test_export_memory_stays_flat_as_the_history_grows(
    store: mofa_persist.Store, backend: str
) -> None:
    sizes = [int(n) for n in os.environ.get("MOFA_EXPORT_SIZES", "2000,20000").split(",")]
    results = []
    for size in sizes:
        tenant = uuid.uuid4()
        await fill(store, tenant, size)
        peak, seconds, written = await measure_export(store, tenant)
        results.append((size, peak, seconds, written))
        print(
            f"\nexport {backend}: {size} messages, {written / 1e6:.1f} MB written, "
            f"tracemalloc peak {peak / 1e6:.2f} MB, {seconds:.1f} s"
        )
    (_small, small_peak, _, small_written), (_large, large_peak, _, large_written) = results
    assert large_written > 5 * small_written
    # Ten times the history must not mean ten times the memory: pages are bounded.
    assert large_peak < 2 * small_peak + 2_000_000
    assert large_peak < large_written / 4
