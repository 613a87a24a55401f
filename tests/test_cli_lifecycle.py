"""The CLI side of data lifecycle and isolation: ``--tenant`` views, ``prune --policy``,
``erase`` and ``erasures``, run as a user runs them, on every SQL dialect.

Every test seeds tenants of its own (random ids) in the run's shared database, so the counts
it checks are exact whatever other tests left there; nothing here deletes outside its own
tenants. ``seed`` gives each session 4 messages, 2 states and 2 provider calls (15 tokens),
plus one provider call per tenant whose session was deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from conftest import selected_backends
from sqlalchemy import update
from test_cli import assert_one_line_error, run, run_json
from test_transfer import seed

import mofa_persist
from mofa_persist.models import erasures_table

if TYPE_CHECKING:
    from pathlib import Path

SQL_DIALECTS = [name for name in selected_backends() if name != "memory"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
on_sql = pytest.mark.parametrize("backend", SQL_DIALECTS)

POLICY = """\
[retention]
messages_per_session = 1   # each session keeps its newest message
state_versions = 1
api_call_age = "30d"       # nothing is that old
"""
EMPTY_TOTALS = {"sessions": 0, "messages": 0, "states": 0, "api_calls": 0, "tokens": 0}


def totals(n: int) -> dict[str, int]:
    """What ``seed`` makes for a tenant of ``n`` sessions."""
    return {
        "sessions": n,
        "messages": 4 * n,
        "states": 2 * n,
        "api_calls": 2 * n + 1,
        "tokens": 15 * n,
    }


async def _seed(url: str, tenant: uuid.UUID, sessions: int) -> list[uuid.UUID]:
    async with await mofa_persist.connect(url) as store:
        return await seed(store, tenant, sessions)


def tenants(url: str, *sizes: int) -> list[tuple[str, list[str]]]:
    """New tenants with ``sizes`` sessions each: (tenant id, session ids)."""
    made = []
    for size in sizes:
        tenant = uuid.uuid4()
        ids = asyncio.run(_seed(url, tenant, size))
        made.append((str(tenant), [str(session_id) for session_id in ids]))
    return made


def stats(url: str, tenant: str) -> dict[str, int]:
    result: dict[str, int] = run_json("stats", "--tenant", tenant, "--url", url)["totals"]
    return result


def owner(url: str, session_id: str) -> dict[str, Any]:
    session: dict[str, Any] = run_json("show", session_id, "--url", url)["session"]
    return session


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------- prune --policy


@on_sql
def test_prune_policy_file_dry_run_then_real_run(database_url: str, tmp_path: Path) -> None:
    (a, a_ids), (b, b_ids) = tenants(database_url, 3, 2)
    policy = write(tmp_path / "retention.toml", POLICY)
    expected = {"sessions": 0, "messages": 9, "agent_state": 3, "api_calls": 0}

    dry = run_json("prune", "--policy", policy, "--tenant", a, "--dry-run", "--url", database_url)
    assert dry["dry_run"] is True
    assert dry["counts"] == expected
    assert dry["total"] == 12
    assert dry["view"] == {"tenant_id": a}
    assert dry["policy"] == {"messages_per_session": 1, "state_versions": 1, "api_call_age": "30d"}
    assert stats(database_url, a) == totals(3)  # a dry run deletes nothing

    text = run("prune", "--policy", policy, "--tenant", a, "--url", database_url).stdout
    assert text.startswith(f"deleted 12 rows (tenant {a}); policy: messages_per_session=1")
    rows = {line.split()[1]: line.split()[3] for line in text.splitlines() if line.count("│") == 3}
    assert rows == {
        "sessions": "0",
        "messages": "9",
        "agent_state": "3",
        "api_calls": "0",
        "total": "12",
    }
    assert stats(database_url, a) == {**totals(3), "messages": 3, "states": 3}
    shown = run_json("show", a_ids[0], "--url", database_url)
    assert [m["seq"] for m in shown["messages"]] == [4]  # the newest is kept
    assert shown["state"]["version"] == 2  # and so is the newest state
    assert stats(database_url, b) == totals(2)
    again = run_json("prune", "--policy", policy, "--tenant", a, "--dry-run", "--url", database_url)
    assert again["total"] == 0
    assert len(run_json("show", b_ids[0], "--url", database_url)["messages"]) == 4


@on_sql
def test_rule_options_override_the_policy_file(database_url: str, tmp_path: Path) -> None:
    ((a, _),) = tenants(database_url, 3)
    top_level = write(tmp_path / "p.toml", 'message_age = "365d"\nmessages_per_session = 3\n')
    base = ("prune", "--tenant", a, "--dry-run", "--url", database_url)
    from_file = run_json(*base, "--policy", top_level)
    assert from_file["counts"]["messages"] == 3  # 4 - 3 per session; none is a year old
    overridden = run_json(*base, "--policy", top_level, "--messages-per-session", "2")
    assert overridden["policy"] == {"message_age": "365d", "messages_per_session": 2}
    assert overridden["counts"]["messages"] == 6
    aged = run_json(*base, "--policy", top_level, "--message-age", "0s")
    assert aged["counts"]["messages"] == 12
    flags_only = run_json(*base, "--state-versions", "1", "--api-call-age", "0s")
    assert flags_only["counts"] == {"sessions": 0, "messages": 0, "agent_state": 3, "api_calls": 7}
    idle = run_json(*base, "--idle-session-age", "0s")
    assert idle["counts"] == {"sessions": 3, "messages": 12, "agent_state": 6, "api_calls": 0}
    assert stats(database_url, a) == totals(3)


@on_sql
def test_bad_policies_and_options_are_one_line_and_delete_nothing(
    database_url: str, tmp_path: Path
) -> None:
    ((a, _),) = tenants(database_url, 1)

    def refused(*args: str, fragment: str, code: int = 1) -> None:
        result = run("prune", *args, "--tenant", a, "--url", database_url, ok=False)
        assert_one_line_error(result, fragment, code)

    bad = {
        "broken.toml": ("message_age = ", "is not valid TOML"),
        "typo.toml": ('message_agee = "1d"\n', "unknown retention rule(s) message_agee"),
        "age.toml": ('[retention]\nmessage_age = "soon"\n', "message_age: 'soon' is not an age"),
        "count.toml": ("state_versions = 0\n", "state_versions must be an integer >= 1"),
        "empty.toml": ("# nothing yet\n", "has no rule"),
    }
    for name, (text, fragment) in bad.items():
        refused("--policy", write(tmp_path / name, text), fragment=fragment)
    refused("--policy", str(tmp_path / "missing.toml"), fragment="cannot read policy file")
    refused("--message-age", "soon", fragment="--message-age: 'soon' is not an age")
    refused("--state-versions", "0", fragment="--state-versions: state_versions must be")
    refused("--messages-per-session", "-1", fragment="--messages-per-session: ")
    refused("--older-than", "1d", "--message-age", "1d", fragment="cannot be mixed", code=2)
    refused("--keep-last", "1", "--state-versions", "1", fragment="cannot be mixed", code=2)
    refused("--keep-last", "1", fragment="--keep-last needs --older-than", code=2)
    refused("--dry-run", fragment="say what to prune", code=2)
    no_uuid = run(
        "prune", "--message-age", "0s", "--tenant", "nope", "--url", database_url, ok=False
    )
    assert_one_line_error(no_uuid, "--tenant is not a valid UUID")
    no_view = run("prune", "--message-age", "0s", "--user", a, "--url", database_url, ok=False)
    assert_one_line_error(no_view, "prune --policy takes --user and --agent only with --tenant")
    assert stats(database_url, a) == totals(1)


@on_sql
def test_a_tenant_scoped_prune_leaves_other_tenants_alone(database_url: str) -> None:
    """The bug that started it all: a prune through one tenant's view deleted another
    tenant's messages. Both forms of prune, with every rule at its most eager."""
    (a, a_ids), (b, b_ids) = tenants(database_url, 3, 2)
    old_form = run_json(
        "prune", "--older-than", "0s", "--keep-last", "1", "--tenant", a, "--url", database_url
    )
    assert (old_form["sessions"], old_form["messages"]) == (3, 9)
    assert stats(database_url, b) == totals(2)

    eager = ("--message-age", "0s", "--messages-per-session", "0", "--idle-session-age", "0s")
    eager += ("--state-versions", "1", "--api-call-age", "0s")
    report = run_json("prune", *eager, "--tenant", a, "--url", database_url)
    # Idle sessions go first, whole: nothing is left for the message and state rules.
    assert report["counts"] == {"sessions": 3, "messages": 3, "agent_state": 6, "api_calls": 7}
    assert stats(database_url, a) == EMPTY_TOTALS
    assert stats(database_url, b) == totals(2)
    assert len(run_json("show", b_ids[1], "--url", database_url)["messages"]) == 4
    gone = run("show", a_ids[0], "--url", database_url, ok=False)
    assert_one_line_error(gone, f"session {a_ids[0]} not found")

    # A user's view inside tenant b: only that user's session loses its messages.
    user = owner(database_url, b_ids[0])["user_id"]
    mine = run_json(
        "prune", "--message-age", "0s", "--tenant", b, "--user", user, "--url", database_url
    )
    assert mine["counts"]["messages"] == 4
    assert run_json("show", b_ids[0], "--url", database_url)["messages"] == []
    assert len(run_json("show", b_ids[1], "--url", database_url)["messages"]) == 4


