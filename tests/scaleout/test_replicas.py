"""A PostgreSQL primary with a streaming hot standby as ``read_replicas``.

Pausing the standby's WAL replay makes it visibly stale, which shows where each read went:
listings, usage and exports answer from the replica (without the newest writes), while the
agent's context, its state and sessions by id answer from the primary (with them). The replica
is then killed, restarted and frozen under load: no call may fail or hang.
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import time
import uuid
from typing import TYPE_CHECKING, TypeVar

from figures import record

import mofa_persist
from mofa_persist import backend as backend_module
from mofa_persist.transfer import Selection, export_jsonl

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import pytest
    from pg_replica import PrimaryWithReplica

T = TypeVar("T")


def wait_replayed(pair: PrimaryWithReplica, timeout: float = 30) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    lsn = pair.psql_primary("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while pair.psql_replica(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") != "t":
        assert time.monotonic() < deadline, f"the replica did not replay up to {lsn}"
        time.sleep(0.01)


def make_synchronous(pair: PrimaryWithReplica, timeout: float = 30) -> None:
    """Commits on the primary wait until the standby has them: acknowledged means on both."""
    pair.psql_primary("ALTER SYSTEM SET synchronous_standby_names = '*'")
    pair.psql_primary("SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    while pair.psql_primary("SELECT sync_state FROM pg_stat_replication") != "sync":
        assert time.monotonic() < deadline, "the standby never became synchronous"
        time.sleep(0.05)


def exported_sessions(text: str) -> set[str]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {line["id"] for line in lines if line.get("type") == "session"}


async def test_stale_reads_on_the_replica_own_writes_on_the_primary(
    replica_pair: PrimaryWithReplica, replicated_db: str
) -> None:
    primary, replica = (
        replica_pair.primary_url(replicated_db),
        replica_pair.replica_url(replicated_db),
    )
    async with await mofa_persist.connect(primary, read_replicas=[replica]) as store:
        wait_replayed(replica_pair)  # the schema that connect() just created
        old = await store.create_session(title="replicated before the pause")
        wait_replayed(replica_pair)
        assert [s.id for s in (await store.list_sessions()).items] == [old.id]

        replica_pair.pause_replay()
        new = await store.create_session(title="written while the replica is paused")
        await store.append_messages(
            new.id, [{"role": "user", "content": f"message {n}"} for n in range(3)]
        )
        await store.save_state(new.id, {"step": 1})
        await store.record_api_call(
            session_id=new.id, model="m", status="success", latency_ms=5, total_tokens=7
        )
        reads_before = store.read_replicas[0].reads

        # May lag: the replica answers, without the newest writes.
        assert [s.id for s in (await store.list_sessions()).items] == [old.id]
        assert (await store.usage()).calls == 0
        out = io.StringIO()
        await export_jsonl(store, out, Selection())
        assert exported_sessions(out.getvalue()) == {str(old.id)}
        assert store.read_replicas[0].reads == reads_before + 3

        # Must see the caller's own writes: the primary answers.
        assert (await store.get_session(new.id)).title == new.title
        context = await store.get_messages(new.id, limit=10)
        assert [m.content for m in context] == ["message 0", "message 1", "message 2"]
        state = await store.load_state(new.id)
        assert state is not None and state.state == {"step": 1}
        fresh = store.on_primary()
        assert [s.id for s in (await fresh.list_sessions()).items] == [new.id, old.id]
        assert (await fresh.usage()).total_tokens == 7
        assert store.read_replicas[0].reads == reads_before + 3

        replica_pair.resume_replay()
        wait_replayed(replica_pair)
        assert [s.id for s in (await store.list_sessions()).items] == [new.id, old.id]
        assert (await store.usage()).calls == 1
        assert store.read_replicas[0].failures == 0


async def test_replica_lag_observed(replica_pair: PrimaryWithReplica, replicated_db: str) -> None:
    """Time from a committed write on the primary to the row being readable on the replica."""
    writes = 200
    primary, replica = (
        replica_pair.primary_url(replicated_db),
        replica_pair.replica_url(replicated_db),
    )
    async with (
        await mofa_persist.connect(primary) as writer,
        await mofa_persist.connect(replica, migrate=False) as reader,
    ):
        wait_replayed(replica_pair)
        lags_ms: list[float] = []
        for _ in range(writes):
            session = await writer.create_session(title="lag probe")
            committed = time.perf_counter()
            while True:
                try:
                    await reader.get_session(session.id)
                    break
                except mofa_persist.NotFoundError:
                    assert time.perf_counter() - committed < 30, "the replica stopped replaying"
            lags_ms.append((time.perf_counter() - committed) * 1000)
        lag = replica_pair.replication_lag()
    lags_ms.sort()
    assert len(lags_ms) == writes and lag["state"] == "streaming"
    record(
        "replica lag (commit on primary -> visible on replica, polled)",
        writes=writes,
        p50_ms=round(statistics.median(lags_ms), 2),
        p95_ms=round(lags_ms[int(writes * 0.95) - 1], 2),
        max_ms=round(lags_ms[-1], 2),
        byte_lag_after=lag["byte_lag"],
    )


async def _reads_and_writes(store: mofa_persist.Store, seconds: float) -> tuple[int, float]:
    """Writes then reads in a loop for ``seconds``; returns (calls made, slowest call in s)."""
    calls, slowest = 0, 0.0

    async def timed(call: Awaitable[T]) -> T:
        nonlocal calls, slowest
        started = time.monotonic()
        result = await call
        calls += 1
        slowest = max(slowest, time.monotonic() - started)
        return result

    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        session = await timed(store.create_session(title="under load"))
        await timed(store.append_message(session.id, "user", "hello"))
        page = await timed(store.list_sessions(limit=5))
        usage = await timed(store.usage())
        assert (await timed(store.get_messages(session.id)))[0].content == "hello"
        assert page.items and usage.calls == 0
    return calls, slowest


async def test_a_replica_that_goes_away_is_skipped_then_used_again(
    replica_pair: PrimaryWithReplica, replicated_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "REPLICA_RETRY_AFTER_S", 0.5)
    primary, replica = (
        replica_pair.primary_url(replicated_db),
        replica_pair.replica_url(replicated_db),
    )
    async with await mofa_persist.connect(
        primary, read_replicas=[replica], connect_timeout=2
    ) as store:
        wait_replayed(replica_pair)
        before, _ = await _reads_and_writes(store, 1.0)
        assert store.read_replicas[0].reads > 0 and store.read_replicas[0].failures == 0

        replica_pair.stop_replica("kill")
        try:
            during, slowest_kill = await _reads_and_writes(store, 2.0)
            assert store.read_replicas[0].failures >= 1
        finally:
            replica_pair.start_replica()

        replica_pair.freeze_replica()
        try:
            frozen = time.monotonic()
            page = await asyncio.wait_for(store.list_sessions(limit=1), 60)
            frozen_s = time.monotonic() - frozen
            assert page.items
            during_freeze, slowest_freeze = await _reads_and_writes(store, 1.0)
        finally:
            replica_pair.thaw_replica()
        replica_pair.wait_streaming()
        wait_replayed(replica_pair)

        await asyncio.sleep(0.6)  # past REPLICA_RETRY_AFTER_S: the replica gets another try
        reads, failures = store.read_replicas[0].reads, store.read_replicas[0].failures
        await store.list_sessions()
        await store.usage()
        assert store.read_replicas[0].reads == reads + 2
        assert store.read_replicas[0].failures == failures
    record(
        "replica goes away (killed, restarted, frozen) under load",
        calls_before=before,
        calls_while_killed=during,
        calls_while_frozen=during_freeze,
        replica_failures_seen=failures,
        slowest_call_while_killed_ms=round(slowest_kill * 1000, 1),
        first_read_while_frozen_ms=round(frozen_s * 1000, 1),
        slowest_call_while_frozen_ms=round(slowest_freeze * 1000, 1),
    )


async def test_a_standby_in_a_node_list_is_skipped_for_writes(
    replica_pair: PrimaryWithReplica, replicated_db: str
) -> None:
    """Failover URLs never write to a hot standby: the primary is found even when listed last."""
    urls = [replica_pair.replica_url(replicated_db), replica_pair.primary_url(replicated_db)]
    async with await mofa_persist.connect(urls) as store:
        session = await store.create_session(title=f"written on the primary {uuid.uuid4()}")
        await store.append_message(session.id, "user", "hi")
        assert (await store.get_messages(session.id))[0].content == "hi"


async def test_promoting_a_synchronous_standby_loses_no_acknowledged_write(
    doomed_pair: PrimaryWithReplica,
) -> None:
    """PostgreSQL failover: with synchronous replication, SIGKILL the primary mid-workload and
    promote the standby. A store given both URLs skips the standby while it is read-only,
    then writes to it once promoted; every acknowledged append is on it."""
    pair = doomed_pair
    make_synchronous(pair)
    database = f"mofa_failover_{uuid.uuid4().hex[:8]}"
    pair.create_database(database)
    pair.wait_replica_has_database(database)
    urls = [pair.primary_url(database), pair.replica_url(database)]
    acked: set[str] = set()
    unknown: set[str] = set()
    not_committed: set[str] = set()
    acked_at: list[float] = []

    stop = asyncio.Event()

    async def writer(store: mofa_persist.Store, sid: uuid.UUID, tag: str) -> None:
        index = 0
        while not stop.is_set():
            index += 1
            content = f"{tag}-{index}"
            try:
                await store.append_message(sid, "user", content)
            except mofa_persist.BackendError as error:
                (unknown if error.outcome_unknown else not_committed).add(content)
                await asyncio.sleep(0.05)
            else:
                acked.add(content)
                acked_at.append(time.monotonic())

    async with await mofa_persist.connect(urls, connect_timeout=3) as store:
        session = await store.create_session(title="failover")
        writers = asyncio.gather(*(writer(store, session.id, f"w{n}") for n in range(4)))
        await asyncio.sleep(1.5)
        kill_started = time.monotonic()
        await asyncio.to_thread(pair.primary.stop, "kill")
        killed_at = time.monotonic()  # every primary process is gone
        await asyncio.to_thread(pair.psql_replica, "SELECT pg_promote()")
        promoted_at = time.monotonic()
        await asyncio.sleep(2.0)  # writing to the promoted standby
        stop.set()
        await writers
    async with await mofa_persist.connect(pair.replica_url(database), migrate=False) as promoted:
        rows = await promoted.get_messages(session.id)
    stored = [m.content for m in rows]
    assert [m.seq for m in rows] == list(range(1, len(rows) + 1))
    assert len(stored) == len(set(stored))
    assert acked <= set(stored), f"{len(acked - set(stored))} acknowledged appends lost"
    assert not (not_committed & set(stored)), "a call that said 'not committed' was stored"
    assert set(stored) <= acked | unknown
    # Acknowledged after the promotion returned: written to the promoted standby.
    after_promotion = [at - promoted_at for at in acked_at if at > promoted_at]
    assert after_promotion, "no write succeeded after the failover"
    record(
        "PostgreSQL failover: primary SIGKILLed, synchronous standby promoted",
        acked=len(acked),
        lost=len(acked - set(stored)),
        stored=len(stored),
        outcome_unknown_calls=len(unknown),
        not_committed_calls=len(not_committed),
        kill_s=round(killed_at - kill_started, 2),
        promotion_s=round(promoted_at - killed_at, 2),
        first_ack_after_promotion_s=round(after_promotion[0], 3),
        acked_after_promotion=len(after_promotion),
    )
