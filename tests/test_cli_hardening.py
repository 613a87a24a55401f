"""Red-team findings about the CLI (and ``from_env``), each pinned by a test.

- A URL that stores nothing (``sqlite://`` with an empty path, often an unset shell variable;
  ``sqlite://:memory:``; ``memory://``) is refused by every command that reads or writes a
  database, instead of running on a database that vanishes with the command; ``from_env``
  warns about it as about an unset ``DATABASE_URL``.
- ``export --out F`` stopped by SIGTERM removes its temporary file, as Ctrl-C does.
- Read-only commands on a SQLite file that does not exist fail (and do not create it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from conftest import selected_backends
from test_cli import assert_one_line_error, run
from typer.testing import CliRunner

import mofa_persist
from mofa_persist.agent import LLMAgentBuilder
from mofa_persist.cli import app

if TYPE_CHECKING:
    from pathlib import Path

    from typer.testing import Result

SQL_DIALECTS = [name for name in selected_backends() if name != "memory"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: URLs whose database lives only as long as the process that opens it.
STORES_NOTHING = [
    "sqlite://",
    "sqlite:///",  # not memory but the root folder: an empty path all the same
    "sqlite+aiosqlite:///",
    "sqlite://:memory:",
    "sqlite+aiosqlite:///:memory:",
    "memory://",
]
SESSION = str(uuid.uuid4())


def commands(tmp_path: Path) -> dict[str, list[str]]:
    """Every command that reads or writes a database, with arguments it would otherwise
    accept; ``--url`` is added by the test."""
    dump = tmp_path / "dump.jsonl"
    dump.write_text('{"type":"header","format":"mofa-persist","version":2}\n', encoding="utf-8")
    return {
        "upgrade": ["upgrade"],
        "downgrade": ["downgrade", "base", "--yes"],
        "current": ["current"],
        "history": ["history"],
        "sessions": ["sessions"],
        "show": ["show", SESSION],
        "stats": ["stats"],
        "export": ["export", "--all"],
        "import": ["import", str(dump)],
        "import --check": ["import", str(dump), "--check"],
        "prune": ["prune", "--older-than", "30d"],
        "prune --policy": ["prune", "--message-age", "30d"],
        "erase": ["erase", "--user", SESSION, "--yes"],
        "erasures": ["erasures"],
        "rewind": ["rewind", SESSION, "--to-seq", "0", "--yes"],
        "fork": ["fork", SESSION],
    }


def invoke(*args: str, database_url: str = "") -> Result:
    env = {"DATABASE_URL": database_url, "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


# ---------------------------------------------------------------------- URLs that store nothing


@pytest.mark.parametrize("url", STORES_NOTHING)
def test_every_database_command_refuses_a_url_that_stores_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a default sqlite://mofa.db would appear here
    for name, args in commands(tmp_path).items():
        for given, env in (("--url", ""), ("DATABASE_URL", url)):
            result = invoke(*args, *(["--url", url] if given == "--url" else []), database_url=env)
            assert_one_line_error(result, f"{given} {url} ")
            line = result.stderr.strip()
            assert "so nothing would be stored" in line, (name, line)
            assert "sqlite:///abs/path.db" in line, (name, line)  # the form of a file URL
            assert result.stdout == "", name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dump.jsonl"]


def test_an_empty_sqlite_path_is_called_an_unset_variable(tmp_path: Path) -> None:
    said = invoke("upgrade", "--url", "sqlite://").stderr
    assert "has an empty SQLite path (is a shell variable in it unset?)" in said
    assert "is an in-memory database" in invoke("upgrade", "--url", "memory://").stderr
    empty = invoke("sessions", "--url", "")  # --url "$UNSET" is not "no --url"
    assert_one_line_error(empty, "--url is empty (is a shell variable in it unset?)")


@pytest.mark.parametrize("url", ["sqlite://", "memory://"])
def test_copy_refuses_a_url_that_stores_nothing_at_either_end(url: str, tmp_path: Path) -> None:
    real = f"sqlite://{tmp_path / 'real.db'}"
    run("upgrade", "--url", real)
    assert_one_line_error(invoke("copy", url, real), f"SRC_URL {url} ")
    assert_one_line_error(invoke("copy", real, url), f"DST_URL {url} ")


def test_a_file_url_still_works_where_memory_is_refused(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'kept.db'}"
    result = invoke("upgrade", database_url=url)  # from DATABASE_URL, as a deployment sets it
    assert result.exit_code == 0, result.output
    assert (tmp_path / "kept.db").is_file()
    assert invoke("sessions", "--json", database_url=url).exit_code == 0


# ---------------------------------------------------------------------- from_env


@pytest.mark.parametrize("url", ["sqlite://", "sqlite://:memory:", "memory://", None])
async def test_from_env_warns_when_database_url_stores_nothing(
    url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"MOFA_LLM_PROVIDER": "echo"}
    if url is not None:
        env["DATABASE_URL"] = url
    with caplog.at_level(logging.WARNING, logger="mofa_persist.agent"):
        async with await LLMAgentBuilder.from_env(env).build_async():
            pass
    (record,) = [r for r in caplog.records if r.name == "mofa_persist.agent"]
    assert record.levelno == logging.WARNING
    assert "in-process only and is lost on exit" in record.getMessage()
    if url is not None:
        assert f"DATABASE_URL={url} is an in-memory database" in record.getMessage()


async def test_from_env_is_quiet_for_a_file_or_a_memory_url_chosen_in_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"MOFA_LLM_PROVIDER": "echo", "DATABASE_URL": f"sqlite://{tmp_path / 'a.db'}"}
    with caplog.at_level(logging.WARNING, logger="mofa_persist.agent"):
        async with await LLMAgentBuilder.from_env(env).build_async():
            pass
        chosen = LLMAgentBuilder.from_env(
            {"MOFA_LLM_PROVIDER": "echo", "DATABASE_URL": "sqlite://"}
        )
        async with await chosen.with_database_url("memory://").build_async():
            pass
    assert [r for r in caplog.records if r.name == "mofa_persist.agent"] == []


# ---------------------------------------------------------------------- a missing SQLite file


def test_read_only_commands_on_a_missing_sqlite_file_fail_and_do_not_create_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.db"
    url = f"sqlite://{missing}"
    every = commands(tmp_path)
    creators = ("upgrade", "import")  # import (not --check) creates and migrates, by design
    for name, args in every.items():
        if name in creators:
            continue
        result = invoke(*args, "--url", url)
        assert_one_line_error(result, f"no SQLite database at {missing}")
        assert not missing.exists(), name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dump.jsonl"]


def test_current_on_an_existing_database_without_schema_says_base(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'empty.db'}"
    run("upgrade", "--url", url)
    run("downgrade", "base", "--yes", "--url", url)
    assert "base (no schema)" in run("current", "--url", url).stdout


# ---------------------------------------------------------------------- SIGTERM during export


async def _fill(url: str, tenant: uuid.UUID) -> None:
    async with await mofa_persist.connect(url) as store:
        for index in range(4):
            session = await store.create_session(tenant_id=tenant, title=f"s{index}")
            await store.append_messages(
                session.id, [{"role": "user", "content": "x" * 500} for _ in range(250)]
            )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("backend", SQL_DIALECTS)
def test_sigterm_during_export_removes_the_temporary_file(
    database_url: str, tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    asyncio.run(_fill(database_url, tenant))
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "export.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    command = [
        sys.executable, "-m", "mofa_persist.cli", "export", "--tenant", str(tenant),
        "--out", str(out), "--batch-size", "1", "--url", database_url,
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.iterdir()):  # the temporary file beside F
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.01)
        (temporary,) = folder.iterdir()
        assert temporary.name.startswith(".export.jsonl.")
        time.sleep(0.1)  # inside the export: rows are being written
        assert process.poll() is None, "the export finished before it could be stopped"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert stderr.decode().strip().splitlines()[-1] == "error: terminated"
    assert list(folder.iterdir()) == []  # neither the temporary file nor a truncated F
