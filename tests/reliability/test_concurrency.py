"""Contention: 50 writers in 4 OS processes append to one session; CAS state saves race.

No acknowledged message may be lost or duplicated, ``seq`` must run 1..N without gaps, and no
error (deadlock, serialization failure, lock timeout, "database is locked") may reach a caller.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import tally
from common import backend_of, message_rows, read_log, state_rows

import mofa_persist
from mofa_persist import ConflictError

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Zygote

WRITERS = 50
PROCESSES = 4
#: Messages written per three calls of a writer: append_message (1), append_messages (3),
#: record_turn (2).
PER_ROUND = 6


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


async def _writers_on_one_session(
    url: str, tmp_path: Path, zygote: Zygote, calls: int, check: str
) -> None:
    async with await mofa_persist.connect(url) as store:
        session = await store.create_session(title="contended")
    logs = [tmp_path / f"writers-{index}.log" for index in range(PROCESSES)]
    pids = [
        zygote.spawn(
            "writers",
            url=url,
            sid=str(session.id),
            tag=f"p{index}",
            writers=count,
            calls=calls,
            out=str(logs[index]),
        )
        for index, count in enumerate(_split(WRITERS, PROCESSES))
    ]
    codes = [zygote.wait(pid) for pid in pids]
    assert codes == [0] * PROCESSES, f"worker exit codes {codes}"

    records = [record for log in logs for record in read_log(log)]
    errors = [record for record in records if record["event"] == "error"]
    acks = [record for record in records if record["event"] == "ack"]
    assert errors == [], f"{len(errors)} calls failed, first: {errors[:3]}"
    assert len(acks) == WRITERS * calls

    acked = {
        content: seq
        for ack in acks
        for content, seq in zip(ack["contents"], ack["seqs"], strict=True)
    }
    expected_total = WRITERS * (calls // 3) * PER_ROUND + WRITERS * [0, 1, 4][calls % 3]
    assert len(acked) == expected_total, "two acknowledged messages share a content or seq"
    async with await mofa_persist.connect(url, migrate=False) as store:
        rows = await message_rows(store, session.id)
        seqs = [row.seq for row in rows]
        stored = {row.content: row.seq for row in rows}
        assert seqs == list(range(1, len(rows) + 1)), "seq is not contiguous from 1"
        assert len(stored) == len(rows), "a message is stored twice"
        lost = set(acked) - set(stored)
        extra = set(stored) - set(acked)
        assert not lost, f"{len(lost)} acknowledged messages lost"
        assert not extra, f"{len(extra)} messages stored that no caller was told about"
        assert stored == acked, "a message is stored at another seq than it was acknowledged"
        # Each batch got consecutive numbers: writers never interleave inside a batch.
        for ack in acks:
            assert ack["seqs"] == list(range(ack["seqs"][0], ack["seqs"][0] + len(ack["seqs"])))
        assert (await store.get_session(session.id)).last_seq == len(rows)
        assert await store.count_messages(session.id) == len(rows)
    tally.add(
        check,
        backend_of(url),
        writers=WRITERS,
        processes=PROCESSES,
        messages=len(rows),
        acknowledged=len(acked),
        lost=len(lost),
        duplicated=len(rows) - len(stored),
        caller_errors=len(errors),
    )


async def test_50_writers_in_4_processes_lose_and_duplicate_nothing(
    shared_url: str, tmp_path: Path, zygote: Zygote
) -> None:
    await _writers_on_one_session(shared_url, tmp_path, zygote, calls=6, check="writers")


@pytest.mark.soak
async def test_soak_50_writers_in_4_processes(
    shared_url: str, tmp_path: Path, zygote: Zygote
) -> None:
    await _writers_on_one_session(shared_url, tmp_path, zygote, calls=90, check="writers-soak")


async def test_concurrent_cas_saves_have_exactly_one_winner_per_version(shared_url: str) -> None:
    """Many tasks save with the same expected_version at once: one wins, the rest conflict."""
    contenders = 12
    versions = 8
    async with await mofa_persist.connect(shared_url, pool_size=contenders) as store:
        session = await store.create_session()
        conflicts = 0
        for version in range(versions):

            async def save(who: int, expected: int = version) -> object:
                return await store.save_state(
                    session.id, {"who": who, "from": expected}, expected_version=expected
                )

            results = await asyncio.gather(
                *(save(who) for who in range(contenders)), return_exceptions=True
            )
            winners = [result for result in results if isinstance(result, mofa_persist.AgentState)]
            others = [
                result for result in results if not isinstance(result, mofa_persist.AgentState)
            ]
            assert len(winners) == 1, f"version {version}: {len(winners)} winners"
            assert all(isinstance(other, ConflictError) for other in others), others
            assert winners[0].version == version + 1
            conflicts += len(others)
        states = await state_rows(store, session.id)
        assert [row.version for row in states] == list(range(1, versions + 1))
        assert [row.state["from"] for row in states] == list(range(versions))
    tally.add(
        "cas-in-process",
        backend_of(shared_url),
        saves=contenders * versions,
        winners=versions,
        conflicts=conflicts,
    )


async def test_cas_race_between_processes(shared_url: str, tmp_path: Path, zygote: Zygote) -> None:
    """4 processes race each version forward with CAS: every version has one winner, whose
    snapshot is the one stored, and every loser got ConflictError (nothing else)."""
    target = 25
    async with await mofa_persist.connect(shared_url) as store:
        session = await store.create_session()
    logs = [tmp_path / f"cas-{index}.log" for index in range(PROCESSES)]
    pids = [
        zygote.spawn(
            "cas",
            url=shared_url,
            sid=str(session.id),
            who=f"p{index}",
            target=target,
            out=str(logs[index]),
        )
        for index in range(PROCESSES)
    ]
    codes = [zygote.wait(pid) for pid in pids]
    assert codes == [0] * PROCESSES
    wins: dict[int, str] = {}
    conflicts = 0
    for index, log in enumerate(logs):
        for record in read_log(log):
            assert record["event"] != "error", record
            if record["event"] == "conflict":
                conflicts += 1
            else:
                assert record["version"] == record["expected"] + 1
                assert record["version"] not in wins, f"version {record['version']} won twice"
                wins[record["version"]] = f"p{index}"
    assert sorted(wins) == list(range(1, target + 1))
    async with await mofa_persist.connect(shared_url, migrate=False) as store:
        states = await state_rows(store, session.id)
    assert [row.version for row in states] == list(range(1, target + 1))
    assert {row.version: row.state["who"] for row in states} == wins
    tally.add("cas-processes", backend_of(shared_url), versions=target, conflicts=conflicts)
