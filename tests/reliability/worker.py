"""Worker processes of the reliability suite.

``python worker.py zygote`` imports everything once, then reads commands on stdin:

- ``fork JOB JSON``: fork a child that runs ``JOB`` with the JSON arguments; replies its pid.
- ``wait PID``: reap that child; replies its exit code (minus the signal if it was killed).

A child has a fresh event loop and its own engine, as a separate program would. Its results
go to the file named by its ``out`` argument, one JSON object per line, written and flushed
after each acknowledged call, so a SIGKILL loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import traceback
from typing import Any

import mofa_persist
from mofa_persist import ConflictError

# Imported here so a forked child never imports a driver after the fork.
try:
    import aiomysql  # noqa: F401
    import asyncpg  # noqa: F401
except ImportError:  # pragma: no cover - the extras are part of the test environment
    pass


class Log:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **record: Any) -> None:
        # One write(2) per record: a kill lands before or after it, never inside.
        os.write(self._fd, (json.dumps(record) + "\n").encode())


def _error(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)[:500]}


async def writers(
    url: str, sid: str, tag: str, writers: int, calls: int, out: str, pool_size: int = 4
) -> None:
    """``writers`` tasks each make ``calls`` writes to one session; every ack is logged."""
    log = Log(out)
    store = await mofa_persist.connect(url, migrate=False, pool_size=pool_size, max_overflow=2)

    async def writer(index: int) -> None:
        for call in range(calls):
            name = f"{tag}-w{index}-c{call}"
            kind = call % 3
            try:
                if kind == 0:
                    message = await store.append_message(sid, "user", name + "-0")
                    stored = [message]
                elif kind == 1:
                    items = [{"role": "assistant", "content": f"{name}-{i}"} for i in range(3)]
                    stored = await store.append_messages(sid, items)
                else:
                    items = [
                        {"role": "user", "content": f"{name}-0"},
                        {"role": "tool", "content": f"{name}-1", "metadata": {"w": index}},
                    ]
                    stored = (await store.record_turn(sid, items)).messages
            except Exception as error:  # every failure is reported, none may happen
                log.write(event="error", call=name, **_error(error))
                continue
            log.write(
                event="ack", contents=[m.content for m in stored], seqs=[m.seq for m in stored]
            )

    try:
        await asyncio.gather(*(writer(index) for index in range(writers)))
    finally:
        await store.close()


async def cas(url: str, sid: str, who: str, target: int, out: str) -> None:
    """Race other processes to move the state from each version to the next with CAS."""
    log = Log(out)
    store = await mofa_persist.connect(url, migrate=False, pool_size=2, max_overflow=0)
    try:
        while True:
            current = await store.load_state(sid)
            version = 0 if current is None else current.version
            if version >= target:
                return
            try:
                saved = await store.save_state(
                    sid, {"who": who, "from": version}, expected_version=version
                )
            except ConflictError:
                log.write(event="conflict", expected=version)
                continue
            except Exception as error:
                log.write(event="error", expected=version, **_error(error))
                continue
            log.write(event="win", expected=version, version=saved.version)
    finally:
        await store.close()


async def crash(url: str, sid: str, out: str, mode: str, seed: int) -> None:
    """Write batches (or turns) until killed; log each acknowledged one."""
    log = Log(out)
    rng = random.Random(seed)
    store = await mofa_persist.connect(url, migrate=False, pool_size=1, max_overflow=0)
    log.write(event="started")
    batch = 0
    while True:
        batch += 1
        size = rng.randint(1, 8)
        name = f"{os.getpid()}.{batch}"
        # Some large contents keep a transaction open long enough to be killed inside it.
        filler = "x" * rng.choice([0, 0, 1000, 200_000])
        items = [
            {
                "role": "user",
                "content": f"{name}|{i}|{size}|{filler}",
                "metadata": {"batch": name, "i": i, "n": size},
            }
            for i in range(size)
        ]
        if mode == "append":
            await store.append_messages(sid, items)
        else:
            await store.record_turn(sid, items, state={"batch": name, "n": size})
        log.write(event="ack", batch=name, n=size)


JOBS = {"writers": writers, "cas": cas, "crash": crash}


def _child(job: str, args: dict[str, Any]) -> None:
    code = 0
    try:
        asyncio.run(JOBS[job](**args))
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def zygote() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split(" ", 2)
        if words[0] == "fork":
            job, raw = words[1], words[2]
            pid = os.fork()
            if pid == 0:
                os.close(sys.stdin.fileno())
                os.dup2(2, 1)  # only the zygote answers on the pipe
                _child(job, json.loads(raw))
            print(pid, flush=True)
        elif words[0] == "wait":
            _, status = os.waitpid(int(words[1]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "zygote":
        zygote()
    else:
        _child(sys.argv[1], json.loads(sys.argv[2]))
