"""Server restarts in the middle of a workload, on private servers (never the shared ones).

During an outage every call raises ``BackendError`` within the configured timeout (no hang);
after the restart the same store object works again, and no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest
import tally
from common import message_rows
from rootconf import admin
from sqlalchemy import update

import mofa_persist
from mofa_persist import BackendError
from mofa_persist.models import sessions_table as s_t

if TYPE_CHECKING:
    import uuid

    from servers import PrivateMariaDB, PrivatePostgres

#: The store's configured bounds in these tests, in seconds.
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 3.0
#: "No hang": a failing call must be over within its bound plus this much (a connection retry,
#: backoff, a loaded 2-core machine).
SLACK = CONNECT_TIMEOUT + 3.0


async def _connect(url: str) -> mofa_persist.Store:
    return await mofa_persist.connect(
        url, connect_timeout=CONNECT_TIMEOUT, call_timeout=CALL_TIMEOUT, pool_size=3
    )


class Workload:
    """Appends to one session without pause; keeps what was acknowledged and what failed."""

    def __init__(self, store: mofa_persist.Store, sid: uuid.UUID) -> None:
        self.store = store
        self.sid = sid
        self.acked: set[str] = set()
        #: Messages of failed calls that did not say "may or may not have been committed".
        self.not_committed: set[str] = set()
        self.failures: list[BaseException] = []
        self.slowest = 0.0
        self._count = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._count += 1
            name = f"m{self._count}"
            started = time.monotonic()
            names = [name + "-0"] if self._count % 2 else [f"{name}-{i}" for i in range(3)]
            try:
                if len(names) == 1:
                    await self.store.append_message(self.sid, "user", names[0])
                else:
                    items = [{"role": "assistant", "content": text} for text in names]
                    await self.store.append_messages(self.sid, items)
            except Exception as error:
                self.failures.append(error)
                if not getattr(error, "outcome_unknown", False):
                    self.not_committed.update(names)
                await asyncio.sleep(0.05)
            else:
                self.acked.update(names)
            finally:
                self.slowest = max(self.slowest, time.monotonic() - started)
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, CALL_TIMEOUT + SLACK + 5)


async def _expect_backend_error(call: Any) -> float:
    """Await ``call``; it must raise BackendError within the bound. Returns the time taken."""
    started = time.monotonic()
    with pytest.raises(BackendError):
        await asyncio.wait_for(call, CALL_TIMEOUT + SLACK + 10)
    elapsed = time.monotonic() - started
    assert elapsed < CALL_TIMEOUT + SLACK, f"the call took {elapsed:.1f}s to fail (a hang)"
    return elapsed


async def _outage_calls(store: mofa_persist.Store, sid: uuid.UUID) -> int:
    calls = [
        store.append_message(sid, "user", "during the outage"),
        store.get_messages(sid, limit=5),
        store.save_state(sid, {"during": "outage"}),
        store.list_sessions(limit=5),
    ]
    for call in calls:
        await _expect_backend_error(call)
    return len(calls)


@contextlib.contextmanager
def _frozen(server: PrivatePostgres | PrivateMariaDB) -> Any:
    """SIGSTOP the server: TCP stays open but nothing answers (a hung host)."""
    server.freeze()
    try:
        yield
    finally:
        server.thaw()


async def _restart_cycles(
    server: PrivatePostgres | PrivateMariaDB, cycles: int, check: str
) -> None:
    await admin(server.admin_url, ["CREATE DATABASE mofa_restart"])
    url = server.url("mofa_restart")
    modes = ["fast", "immediate", "kill"]
    store = await _connect(url)
    restarts = outage_calls = 0
    try:
        session = await store.create_session(title="restarts")
        workload = Workload(store, session.id)
        workload.start()
        for cycle in range(cycles):
            await asyncio.sleep(0.3)  # writes flow
            await asyncio.to_thread(server.stop, modes[cycle % len(modes)])
            outage_calls += await _outage_calls(store, session.id)
            await asyncio.to_thread(server.start)
            restarts += 1
            # The same store object works again at once: no stale pooled connection fails it.
            await asyncio.wait_for(
                store.append_message(session.id, "system", f"back {cycle}"), CALL_TIMEOUT + SLACK
            )
        await asyncio.sleep(0.3)
        await workload.stop()
        assert all(isinstance(failure, BackendError) for failure in workload.failures), [
            repr(failure) for failure in workload.failures if not isinstance(failure, BackendError)
        ]
        assert workload.slowest < CALL_TIMEOUT + SLACK, f"a call took {workload.slowest:.1f}s"
        rows = await message_rows(store, session.id)
        stored = [row.content for row in rows]
        assert len(stored) == len(set(stored)), "a message is stored twice"
        assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
        lost = workload.acked - set(stored)
        assert not lost, f"{len(lost)} acknowledged messages lost: {sorted(lost)[:5]}"
        phantoms = workload.not_committed & set(stored)
        assert not phantoms, f"{len(phantoms)} stored though their call said not committed"
        assert {f"back {cycle}" for cycle in range(cycles)} <= set(stored)
    finally:
        await store.close()
    tally.add(
        check,
        server.kind,
        restarts=restarts,
        outage_calls_failed_fast=outage_calls,
        acknowledged=len(workload.acked),
        failed_during_outage=len(workload.failures),
        outcome_unknown=sum(getattr(f, "outcome_unknown", False) for f in workload.failures),
        lost=len(lost),
    )


async def test_store_survives_server_restarts(private: PrivatePostgres | PrivateMariaDB) -> None:
    await _restart_cycles(private, cycles=3, check="restarts")


@pytest.mark.soak
async def test_soak_store_survives_30_restarts(private: PrivatePostgres | PrivateMariaDB) -> None:
    await _restart_cycles(private, cycles=30, check="restarts-soak")


async def test_calls_to_a_hung_server_fail_within_the_timeout(
    private: PrivatePostgres | PrivateMariaDB,
) -> None:
    """A server that keeps its sockets open but stops answering (SIGSTOP): a call already
    waiting on it, and new calls, raise BackendError in bounded time; after SIGCONT the same
    store works again and the interrupted call left nothing half-written."""
    await admin(private.admin_url, ["CREATE DATABASE mofa_hang"])
    store = await _connect(private.url("mofa_hang"))
    try:
        session = await store.create_session()
        await store.append_message(session.id, "user", "before")
        # Hold the session's row lock from another connection so the next append is
        # certainly in flight (waiting inside its transaction) when the server freezes.
        blocker = await _connect(private.url("mofa_hang"))
        try:
            holder = await blocker.engine.connect()
            transaction = await holder.begin()
            await holder.execute(update(s_t).where(s_t.c.id == session.id).values(last_seq=1))
            in_flight = asyncio.create_task(
                store.append_messages(session.id, [{"role": "user", "content": "in flight"}] * 2)
            )
            await asyncio.sleep(0.5)
            assert not in_flight.done()
            with _frozen(private):
                await _expect_backend_error(in_flight)
                await _expect_backend_error(store.append_message(session.id, "user", "frozen"))
                await _expect_backend_error(store.get_messages(session.id))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transaction.rollback(), 10)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(holder.close(), 10)
        finally:
            await blocker.close()
        after = await store.append_message(session.id, "user", "after")
        rows = await message_rows(store, session.id)
        assert [row.content for row in rows] == ["before", "after"]
        assert after.seq == 2
    finally:
        await store.close()
    tally.add("hung-server", private.kind, calls_failed_in_bound=3)
