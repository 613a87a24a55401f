"""OpenTelemetry spans and metrics, and the ``mofa_persist`` logger, on every backend.

The SDK's in-memory exporters are installed as the global providers once per process, as an
application would; the store must find them with nothing configured. What is recorded must
never carry a password or a message's content. Skips loudly without the SDK (the ``test``
dependency group installs it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from conftest import IN_CI, admin, parse_url, selected_backends

import mofa_persist
from mofa_persist import telemetry

try:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError as missing:  # pragma: no cover - the test group installs the SDK
    reason = f"opentelemetry-sdk is not installed ({missing}); pip install opentelemetry-sdk"
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    print(f"\n*** SKIPPING tests/test_telemetry.py: {reason} ***")
    pytest.skip(reason, allow_module_level=True)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

CONTENT = "the-content-must-never-be-recorded-" + uuid.uuid4().hex
PASSWORD = "pw-must-never-be-recorded-" + uuid.uuid4().hex[:8]


class _WhileTesting(SimpleSpanProcessor):
    """Keeps spans only during a test of this file: the providers stay set for the rest of
    the process, whose other tests must not pile spans up in memory."""

    enabled = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.enabled:
            super().on_end(span)


class Recorded:
    """The process's global providers, backed by in-memory exporters."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        self.processor = _WhileTesting(self.spans)
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(self.processor)
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.metrics]))

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """Data points of metric ``name`` collected now (cumulative since the start)."""
        data = self.metrics.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


_RECORDED: Recorded | None = None


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    global _RECORDED
    if _RECORDED is None:
        _RECORDED = Recorded()  # global providers can be set once per process
    _RECORDED.spans.clear()
    _RECORDED.processor.enabled = True
    yield _RECORDED
    _RECORDED.processor.enabled = False
    _RECORDED.spans.clear()


def _everything(recorded: Recorded, caplog: pytest.LogCaptureFixture) -> str:
    """All spans, metrics and log lines as one text, to search for what must not be there."""
    spans = [span.to_json() for span in recorded.finished()]
    data = recorded.metrics.get_metrics_data()
    lines = [record.getMessage() for record in caplog.records]
    return "\n".join([*spans, data.to_json() if data else "", *lines])