# ---------------------------------------------------------------------- views on other commands


@on_sql
def test_export_stats_sessions_and_show_see_only_their_view(
    database_url: str, tmp_path: Path
) -> None:
    (a, a_ids), (b, b_ids) = tenants(database_url, 3, 2)
    exported = run("export", "--tenant", a, "--url", database_url).stdout
    rows = [json.loads(line) for line in exported.split("\n")[1:-1]]
    sessions = [row["id"] for row in rows if row["type"] == "session"]
    assert sorted(sessions) == sorted(a_ids)
    owned = [row["tenant_id"] for row in rows if row["type"] in ("session", "api_call")]
    assert owned == [a] * 10  # 3 sessions, 6 calls with sessions, 1 without
    assert b not in exported
    assert not any(session_id in exported for session_id in b_ids)

    user = owner(database_url, a_ids[1])["user_id"]
    out = str(tmp_path / "out.jsonl")
    one = run_json("export", "--tenant", a, "--user", user, "--out", out, "--url", database_url)
    assert (one["sessions"], one["messages"]) == (1, 4)
    outside = run_json(
        "export", "--tenant", b, "--session", a_ids[0], "--out", out, "--url", database_url
    )
    assert outside["sessions"] == 0

    assert stats(database_url, a) == totals(3)
    by_tenant = run_json("stats", "--tenant", b, "--url", database_url)["by_tenant"]
    assert [row["tenant_id"] for row in by_tenant] == [b]
    assert run_json("stats", "--user", user, "--url", database_url)["totals"]["messages"] == 4
    listed = run_json("sessions", "--tenant", a, "--user", user, "--url", database_url)
    assert [s["id"] for s in listed["sessions"]] == [a_ids[1]]

    assert (
        run_json("show", a_ids[0], "--tenant", a, "--url", database_url)["session"]["id"]
        == a_ids[0]
    )
    for args in (("--tenant", b), ("--tenant", a, "--user", user), ("--user", user)):
        result = run("show", a_ids[0], *args, "--url", database_url, ok=False)
        assert_one_line_error(result, f"session {a_ids[0]} not found")


