"""A private 3-node MariaDB Galera cluster: writers on every node, node kills, migrations.

Writers on different nodes that append to the same sessions collide in Galera's certification
(one commit fails with a deadlock); the store retries those, so no caller sees an error.
Every check reads the sessions back: each acknowledged message is stored exactly once, ``seq``
runs 1..N without gaps, and nothing is stored that no writer sent.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from databases import certification_failures, create_cluster_database, drop_cluster_database
from figures import record
from rootconf import create_database, drop_database

import mofa_persist
from mofa_persist.migrate import LOCK_TABLE, head_revision

if TYPE_CHECKING:
    import uuid

    from galera import GaleraCluster

SESSIONS = 8
WRITERS_PER_STORE = 4
APPENDS_PER_WRITER = 30


@dataclass
class Ledger:
    """What the writers sent: acknowledged; failed with ``outcome_unknown`` (may be stored);
    failed otherwise (must not be stored); and the errors seen."""

    acked: set[tuple[uuid.UUID, str]] = field(default_factory=set)
    failed: set[tuple[uuid.UUID, str]] = field(default_factory=set)
    refused: set[tuple[uuid.UUID, str]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


async def _writer(
    store: mofa_persist.Store,
    sessions: list[uuid.UUID],
    tag: str,
    ledger: Ledger,
    *,
    count: int | None = None,
    until: float | None = None,
) -> None:
    index = 0
    while (count is None or index < count) and (until is None or time.monotonic() < until):
        sid = sessions[(hash(tag) + index) % len(sessions)]
        content = f"{tag}-{index}"
        index += 1
        try:
            await store.append_message(sid, "user", content)
        except mofa_persist.BackendError as error:  # unacknowledged
            (ledger.failed if error.outcome_unknown else ledger.refused).add((sid, content))
            ledger.errors.append(str(error))
        else:
            ledger.acked.add((sid, content))


@dataclass
class Audit:
    stored: int
    lost: int
    duplicated: int
    invented: int
    bad_sequences: int


async def _audit(url: str | list[str], sessions: list[uuid.UUID], ledger: Ledger) -> Audit:
    """Read every session back and compare it with the ledger."""
    stored: list[tuple[uuid.UUID, str]] = []
    bad_sequences = 0
    async with await mofa_persist.connect(url, migrate=False) as store:
        for sid in sessions:
            messages = await store.get_messages(sid)
            if [m.seq for m in messages] != list(range(1, len(messages) + 1)):
                bad_sequences += 1
            if (await store.get_session(sid)).last_seq != len(messages):
                bad_sequences += 1
            stored += [(sid, m.content) for m in messages]
    unique = set(stored)
    return Audit(
        stored=len(stored),
        lost=len(ledger.acked - unique),
        duplicated=len(stored) - len(unique),
        # Stored but never acknowledged, and not reported as "may or may not be committed".
        invented=len(unique - ledger.acked - ledger.failed),
        bad_sequences=bad_sequences,
    )


async def _new_sessions(url: str | list[str], count: int = SESSIONS) -> list[uuid.UUID]:
    async with await mofa_persist.connect(url) as store:
        return [(await store.create_session(title=f"session {n}")).id for n in range(count)]


async def _throughput(
    urls: list[str], sessions: list[uuid.UUID], *, shared: bool
) -> tuple[Ledger, float]:
    """Every store gets WRITERS_PER_STORE writers, which append to all ``sessions`` in turn
    (``shared``) or each to one of its own; returns the ledger and messages/s."""
    ledger = Ledger()
    stores = [await mofa_persist.connect(url, migrate=False) for url in urls]
    writers = [
        (store, f"s{s}w{w}") for s, store in enumerate(stores) for w in range(WRITERS_PER_STORE)
    ]
    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _writer(
                    store,
                    sessions if shared else [sessions[index]],
                    tag,
                    ledger,
                    count=APPENDS_PER_WRITER,
                )
                for index, (store, tag) in enumerate(writers)
            )
        )
        elapsed = time.perf_counter() - started
    finally:
        for store in stores:
            await store.close()
    return ledger, len(ledger.acked) / elapsed


@pytest.mark.parametrize("sharing", ["shared sessions", "own sessions"])
@pytest.mark.parametrize("placement", ["single server", "one node", "three nodes"])
async def test_writers_on_every_node_lose_nothing(
    galera: GaleraCluster, placement: str, sharing: str
) -> None:
    """12 writers through 3 stores append to 12 sessions, all of them in turn (every session
    written through every node) or one each; throughput is recorded."""
    if placement == "single server":  # the shared, non-clustered MariaDB, for comparison
        url = await asyncio.to_thread(create_database, "mysql")
        urls = [url] * 3
        database = None
    else:
        database = await asyncio.to_thread(create_cluster_database, galera)
        nodes = [0, 0, 0] if placement == "one node" else [0, 1, 2]
        urls = [galera.url(node, database) for node in nodes]
    try:
        sessions = await _new_sessions(urls[0], 3 * WRITERS_PER_STORE)
        clustered = database is not None
        before = certification_failures(galera) if clustered else {}
        ledger, rate = await _throughput(urls, sessions, shared=sharing == "shared sessions")
        after = certification_failures(galera) if clustered else {}
        audit = await _audit(urls[-1], sessions, ledger)
    finally:
        if database is None:
            await asyncio.to_thread(drop_database, "mysql", urls[0])
        else:
            await asyncio.to_thread(drop_cluster_database, galera, database)
    sent = 3 * WRITERS_PER_STORE * APPENDS_PER_WRITER
    assert ledger.errors == [], ledger.errors[:3]
    assert len(ledger.acked) == sent
    assert (audit.lost, audit.duplicated, audit.invented, audit.bad_sequences) == (0, 0, 0, 0)
    assert audit.stored == sent
    record(
        f"append, {sharing}, {placement}",
        messages=sent,
        messages_per_s=round(rate),
        lost=audit.lost,
        **{name: after[name] - before[name] for name in after},
    )


#: What happens to which node, in order: SIGKILL (a crash), then a cut-off from the group
#: (the node stays up outside the primary component and refuses statements with 1047).
DISRUPTIONS = (("kill", 0), ("kill", 1), ("isolate", 0))


async def test_losing_a_node_mid_workload_loses_no_acknowledged_write(
    galera: GaleraCluster, cluster_db: str
) -> None:
    """Two stores with every node's URL (in different orders, so both nodes they prefer take
    writes) keep writing while one node after another is killed or cut off; each node
    rejoins before the next disruption."""
    urls = [galera.url(node, cluster_db) for node in range(galera.nodes)]
    sessions = await _new_sessions(urls)
    ledger = Ledger()
    rounds: list[dict[str, object]] = []
    async with (
        await mofa_persist.connect(urls, connect_timeout=5) as first,
        await mofa_persist.connect(urls[1:] + urls[:1], connect_timeout=5) as second,
    ):
        for action, victim in DISRUPTIONS:
            acked_before = len(ledger.acked)
            failed_before = len(ledger.failed) + len(ledger.refused)
            until = time.monotonic() + 5.0
            writers = asyncio.gather(
                *(
                    _writer(store, sessions, f"{action}{victim}s{s}w{w}", ledger, until=until)
                    for s, store in enumerate((first, second))
                    for w in range(WRITERS_PER_STORE)
                )
            )
            await asyncio.sleep(1.5)
            if action == "kill":
                await asyncio.to_thread(galera.kill_node, victim)
            else:
                await asyncio.to_thread(galera.isolate_node, victim)
            if action == "kill":
                await writers
                back = time.monotonic()
                await asyncio.to_thread(galera.start_node, victim)
            else:
                # The cut-off node rejoins when the writers' time is up, not after the last
                # call ends: a COMMIT caught on it waits for its group, and would otherwise
                # wait out call_timeout for a rejoin that waits for it.
                await asyncio.sleep(max(0.0, until - time.monotonic()))
                back = time.monotonic()
                await asyncio.to_thread(galera.isolate_node, victim, False)
                await writers
            rounds.append(
                {
                    "node": f"{action} {victim}",
                    "acked": len(ledger.acked) - acked_before,
                    "unacknowledged": len(ledger.failed) + len(ledger.refused) - failed_before,
                    "rejoin_s": round(time.monotonic() - back, 1),
                }
            )
    # Read back through the node never disrupted, then through each rejoined node.
    audits = [await _audit(urls[2:], sessions, ledger)]
    audits += [await _audit([urls[node], urls[2]], sessions, ledger) for node in (0, 1)]
    for audit in audits:
        assert (audit.lost, audit.duplicated, audit.invented, audit.bad_sequences) == (0, 0, 0, 0)
    assert all(isinstance(item["acked"], int) and item["acked"] > 0 for item in rounds)
    assert all("did not answer" not in error for error in ledger.errors), ledger.errors[:3]
    record(
        "nodes killed / cut off mid-workload (kill 0, kill 1, isolate 0)",
        acked=len(ledger.acked),
        lost=audits[0].lost,
        outcome_unknown_calls=len(ledger.failed),
        not_committed_calls=len(ledger.refused),
        stored=audits[0].stored,
        rounds=rounds,
        errors=dict(Counter(error.split(": ", 1)[-1][:90] for error in ledger.errors)),
    )


_MIGRATE = """
import asyncio, sys
import mofa_persist

async def main(url):
    store = await mofa_persist.connect(url)
    await store.close()

asyncio.run(main(sys.argv[1]))
"""


def test_first_connects_on_every_node_at_once_migrate_once(
    galera: GaleraCluster, cluster_db: str
) -> None:
    """Six processes, two per node, bring a fresh database to head at the same moment."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, galera.url(index % galera.nodes, cluster_db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(6)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, outputs

    async def check(node: int) -> tuple[list[str], list[tuple[str, str | None]]]:
        url = [galera.url(node, cluster_db), galera.url((node + 1) % galera.nodes, cluster_db)]
        async with await mofa_persist.connect(url, migrate=False) as store:
            async with store.engine.connect() as conn:
                versions = [
                    row[0]
                    for row in await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                ]
                lease = [
                    (row[0], row[1])
                    for row in await conn.exec_driver_sql(f"SELECT name, holder FROM {LOCK_TABLE}")
                ]
            session = await store.create_session(title="schema works")
            await store.append_message(session.id, "user", "hi")
        return versions, lease

    for node in range(galera.nodes):
        versions, lease = asyncio.run(check(node))
        assert versions == [head_revision()]
        assert lease == [("migrate", None)]
