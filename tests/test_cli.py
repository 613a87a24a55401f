"""The ``mofa-persist`` command, in-process (Typer's runner), on every SQL dialect.

The commands refuse a URL that stores nothing (``memory://``, an empty SQLite path): see
``test_cli_hardening``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from conftest import create_database, drop_database, selected_backends
from test_transfer import seed
from typer.testing import CliRunner

import mofa_persist
from mofa_persist.cli import app
from mofa_persist.migrate import head_revision

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from typer.testing import Result

BACKENDS = selected_backends()
SQL_DIALECTS = [name for name in BACKENDS if name != "memory"]
SQL_PAIRS = [(a, b) for a in SQL_DIALECTS for b in SQL_DIALECTS]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(app, list(args), env={"DATABASE_URL": "", "COLUMNS": "200"})
    if ok:
        assert result.exit_code == 0, result.output
    return result


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


def assert_one_line_error(result: Result, fragment: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output


async def _seed(url: str, tenant: uuid.UUID, sessions: int = 3) -> list[uuid.UUID]:
    async with await mofa_persist.connect(url) as store:
        return await seed(store, tenant, sessions)


@pytest.fixture
def sql_url(
    request: pytest.FixtureRequest, server_databases: dict[str, str], tmp_path: Path
) -> str:
    dialect: str = request.param
    if dialect == "sqlite":
        return f"sqlite://{tmp_path / 'cli.db'}"
    if dialect not in server_databases:
        server_databases[dialect] = create_database(dialect)
    return server_databases[dialect]


@pytest.fixture(scope="module")
def second_databases() -> Iterator[dict[str, str]]:
    created: dict[str, str] = {}
    yield created
    for dialect, url in created.items():
        drop_database(dialect, url)


@pytest.fixture
def pair(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    second_databases: dict[str, str],
    tmp_path: Path,
) -> tuple[str, str]:
    source, target = request.param

    def url(dialect: str, second: bool) -> str:
        if dialect == "sqlite":
            return f"sqlite://{tmp_path / ('b.db' if second else 'a.db')}"
        pool = second_databases if second else server_databases
        if dialect not in pool:
            pool[dialect] = create_database(dialect)
        return pool[dialect]

    return url(source, False), url(target, source == target)


@pytest.fixture
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    dialect: str = request.param
    if dialect == "sqlite":
        yield f"sqlite://{tmp_path / 'fresh' / 'new.db'}"
        return
    url = create_database(dialect)
    yield url
    drop_database(dialect, url)


# ---------------------------------------------------------------------- migrations


@pytest.mark.parametrize("fresh_url", SQL_DIALECTS, indirect=True)
def test_upgrade_current_history_downgrade(fresh_url: str) -> None:
    assert run_json("upgrade", "--url", fresh_url) == {
        "direction": "upgrade",
        "from": None,
        "to": head_revision(),
    }
    assert "nothing to do" in run("upgrade", "--url", fresh_url).stdout
    assert run_json("current", "--url", fresh_url) == {
        "current": head_revision(),
        "head": head_revision(),
        "up_to_date": True,
    }
    history = run_json("history", "--url", fresh_url)
    revisions = [row["revision"] for row in history]
    assert revisions[0] == head_revision()  # newest first, however many migrations ship
    assert revisions == sorted(revisions, reverse=True)
    assert revisions[-3:] == ["0003", "0002", "0001"]
    assert history[0]["current"] and history[0]["head"]
    refused = run("downgrade", "0001", "--url", fresh_url, ok=False)
    assert_one_line_error(refused, "pass --yes")
    run("downgrade", "0001", "--url", fresh_url, "--yes")
    assert run_json("current", "--url", fresh_url)["current"] == "0001"
    assert_one_line_error(run("sessions", "--url", fresh_url, ok=False), "schema revision 0001")
    run("downgrade", "base", "--url", fresh_url, "--yes")
    assert run_json("current", "--url", fresh_url)["current"] is None
    assert_one_line_error(run("sessions", "--url", fresh_url, ok=False), "no mofa-persist schema")
    run("upgrade", "--url", fresh_url)
    assert run_json("sessions", "--url", fresh_url)["sessions"] == []


def test_commands_on_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'empty.db'}"
    run("upgrade", "--url", url)
    assert run_json("sessions", "--url", url) == {"sessions": [], "next_cursor": None}
    assert run_json("stats", "--url", url)["totals"]["sessions"] == 0
    exported = run("export", "--all", "--url", url).stdout.split("\n")
    assert json.loads(exported[0])["source"] == "sqlite"
    assert json.loads(exported[1])["counts"]["sessions"] == 0
    path = tmp_path / "empty.jsonl"
    path.write_text("\n".join(exported), encoding="utf-8")
    assert run_json("import", str(path), "--url", url)["conflicts"] == []
    assert run_json("prune", "--older-than", "1d", "--url", url)["sessions"] == 0


# ---------------------------------------------------------------------- inspection


@pytest.mark.parametrize("sql_url", SQL_DIALECTS, indirect=True)
def test_sessions_show_and_stats(sql_url: str) -> None:
    tenant = uuid.uuid4()
    ids = asyncio.run(_seed(sql_url, tenant))
    listed = run_json("sessions", "--tenant", str(tenant), "--limit", "2", "--url", sql_url)
    assert len(listed["sessions"]) == 2
    assert listed["sessions"][0]["id"] == str(ids[-1])  # newest first
    rest = run_json(
        "sessions", "--tenant", str(tenant), "--cursor", listed["next_cursor"], "--url", sql_url
    )
    assert [s["id"] for s in rest["sessions"]] == [str(ids[0])]
    table = run("sessions", "--tenant", str(tenant), "--limit", "2", "--url", sql_url).stdout
    assert str(ids[-1]) in table
    assert "more: --cursor" in table

    shown = run("show", str(ids[0]), "--url", sql_url).stdout
    assert "#1 system" in shown
    assert "#4 tool" in shown
    assert "state v2" in shown
    assert '"ratio": 2.5' in shown
    last = run_json("show", str(ids[0]), "--last", "2", "--url", sql_url)
    assert [m["seq"] for m in last["messages"]] == [3, 4]
    assert last["messages"][0]["role"] == "assistant"
    assert last["state"]["version"] == 2
    assert last["session"]["title"] == "séance 0 🚀"
    markup = "[bold red]not markup[/]"
    asyncio.run(_append(sql_url, ids[0], markup))
    assert markup in run("show", str(ids[0]), "--url", sql_url).stdout

    stats = run_json("stats", "--url", sql_url)
    (mine,) = [row for row in stats["by_tenant"] if row["tenant_id"] == str(tenant)]
    assert (mine["sessions"], mine["messages"], mine["api_calls"], mine["tokens"]) == (3, 13, 7, 45)
    assert run_json("stats", "--since", "2099-01-01", "--url", sql_url)["totals"]["sessions"] == 0
    assert "by tenant" in run("stats", "--since", "1d", "--url", sql_url).stdout


async def _append(url: str, session_id: uuid.UUID, content: str) -> None:
    async with await mofa_persist.connect(url) as store:
        await store.append_message(session_id, "user", content)


# ---------------------------------------------------------------------- export / import / copy


@pytest.mark.parametrize("pair", SQL_PAIRS, indirect=True, ids="-to-".join)
def test_export_import_and_copy_between_dialects(pair: tuple[str, str], tmp_path: Path) -> None:
    source, target = pair
    tenant = uuid.uuid4()
    asyncio.run(_seed(source, tenant))
    out = tmp_path / "out" / "export.jsonl"
    summary = run_json("export", "--tenant", str(tenant), "--out", str(out), "--url", source)
    assert summary["sessions"] == 3
    assert summary["messages"] == 12
    imported = run_json("import", str(out), "--url", target)
    assert imported["inserted"]["messages"] == 12
    assert run_json("import", str(out), "--check", "--url", target)["valid"]
    again = run_json("import", str(out), "--url", target)
    assert again["inserted"] == dict.fromkeys(again["inserted"], 0)
    assert again["unchanged"]["api_calls"] == 7
    back = run("export", "--tenant", str(tenant), "--url", target).stdout
    assert _rows(back) == _rows(out.read_text(encoding="utf-8"))

    # copy: a new tenant's sessions, verified at the end; a second run resumes (skips all).
    other = uuid.uuid4()
    asyncio.run(_seed(source, other, sessions=2))
    copied = run_json("copy", source, target, "--tenant", str(other), "--batch-size", "2")
    assert copied["ok"]
    assert (copied["copied"], copied["verified"], copied["rows"]["messages"]) == (2, 2, 8)
    resumed = run_json("copy", source, target, "--tenant", str(other))
    assert (resumed["copied"], resumed["skipped"], resumed["ok"]) == (0, 2, True)
    text = run("copy", source, target, "--tenant", str(other)).stdout
    assert "2 verified" in text


def _rows(text: str) -> list[str]:
    return [json.dumps(json.loads(line), sort_keys=True) for line in text.split("\n")[1:-1]]


@pytest.mark.parametrize("sql_url", SQL_DIALECTS, indirect=True)
def test_import_conflicts_are_reported_with_exit_code_1(sql_url: str, tmp_path: Path) -> None:
    tenant = uuid.uuid4()
    (first,) = asyncio.run(_seed(sql_url, tenant, sessions=1))
    out = tmp_path / "backup.jsonl"
    run("export", "--session", str(first), "--out", str(out), "--url", sql_url)
    asyncio.run(_append(sql_url, first, "written after the backup"))
    result = run("import", str(out), "--url", sql_url, ok=False)
    assert result.exit_code == 1
    assert f"conflict: session {first}" in result.stdout
    assert result.stderr.strip() == "error: 1 conflicting sessions were not imported"


# ---------------------------------------------------------------------- prune


@pytest.mark.parametrize("sql_url", SQL_DIALECTS, indirect=True)
def test_prune_reports_what_it_removes(sql_url: str) -> None:
    tenant = uuid.uuid4()
    ids = asyncio.run(_seed(sql_url, tenant))
    # Nothing is 30 days old yet.
    assert run_json("prune", "--older-than", "30d", "--url", sql_url)["sessions"] == 0
    dry = run_json("prune", "--older-than", "0s", "--keep-last", "1", "--dry-run", "--url", sql_url)
    assert dry["mode"] == "messages"
    assert dry["dry_run"]
    assert dry["messages"] >= 9
    text = run("prune", "--older-than", "0s", "--keep-last", "1", "--url", sql_url).stdout
    assert text.startswith(f"removed {dry['messages']} messages")
    shown = run_json("show", str(ids[0]), "--url", sql_url)
    assert [m["seq"] for m in shown["messages"]] == [4]
    gone = run_json("prune", "--older-than", "0s", "--dry-run", "--url", sql_url)
    assert gone["sessions"] >= 3
    assert run_json("show", str(ids[0]), "--url", sql_url)["session"]["id"] == str(ids[0])


# ---------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    sqlite = f"sqlite://{tmp_path / 'bad.db'}"
    run("upgrade", "--url", sqlite)
    assert_one_line_error(
        run("sessions", "--url", "postgres://nobody@127.0.0.1:1/none", ok=False),
        "cannot reach the postgresql database at 127.0.0.1:1/none",
    )
    assert_one_line_error(run("sessions", "--url", "oracle://x/y", ok=False), "unknown URL scheme")
    assert_one_line_error(
        run("sessions", "--url", f"sqlite://{tmp_path / 'typo.db'}", ok=False),
        "no SQLite database at",
    )
    assert not (tmp_path / "typo.db").exists()
    unknown = str(uuid.uuid4())
    assert_one_line_error(run("show", unknown, "--url", sqlite, ok=False), f"{unknown} not found")
    assert_one_line_error(run("show", "not-a-uuid", "--url", sqlite, ok=False), "not a valid UUID")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type":"header","format":"mofa-persist","version":1}\n{"type": "nope"}\n')
    assert_one_line_error(
        run("import", str(bad), "--url", sqlite, ok=False), "line 2: unknown type"
    )
    assert_one_line_error(
        run("import", str(tmp_path / "missing.jsonl"), "--url", sqlite, ok=False),
        "No such file or directory",
    )
    assert_one_line_error(run("export", "--url", sqlite, ok=False), "choose what to export", code=2)
    assert_one_line_error(
        run("prune", "--older-than", "soon", "--url", sqlite, ok=False), "is not an age"
    )
    assert_one_line_error(
        run("copy", sqlite, sqlite, ok=False), "source and destination are the same database"
    )
    usage = run("sessions", "--limit", "0", "--url", sqlite, ok=False)
    assert usage.exit_code == 2
    assert "Traceback" not in usage.output


def test_verbose_shows_the_details(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'verbose.db'}"
    run("upgrade", "--url", url)
    result = run("show", str(uuid.uuid4()), "--url", url, "--verbose", ok=False)
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: session")


def test_demo_runs_or_says_why_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "")
    result = CliRunner().invoke(app, ["demo", "--url", f"sqlite://{tmp_path / 'demo.db'}"])
    assert os.environ["DATABASE_URL"] == ""  # the command put it back
    try:
        import mofa_persist.demo  # noqa: F401
    except ModuleNotFoundError:
        assert_one_line_error(result, "the demo is not part of this version")
        return
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo.db").exists()


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == f"mofa-persist {mofa_persist.__version__}"
    text = run("--help").stdout
    for command in (
        "upgrade", "downgrade", "current", "history", "sessions", "show", "stats",
        "rewind", "fork", "export", "import", "copy", "prune", "demo",
    ):  # fmt: skip
        assert command in text


def test_demo_without_the_agents_feature_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mofa_persist.demo", None)  # as if it were not installed
    result = CliRunner().invoke(app, ["demo"])
    assert_one_line_error(result, "the demo is not part of this version of mofa-persist")


def test_every_command_but_demo_takes_json_as_the_readme_says() -> None:
    from mofa_persist.cli.app import app

    names = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert len(names) >= 15
    lacking = [name for name in names if "--json" not in run(name, "--help").stdout]
    assert lacking == ["demo"]
