"""SIGKILL a writer in the middle of append_messages / record_turn, again and again.

Afterwards the database holds only whole batches and whole turns (messages with their state
snapshot), every acknowledged one of them, and ``seq`` still runs 1..N without gaps.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest
import tally
from common import backend_of, message_rows, read_log, state_rows

import mofa_persist

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Zygote


async def _wait_for_acks(log: Path, wanted: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if sum(1 for record in read_log(log) if record["event"] == "ack") >= wanted:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the writer logged fewer than {wanted} acks: {read_log(log)[-3:]}")


async def _crash_runs(url: str, tmp_path: Path, zygote: Zygote, runs: int, check: str) -> None:
    rng = random.Random(7)
    async with await mofa_persist.connect(url) as store:
        sessions = {mode: (await store.create_session()).id for mode in ("append", "turn")}
    acked: dict[str, set[str]] = {"append": set(), "turn": set()}
    for run in range(runs):
        mode = "append" if run % 2 == 0 else "turn"
        log = tmp_path / f"crash-{run}.log"
        pid = zygote.spawn(
            "crash", url=url, sid=str(sessions[mode]), out=str(log), mode=mode, seed=run
        )
        try:
            # Let it get going, then kill it at a random moment of a write.
            await _wait_for_acks(log, 1 + run % 3, time.monotonic() + 60)
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            os.kill(pid, signal.SIGKILL)
        finally:
            status = zygote.wait(pid)
        assert status == -signal.SIGKILL, f"run {run}: the writer ended by itself ({status})"
        acked[mode] |= {r["batch"] for r in read_log(log) if r["event"] == "ack"}

    async with await mofa_persist.connect(url, migrate=False) as store:
        whole = 0
        for mode, sid in sessions.items():
            rows = await message_rows(store, sid)
            assert [row.seq for row in rows] == list(range(1, len(rows) + 1)), "seq has gaps"
            batches: dict[str, list[int]] = defaultdict(list)
            for row in rows:
                name, index, size, _ = row.content.split("|", 3)
                assert row.metadata == {"batch": name, "i": int(index), "n": int(size)}
                batches[name].append(int(index))
            for name, indexes in batches.items():
                size = int(
                    next(r for r in rows if r.content.startswith(name + "|")).content.split("|")[2]
                )
                assert indexes == list(range(size)), f"batch {name} is partial: {indexes}"
            missing = acked[mode] - set(batches)
            assert not missing, f"acknowledged {mode} batches lost: {sorted(missing)[:5]}"
            if mode == "turn":
                states = await state_rows(store, sid)
                assert [row.version for row in states] == list(range(1, len(states) + 1))
                turns = {row.state["batch"]: row.state["n"] for row in states}
                # A turn's messages and its state are one unit: both or neither.
                assert set(turns) == set(batches)
                assert all(len(batches[name]) == size for name, size in turns.items())
            else:
                assert await state_rows(store, sid) == []
            whole += len(batches)
    tally.add(
        check,
        backend_of(url),
        sigkill_runs=runs,
        whole_batches=whole,
        acknowledged=len(acked["append"]) + len(acked["turn"]),
        partial=0,
        lost=0,
    )


async def test_sigkill_mid_write_leaves_only_whole_batches_and_turns(
    shared_url: str, tmp_path: Path, zygote: Zygote
) -> None:
    await _crash_runs(shared_url, tmp_path, zygote, runs=20, check="sigkill")


@pytest.mark.soak
async def test_soak_sigkill_200_runs(shared_url: str, tmp_path: Path, zygote: Zygote) -> None:
    await _crash_runs(shared_url, tmp_path, zygote, runs=200, check="sigkill-soak")