@on_sql
def test_copy_and_import_through_a_view(database_url: str, tmp_path: Path) -> None:
    (a, _), (b, _) = tenants(database_url, 2, 1)
    target = f"sqlite://{tmp_path / 'copy.db'}"
    copied = run_json("copy", database_url, target, "--tenant", a)
    assert (copied["ok"], copied["copied"], copied["unattached_calls"]) == (True, 2, 1)
    everything = run_json("stats", "--url", target)
    assert [row["tenant_id"] for row in everything["by_tenant"]] == [a]
    assert everything["totals"] == totals(2)

    backup = tmp_path / "a.jsonl"
    run("export", "--tenant", a, "--out", str(backup), "--url", database_url)
    fresh = f"sqlite://{tmp_path / 'fresh.db'}"
    wrong = run("import", str(backup), "--tenant", b, "--url", fresh, ok=False)
    assert_one_line_error(wrong, "belongs outside the store's view")
    assert run_json("stats", "--url", fresh)["totals"] == EMPTY_TOTALS
    unscoped = run("import", str(backup), "--user", a, "--url", fresh, ok=False)
    assert_one_line_error(unscoped, "import takes --user and --agent only with --tenant")
    assert (
        run_json("import", str(backup), "--tenant", a, "--url", fresh)["inserted"]["sessions"] == 2
    )


# ---------------------------------------------------------------------- erase and erasures