async def test_one_span_per_operation_with_database_attributes(
    store: mofa_persist.Store, backend: str, recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mofa_persist")
    session = await store.create_session(title="telemetry")
    await store.append_message(session.id, "user", CONTENT)
    await store.get_messages(session.id, limit=50)
    await store.save_state(session.id, {"note": CONTENT})
    await store.load_state(session.id)

    spans = {span.name: span for span in recorded.finished()}
    for action in (
        "create a session",
        "append a message",
        "read messages",
        "save state",
        "load state",
    ):
        assert action in spans, f"no span for {action!r}: {sorted(spans)}"
    span = spans["append a message"]
    attributes = dict(span.attributes or {})
    assert span.kind is trace.SpanKind.CLIENT
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "mofa_persist"
    assert attributes["db.system.name"] == ("sqlite" if backend == "memory" else backend)
    assert attributes["db.operation.name"] == "append a message"
    assert attributes["db.namespace"] == store.url.database
    if backend in ("postgresql", "mysql"):
        assert attributes["server.address"] == store.url.sa_url.host
        assert isinstance(attributes["server.port"], int)
    else:
        assert "server.address" not in attributes
    assert span.status.status_code is trace.StatusCode.UNSET
    assert CONTENT not in _everything(recorded, caplog)


async def test_duration_histogram_and_pool_usage(
    store: mofa_persist.Store, backend: str, recorded: Recorded
) -> None:
    session = await store.create_session()
    for index in range(3):
        await store.append_message(session.id, "user", f"m{index}")
    durations = [
        point
        for point in recorded.points("db.client.operation.duration")
        if point.attributes.get("db.operation.name") == "append a message"
        and point.attributes.get("db.namespace") == store.url.database
    ]
    assert durations, "no duration recorded for appends"
    assert sum(point.count for point in durations) >= 3
    assert all(point.sum > 0 for point in durations)
    pools = recorded.points("db.client.connection.count")
    if backend in ("postgresql", "mysql"):
        states = {point.attributes["db.client.connection.state"] for point in pools}
        assert states == {"used", "idle"}
        idle = [
            point.value
            for point in pools
            if point.attributes["db.client.connection.state"] == "idle"
            and str(store.url.database) in point.attributes["db.client.connection.pool.name"]
        ]
        assert idle and max(idle) >= 1  # the appends' connection went back to the pool


async def test_conflict_is_a_span_event_and_a_count(
    store: mofa_persist.Store, recorded: Recorded
) -> None:
    session = await store.create_session()
    await store.save_state(session.id, {"step": 1})

    def conflicts() -> int:
        return sum(
            point.value
            for point in recorded.points("mofa_persist.conflicts")
            if point.attributes.get("db.namespace") == store.url.database
        )

    before = conflicts()
    with pytest.raises(mofa_persist.ConflictError):
        await store.save_state(session.id, {"step": 2}, expected_version=0)
    (span,) = [span for span in recorded.finished() if span.name == "save state"][-1:]
    assert [event.name for event in span.events] == ["conflict"]
    assert span.status.status_code is trace.StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "ConflictError"
    assert conflicts() == before + 1


async def test_errors_are_recorded_without_their_text(
    store: mofa_persist.Store, recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mofa_persist")
    missing = uuid.uuid4()
    with pytest.raises(mofa_persist.NotFoundError):
        await store.append_message(missing, "user", CONTENT)
    span = [span for span in recorded.finished() if span.name == "append a message"][-1]
    assert span.status.status_code is trace.StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "NotFoundError"
    text = _everything(recorded, caplog)
    assert CONTENT not in text
    assert str(missing) not in json.dumps([s.to_json() for s in recorded.finished()])


def _with_password(url: str) -> str:
    """``url`` with a password added (the servers here trust local connections)."""
    parsed = parse_url(url)
    return parsed.sa_url.set(password=PASSWORD).render_as_string(hide_password=False)


async def _drop_connections(server_url: str) -> None:
    """Kill the server side of every other connection to this database."""
    parsed = parse_url(server_url)
    if parsed.kind == "postgresql":
        await admin(
            server_url,
            [
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{parsed.database}' AND pid <> pg_backend_pid()"
            ],
        )
        return
    import aiomysql

    conn = await aiomysql.connect(
        host=parsed.sa_url.host, port=parsed.sa_url.port or 3306, user="root", autocommit=True
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = %s AND id <> CONNECTION_ID()",
                (parsed.database,),
            )
            for (pid,) in await cursor.fetchall():
                await cursor.execute(f"KILL {int(pid)}")
    finally:
        conn.close()


@pytest.fixture
async def server_store(server_url: str) -> AsyncIterator[mofa_persist.Store]:
    url = server_url
    if parse_url(url).kind == "postgresql" and "pgbouncer" not in url:
        url = _with_password(url)  # trusted: the password is not checked, only carried
    async with await mofa_persist.connect(url) as connected:
        yield connected


async def test_lost_connection_retry_is_an_event_a_count_and_a_warning(
    server_store: mofa_persist.Store,
    server_url: str,
    recorded: Recorded,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if "pgbouncer" in server_url:
        pytest.skip("PgBouncer hides the server connections this test kills")
    caplog.set_level(logging.DEBUG, logger="mofa_persist")
    store = server_store
    session = await store.create_session()
    await store.append_message(session.id, "user", "before")
    await _drop_connections(server_url)
    await store.append_message(session.id, "user", CONTENT)  # retried on a fresh connection

    span = [span for span in recorded.finished() if span.name == "append a message"][-1]
    events = [event for event in span.events if event.name == "retry"]
    assert events, "the retry is not on the span"
    assert (events[0].attributes or {})["mofa_persist.retry.reason"] == "connection"
    assert span.status.status_code is trace.StatusCode.UNSET
    retries = [
        point
        for point in recorded.points("mofa_persist.retries")
        if point.attributes.get("db.namespace") == store.url.database
    ]
    assert retries and sum(point.value for point in retries) >= 1
    warnings = [
        record
        for record in caplog.records
        if record.name == "mofa_persist" and record.levelno == logging.WARNING
    ]
    assert any("reconnecting" in record.getMessage() for record in warnings)
    text = _everything(recorded, caplog)
    assert CONTENT not in text
    assert PASSWORD not in text
    assert PASSWORD not in repr(store)


@pytest.mark.skipif("sqlite" not in selected_backends(), reason="runs in the SQLite session")
async def test_migration_is_logged(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mofa_persist")
    async with await mofa_persist.connect(f"sqlite://{tmp_path / 'fresh.db'}"):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "mofa_persist"]
    assert any(line.startswith("migrating the schema of database") for line in lines), lines
    assert any(line.endswith("fresh.db to head") for line in lines), lines
    assert any("fresh.db is at head" in line for line in lines), lines


def test_nothing_is_recorded_without_opentelemetry(tmp_path: Any) -> None:
    """With opentelemetry not importable the store works and the hook does nothing."""
    script = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
import mofa_persist
from mofa_persist import telemetry
assert telemetry._tracer is None and telemetry._trace is None

async def main():
    async with await mofa_persist.connect("memory://") as store:
        session = await store.create_session()
        await store.append_message(session.id, "user", "hello")
        assert len(await store.get_messages(session.id)) == 1
    print("ok")

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": ""},
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_providers_the_hook_makes_nothing(tmp_path: Any) -> None:
    """API installed, no provider set (an application that does not use telemetry): the
    store works and no span is made, not even a no-op one."""
    script = """
import asyncio
import mofa_persist
from mofa_persist import telemetry
assert telemetry._tracer is not None and telemetry._unconfigured()
made = []
telemetry._tracer.start_as_current_span = lambda *a, **k: made.append(a)

async def main():
    async with await mofa_persist.connect("memory://") as store:
        session = await store.create_session()
        await store.append_message(session.id, "user", "hello")
    assert made == [], made
    print("ok")

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": ""},
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_hook_is_active_here() -> None:
    """The suite above would prove nothing if the telemetry module had found no API."""
    assert telemetry._tracer is not None


async def test_concurrent_operations_get_separate_spans(
    store: mofa_persist.Store, recorded: Recorded
) -> None:
    session = await store.create_session()
    await asyncio.gather(*(store.append_message(session.id, "user", f"c{i}") for i in range(8)))
    spans = [span for span in recorded.finished() if span.name == "append a message"]
    assert len(spans) == 8
    assert len({span.context.span_id for span in spans}) == 8
    assert all(span.parent is None for span in spans)


async def test_group_commit_batch_sizes(store: mofa_persist.Store, recorded: Recorded) -> None:
    session = await store.create_session()

    def sizes() -> tuple[int, float]:
        points = [
            point
            for point in recorded.points("mofa_persist.group_commit.size")
            if point.attributes.get("db.namespace") == store.url.database
        ]
        assert all("db.operation.name" not in point.attributes for point in points)
        return sum(point.count for point in points), sum(point.sum for point in points)

    writes_before, calls_before = sizes()
    await asyncio.gather(*(store.append_message(session.id, "user", f"g{i}") for i in range(8)))
    writes, calls = sizes()
    assert calls - calls_before == 8  # every call is in exactly one recorded write
    assert 1 < writes - writes_before < 8  # the first alone, the rest in fewer transactions
    spans = recorded.finished()
    assert len([span for span in spans if span.name == "append a message"]) == 8
    groups = [span for span in spans if span.name == "append a group of messages"]
    assert groups and all(span.parent is None for span in groups)
