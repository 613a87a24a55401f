"""Fixtures of the reliability suite: fresh databases per test, private servers, a fork server.

Backends come from ``MOFA_TEST_BACKENDS`` like the conformance suite. Every test that names a
backend gets a database of its own, dropped afterwards. Under ``CI=true`` a server or binary
that is missing fails the test; elsewhere it is skipped with a loud SKIPPED line, never passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rootconf import create_database, drop_database, selected_backends, unavailable
from servers import PrivateMariaDB, PrivatePostgres, ServerUnavailable, private_server

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent
#: Backends that other processes can share: the multi-process tests run on these.
SHARED = [name for name in selected_backends() if name != "memory"]
SERVERS = [name for name in selected_backends() if name in ("postgresql", "mysql")]
ALL = selected_backends()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long reliability runs (nox -s soak)")


def fresh_database(backend: str, folder: Path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite://{folder / 'reliability.db'}"
    return create_database(backend)


def discard_database(backend: str, url: str) -> None:
    if backend in ("postgresql", "mysql"):
        drop_database(backend, url)


def _owned_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database for one test, dropped when the test ends."""
    url = fresh_database(backend, tmp_path)
    try:
        yield url
    finally:
        discard_database(backend, url)


@pytest.fixture(params=SHARED)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database on SQLite (file), PostgreSQL or MySQL, for this test only."""
    yield from _owned_database(request.param, tmp_path)


@pytest.fixture(params=ALL)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``shared_url`` but also in-memory."""
    yield from _owned_database(request.param, tmp_path)


@pytest.fixture(params=SERVERS)
def private(request: pytest.FixtureRequest) -> Iterator[PrivatePostgres | PrivateMariaDB]:
    """A private PostgreSQL or MariaDB of this test's own, started; destroyed afterwards."""
    kind: str = request.param
    try:
        server = private_server(kind)
    except (ServerUnavailable, OSError) as error:
        unavailable(f"private {kind} server", error)
        raise  # unreachable: unavailable() fails or skips
    try:
        server.start()
        yield server
    except ServerUnavailable as error:
        unavailable(f"private {kind} server", error)
    finally:
        server.destroy()


class Zygote:
    """A pre-imported Python process that forks workers on demand (see ``worker.py``).

    Forking skips the ~1 s interpreter and import start-up of each worker, which is what
    makes 20 SIGKILL runs per backend affordable on a 2-core CI machine.
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), "zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.children: set[int] = set()
        assert self._reply() == "ready"

    def _reply(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died (exit {self.process.poll()})")
        return line.strip()

    def _ask(self, *words: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(" ".join(words) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def spawn(self, job: str, **args: Any) -> int:
        """Fork a worker running ``job``; returns its pid."""
        pid = int(self._ask("fork", job, json.dumps(args, separators=(",", ":"))))
        self.children.add(pid)
        return pid

    def wait(self, pid: int) -> int:
        """Reap the worker; its exit code, or minus the signal that killed it."""
        status = int(self._ask("wait", str(pid)))
        self.children.discard(pid)
        return status

    def close(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            self.wait(pid)
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    forker = Zygote()
    try:
        yield forker
    finally:
        forker.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    import tally

    rows = tally.lines()
    if rows:
        terminalreporter.section("reliability counts")
        for row in rows:
            terminalreporter.write_line(row)
