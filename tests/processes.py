"""Signals to a PostgreSQL server and all of its processes, for tests that crash or freeze one.

Every PostgreSQL server process is a child of the postmaster, but each calls ``setsid()``, so
none is in the postmaster's process group: ``killpg()`` on the postmaster reaches it alone
(a "frozen" server whose backends keep answering). The children are found through /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def children_of(parent: int) -> list[int]:
    """The live (not zombie) child processes of ``parent``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = _state_and_parent(entry.name)
            if info is not None and info[0] != "Z" and info[1] == parent:
                found.append(int(entry.name))
    return found


def wait_stopped(pids: list[int], timeout: float = 5) -> None:
    """SIGSTOP takes effect asynchronously: wait until every process shows state T."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            info = _state_and_parent(pid)
            if info is None or info[0] in ("T", "t", "Z", "X"):
                break
            time.sleep(0.005)


def _send(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def signal_tree(parent: int, sig: signal.Signals) -> None:
    """Send SIGSTOP, SIGCONT or SIGKILL to ``parent`` and every child it has.

    The parent is stopped first so that it forks nothing missed here; for SIGKILL the
    children go before the parent, whose death would hide who they belong to.
    """
    if sig == signal.SIGCONT:
        _send([*children_of(parent), parent], sig)
        return
    _send([parent], signal.SIGSTOP)
    wait_stopped([parent])
    children = children_of(parent)
    _send(children, sig)
    if sig == signal.SIGSTOP:
        wait_stopped(children)
    else:
        _send([parent], sig)
