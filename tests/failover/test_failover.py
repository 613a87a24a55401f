"""Automatic failover under load: Patroni promotes the synchronous standby after a node loss.

Agents (tasks sharing one ``Store`` whose URL names both nodes) append messages and record
turns on a few sessions. The primary's node is lost mid-workload: Patroni and every
PostgreSQL process there get SIGKILL together, as when a machine dies. (Killing the
postmaster alone is not a failover: Patroni, still holding the leader key, restarts it in
place.) Once the leader key expires, Patroni promotes the standby; the same store, never
restarted, reconnects to it because it skips nodes that refuse writes.

Every call ends one of four ways: acknowledged, a typed error saying nothing was committed,
a typed error with ``outcome_unknown``, or (a bug) anything else. Checked afterwards on the
promoted node: every acknowledged write is there, no refused one is, each turn is whole or
absent, and each session's ``seq`` runs 1..n without gaps.

Appends carry no idempotency key, so concurrent appends to one session may share a group
commit; turns carry one, and the turns whose outcome was unknown are retried with it at the
end (each must then be stored once). An unknown append is only read back, as an application
without keys would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pytest
from figures import record
from rootconf import admin, selected_backends

import mofa_persist

if TYPE_CHECKING:
    from patroni_cluster import PatroniCluster, PatroniNode

pytestmark = pytest.mark.skipif(
    "postgresql" not in selected_backends(), reason="PostgreSQL is not among MOFA_TEST_BACKENDS"
)

SESSIONS = 3
WRITERS_PER_SESSION = 3
#: Writing before the kill, and after the first write the promoted node acknowledged.
BEFORE_KILL_S, AFTER_RECOVERY_S = 2.0, 2.0
#: The most a failover may take before the test gives up (Patroni's TTL is 10 s).
RECOVERY_LIMIT_S = 60.0
#: What an agent waits after a failed call before its next one.
BACKOFF_S = 0.1

Outcome = Literal["acked", "not_committed", "unknown", "raw"]


@dataclass
class Call:
    """One append_message or record_turn call, its idempotency key (turns only) and how it
    ended."""

    sid: uuid.UUID
    key: str | None
    kind: Literal["append", "turn"]
    contents: tuple[str, ...]
    started: float
    finished: float = 0.0
    outcome: Outcome = "raw"
    error: str = ""
    message: str = ""


@dataclass
class Workload:
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    killed_at: float | None = None
    first_ack_after_kill: float | None = None


async def issue(store: mofa_persist.Store, call: Call) -> None:
    """Make the call; a retry of it (same key, same payload) stores nothing twice."""
    if call.kind == "append":
        await store.append_message(call.sid, "user", call.contents[0], idempotency_key=call.key)
        return
    question, answer = call.contents
    await store.record_turn(
        call.sid,
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        state={"turn": call.key},
        idempotency_key=call.key,
    )


async def agent(store: mofa_persist.Store, sid: uuid.UUID, tag: str, work: Workload) -> None:
    """Alternate appends and two-message turns (with a state snapshot) until told to stop."""
    n = 0
    while not work.stop.is_set():
        n += 1
        name, now = f"{tag}-{n}", time.monotonic()
        if n % 2:
            call = Call(sid, None, "append", (name,), now)
        else:
            call = Call(sid, name, "turn", (f"{name}-q", f"{name}-a"), now)
        work.calls.append(call)
        try:
            await issue(store, call)
        except mofa_persist.PersistenceError as error:
            call.outcome = (
                "unknown" if getattr(error, "outcome_unknown", False) else "not_committed"
            )
            call.error = type(error).__name__
            call.message = str(error)
        except Exception as error:  # a raw driver exception: the test fails on it below
            call.error = f"{type(error).__module__}.{type(error).__name__}: {error}"
        else:
            call.outcome = "acked"
        call.finished = time.monotonic()
        if call.outcome == "acked":
            killed = work.killed_at
            if killed is not None and call.started > killed and work.first_ack_after_kill is None:
                work.first_ack_after_kill = call.finished
        else:
            await asyncio.sleep(BACKOFF_S)


async def read_back(store: mofa_persist.Store, sessions: list[uuid.UUID]) -> set[str]:
    """Every stored message content; each session's seq must run 1..n, nothing twice."""
    contents: list[str] = []
    for sid in sessions:
        rows = await store.get_messages(sid)
        assert [m.seq for m in rows] == list(range(1, len(rows) + 1)), "a seq gap"
        contents += [m.content for m in rows]
        state = await store.load_state(sid)
        assert state is not None and f"{state.state['turn']}-q" in contents, "a torn turn"
    assert len(set(contents)) == len(contents), "a message was stored twice"
    return set(contents)


def reason(message: str) -> str:
    """A failure in a few words: the driver's error per node tried, or the message's start."""
    per_node = re.findall(r"127\.0\.0\.1:\d+: (\w+)", message)
    return " / ".join(per_node) if per_node else message.split("): ", 1)[-1][:80]


async def watch_promotion(node: PatroniNode, since: float) -> float:
    """Seconds from ``since`` until Patroni reports ``node`` as the writable primary."""
    while not await asyncio.to_thread(node.is_primary):
        assert time.monotonic() - since < RECOVERY_LIMIT_S, "Patroni promoted no standby"
        await asyncio.sleep(0.1)
    return time.monotonic() - since