@on_sql
def test_erase_with_yes_and_the_erasures_listing(database_url: str) -> None:
    (a, a_ids), (b, _) = tenants(database_url, 3, 2)
    user = owner(database_url, a_ids[0])["user_id"]
    assert run_json("erasures", "--tenant", a, "--url", database_url) == []

    record = run_json("erase", "--tenant", a, "--user", user, "--yes", "--url", database_url)
    assert record["kind"] == "user"
    assert {
        name: record["counts"][name]
        for name in ("sessions", "messages", "agent_state", "api_calls")
    } == {
        "sessions": 1,
        "messages": 4,
        "agent_state": 2,
        "api_calls": 2,
    }
    assert sum(record["counts"].values()) == 9
    assert record["finished_at"] is not None
    left = run_json("sessions", "--tenant", a, "--url", database_url)["sessions"]
    assert sorted(s["id"] for s in left) == sorted(a_ids[1:])
    assert stats(database_url, b) == totals(2)

    listed = run_json("erasures", "--tenant", a, "--url", database_url)
    assert [(r["id"], r["kind"]) for r in listed] == [(record["id"], "user")]
    assert [r["id"] for r in run_json("erasures", "--user", user, "--url", database_url)] == [
        record["id"]
    ]
    assert run_json("erasures", "--tenant", b, "--url", database_url) == []

    text = run("erase", "--tenant", b, "--yes", "--url", database_url).stdout
    assert text.startswith(f"erased tenant {b}: 19 rows; audit record ")
    erased_id = text.split("audit record ")[1].split()[0]
    assert stats(database_url, b) == EMPTY_TOTALS
    assert stats(database_url, a) == totals(2)  # what the user's erasure left
    (of_b,) = run_json("erasures", "--tenant", b, "--url", database_url)
    assert (of_b["id"], of_b["kind"], of_b["counts"]["sessions"]) == (erased_id, "tenant", 2)

    asyncio.run(_unfinish(database_url, erased_id))
    table = run("erasures", "--tenant", b, "--url", database_url).stdout
    (row,) = [line for line in table.splitlines() if erased_id in line]
    assert of_b["subject_hash"][:12] in row
    assert "tenant" in row
    assert "interrupted" in row
    assert "sessions 2" in row


async def _unfinish(url: str, erasure_id: str) -> None:
    """As an erasure killed half-way leaves its record: no finish time."""
    async with await mofa_persist.connect(url) as store, store.engine.begin() as conn:
        stmt = update(erasures_table).where(erasures_table.c.id == uuid.UUID(erasure_id))
        await conn.execute(stmt.values(finished_at=None))


@on_sql
def test_erase_refuses_without_yes_off_a_terminal_and_bad_subjects(database_url: str) -> None:
    ((a, a_ids),) = tenants(database_url, 1)
    user = owner(database_url, a_ids[0])["user_id"]
    refused = run("erase", "--user", user, "--url", database_url, ok=False)
    assert_one_line_error(refused, f"erase deletes every row of user {user} for good; pass --yes")
    tenant_refused = run("erase", "--tenant", a, "--url", database_url, ok=False)
    assert_one_line_error(tenant_refused, "pass --yes to confirm")
    nobody = run("erase", "--yes", "--url", database_url, ok=False)
    assert_one_line_error(nobody, "say who to erase", 2)
    agent = run("erase", "--user", user, "--agent", a, "--yes", "--url", database_url, ok=False)
    assert_one_line_error(agent, "an erasure covers all of a person's agents", 2)
    bad = run("erase", "--user", "me", "--yes", "--url", database_url, ok=False)
    assert_one_line_error(bad, "--user is not a valid UUID")
    assert stats(database_url, a) == totals(1)
    assert run_json("erasures", "--tenant", a, "--url", database_url) == []


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal (pty)")
def test_erase_asks_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal, erase asks; "n" keeps everything, "y" erases."""
    url = f"sqlite://{tmp_path / 'ask.db'}"
    ((a, a_ids),) = tenants(url, 1)
    user = owner(url, a_ids[0])["user_id"]
    declined = _answer("n", "erase", "--user", user, "--url", url)
    assert declined.returncode == 1
    assert f"Erase every row of user {user} from sqlite" in declined.stdout
    assert "ask.db? It cannot be undone [y/N]" in declined.stdout
    assert stats(url, a) == totals(1)
    accepted = _answer("y", "erase", "--user", user, "--url", url)
    assert accepted.returncode == 0, accepted.stderr
    assert f"erased user {user}: 9 rows; audit record " in accepted.stdout
    assert stats(url, a) == totals(0)  # only the provider call of no session (and no user)


def _answer(reply: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command with a terminal as its stdin, typing ``reply``."""
    import pty  # Unix only

    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    try:
        os.write(leader, f"{reply}\n".encode())
        return subprocess.run(
            [sys.executable, "-m", "mofa_persist.cli", *args],
            stdin=follower,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(follower)
        os.close(leader)


def test_lifecycle_commands_on_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'empty.db'}"
    run("upgrade", "--url", url)
    policy = write(tmp_path / "p.toml", POLICY)
    report = run_json("prune", "--policy", policy, "--url", url)
    assert (report["total"], report["dry_run"]) == (0, False)
    assert run_json("erasures", "--url", url) == []
    record = run_json("erase", "--user", str(uuid.uuid4()), "--yes", "--url", url)
    assert sum(record["counts"].values()) == 0
    assert len(run_json("erasures", "--url", url)) == 1


def test_help_lists_the_lifecycle_commands() -> None:
    text = run("--help").stdout
    assert "erase " in text
    assert "erasures " in text
    assert "--policy" in run("prune", "--help").stdout