async def test_node_loss_loses_no_acknowledged_write(ha_cluster: PatroniCluster) -> None:
    old = ha_cluster.primary()
    (standby,) = ha_cluster.others(old)
    assert standby.is_sync_standby()
    database = f"mofa_failover_{uuid.uuid4().hex[:8]}"
    await admin(old.url("postgres"), [f'CREATE DATABASE "{database}"'])
    url = ha_cluster.multi_host_url(database)
    work = Workload()

    async with await mofa_persist.connect(url, connect_timeout=3) as store:
        sessions = [(await store.create_session(title=f"agent {n}")).id for n in range(SESSIONS)]
        agents = [
            asyncio.create_task(agent(store, sid, f"s{s}w{w}", work))
            for s, sid in enumerate(sessions)
            for w in range(WRITERS_PER_SESSION)
        ]
        try:
            await asyncio.sleep(BEFORE_KILL_S)
            kill_started = time.monotonic()
            await asyncio.to_thread(old.kill)
            work.killed_at = time.monotonic()
            promoted_s = await watch_promotion(standby, kill_started)
            while work.first_ack_after_kill is None:
                assert time.monotonic() - kill_started < RECOVERY_LIMIT_S, "no write succeeded"
                await asyncio.sleep(0.05)
            await asyncio.sleep(AFTER_RECOVERY_S)
        finally:
            work.stop.set()
            done = await asyncio.gather(*agents, return_exceptions=True)
        assert not [result for result in done if result is not None]
        # The same store, not restarted, reads everything back from the promoted node.
        stored = await read_back(store, sessions)
        # What an application does with an unknown outcome: the same call, the same key.
        unknown = [c for c in work.calls if c.outcome == "unknown" and c.key is not None]
        for call in unknown:
            await issue(store, call)
        resolved = await read_back(store, sessions)
    assert standby.is_primary() and not old.is_primary()

    raw = [call.error for call in work.calls if call.outcome == "raw"]
    assert not raw, f"raw (untyped) exceptions reached the caller: {raw[:5]}"
    by_outcome: dict[Outcome, list[Call]] = {"acked": [], "not_committed": [], "unknown": []}
    for call in work.calls:
        by_outcome[call.outcome].append(call)
        kept = sum(content in stored for content in call.contents)
        assert kept in (0, len(call.contents)), f"a turn was stored in part: {call.contents}"
    lost = [call for call in by_outcome["acked"] if call.contents[0] not in stored]
    assert not lost, f"{len(lost)} acknowledged writes lost: {[c.contents for c in lost[:5]]}"
    phantom = [call for call in by_outcome["not_committed"] if call.contents[0] in stored]
    assert not phantom, "a call that said 'not committed' was stored"
    known = {content for call in work.calls for content in call.contents}
    assert stored <= known
    # Retried with their keys, the unknown turns are now stored once each; nothing else moved.
    assert resolved == stored | {content for call in unknown for content in call.contents}
    from_unknown = [call for call in by_outcome["unknown"] if call.contents[0] in stored]
    stored_calls = sum(1 for call in work.calls if call.contents[0] in stored)
    assert stored_calls == len(by_outcome["acked"]) + len(from_unknown)

    assert work.killed_at is not None and work.first_ack_after_kill is not None
    after = [c for c in by_outcome["acked"] if c.started > work.killed_at]
    errors = Counter(call.error for call in work.calls if call.outcome != "acked")
    reasons = Counter(reason(call.message) for call in work.calls if call.outcome != "acked")
    # Why calls still failed once Patroni had promoted the standby (normally a few that
    # raced the promotion): the first reasons, node addresses and database masked.
    promoted_at = kill_started + promoted_s
    late = Counter(
        reason(call.message)
        for call in work.calls
        if call.outcome != "acked" and call.started > promoted_at
    )
    record(
        "automatic failover (Patroni + etcd, synchronous standby; primary node SIGKILLed)",
        agents=len(agents),
        sessions=SESSIONS,
        calls=len(work.calls),
        acked=len(by_outcome["acked"]),
        acked_lost=len(lost),
        typed_failures=len(by_outcome["not_committed"]) + len(by_outcome["unknown"]),
        not_committed=len(by_outcome["not_committed"]),
        outcome_unknown=len(by_outcome["unknown"]),
        outcome_unknown_stored=len(from_unknown),
        unknown_turns_retried_with_key=len(unknown),
        raw_errors=len(raw),
        error_types=dict(errors),
        reasons=dict(reasons.most_common(4)),
        stored_calls=stored_calls,
        stored_messages=len(stored),
        kill_to_promotion_s=round(promoted_s, 2),
        kill_to_first_write_s=round(work.first_ack_after_kill - kill_started, 2),
        acked_after_failover=len(after),
        slowest_call_s=round(max(call.finished - call.started for call in work.calls), 2),
        failed_after_promotion=sum(late.values()),
        reasons_after_promotion=dict(late.most_common(3)),
    )
    with contextlib.suppress(Exception):
        await admin(standby.url("postgres"), [f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'])
