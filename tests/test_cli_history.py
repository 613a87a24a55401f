"""The CLI's history commands, ``rewind`` and ``fork`` (and ``sessions --parent``), run as a
user runs them, on every SQL dialect.

Every test makes a tenant of its own (random ids) in the run's shared database, and reads and
writes only inside it. ``conversation`` gives a session four turns: messages at seq 1 to 8 (a
user question and an assistant answer per turn) and state versions 1 to 4 saved with the turns,
at seq 2, 4, 6 and 8.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from conftest import selected_backends
from test_cli import assert_one_line_error, run, run_json

import mofa_persist

SQL_DIALECTS = [name for name in selected_backends() if name != "memory"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
on_sql = pytest.mark.parametrize("backend", SQL_DIALECTS)


class Conversation:
    """A tenant, its user and one session of four turns (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tenant = uuid.uuid4()
        self.user = uuid.uuid4()
        self.session = asyncio.run(self._create())

    async def _create(self) -> uuid.UUID:
        async with await mofa_persist.connect(self.url) as store:
            session = await store.create_session(
                tenant_id=self.tenant, user_id=self.user, title="plan", metadata={"k": [1, 2.5]}
            )
            for step in range(1, 5):
                await store.record_turn(
                    session.id,
                    [
                        {"role": "user", "content": f"q{step} ✓", "metadata": {"n": step}},
                        {"role": "assistant", "content": f"a{step}"},
                    ],
                    state={"step": step},
                )
            return session.id

    @property
    def sid(self) -> str:
        return str(self.session)

    def args(self, *more: str) -> tuple[str, ...]:
        """``more`` with this tenant's view and the database URL."""
        return (*more, "--tenant", str(self.tenant), "--url", self.url)

    def show(self, session: str | None = None) -> dict[str, Any]:
        shown: dict[str, Any] = run_json("show", *self.args(session or self.sid))
        return shown

    def append(self, session: str | None = None) -> int:
        async def write() -> int:
            async with await mofa_persist.connect(self.url) as store:
                message = await store.append_message(session or self.sid, "user", "next")
                return message.seq

        return asyncio.run(write())


def seqs(shown: dict[str, Any]) -> list[int]:
    return [message["seq"] for message in shown["messages"]]


def transcript(shown: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a copy must keep of each message (a copy has its own ids and session id)."""
    return [
        (m["seq"], m["role"], m["content"], m["metadata"], m["created_at"])
        for m in shown["messages"]
    ]


# ---------------------------------------------------------------------- rewind


@on_sql
def test_rewind_cuts_the_session_and_the_next_message_follows_the_cut(database_url: str) -> None:
    talk = Conversation(database_url)
    result = run_json("rewind", *talk.args(talk.sid, "--to-seq", "4", "--yes"))
    assert result["session_id"] == talk.sid
    assert (result["last_seq"], result["messages_deleted"]) == (4, 4)
    assert seqs(talk.show()) == [1, 2, 3, 4]
    assert talk.append() == 5  # the next append gets to_seq + 1: no gap, no reuse clash

    text = run("rewind", *talk.args(talk.sid, "--to-seq", "2", "--yes")).stdout
    assert text.startswith(f"rewound session {talk.sid} to seq 2: deleted 3 messages and ")
    assert "the next message gets seq 3" in text
    assert talk.append() == 3
    assert seqs(talk.show()) == [1, 2, 3]
    assert (
        run_json("rewind", *talk.args(talk.sid, "--to-seq", "3", "--yes"))["messages_deleted"] == 0
    )  # already there: nothing to delete, not an error
    emptied = run_json("rewind", *talk.args(talk.sid, "--to-seq", "0", "--yes"))
    assert (emptied["last_seq"], emptied["messages_deleted"]) == (0, 3)
    assert talk.append() == 1


@on_sql
def test_rewind_drops_the_states_saved_after_the_cut(database_url: str) -> None:
    talk = Conversation(database_url)
    result = run_json("rewind", *talk.args(talk.sid, "--to-seq", "4", "--yes"))
    assert (result["state_version"], result["states_deleted"]) == (2, 2)
    state = talk.show()["state"]
    assert (state["version"], state["state"], state["at_seq"]) == (2, {"step": 2}, 4)


@on_sql
def test_rewind_refusals_are_one_line_and_change_nothing(database_url: str) -> None:
    talk = Conversation(database_url)
    beyond = run("rewind", *talk.args(talk.sid, "--to-seq", "9", "--yes"), ok=False)
    assert_one_line_error(beyond, f"to_seq 9 is beyond session {talk.sid}'s last seq 8")

    # Not a terminal and no --yes: refused before anything is read or deleted.
    unconfirmed = run("rewind", *talk.args(talk.sid, "--to-seq", "1"), ok=False)
    assert_one_line_error(unconfirmed, "pass --yes to confirm")

    # Another tenant's view does not hold the session: "not found", as for a made-up id.
    other = run(
        "rewind", talk.sid, "--to-seq", "1", "--yes", "--tenant", str(uuid.uuid4()),
        "--url", database_url, ok=False,
    )  # fmt: skip
    assert_one_line_error(other, f"session {talk.sid} not found")
    # Without --tenant, --user is a filter: another user's session is not found either.
    stranger = run(
        "rewind", talk.sid, "--to-seq", "1", "--yes", "--user", str(uuid.uuid4()),
        "--url", database_url, ok=False,
    )  # fmt: skip
    assert_one_line_error(stranger, f"session {talk.sid} not found")
    made_up = str(uuid.uuid4())
    assert_one_line_error(
        run("rewind", *talk.args(made_up, "--to-seq", "0", "--yes"), ok=False),
        f"session {made_up} not found",
    )
    assert_one_line_error(
        run("rewind", *talk.args("nope", "--to-seq", "0", "--yes"), ok=False),
        "session_id is not a valid UUID",
    )
    assert run("rewind", *talk.args(talk.sid, "--yes"), ok=False).exit_code == 2  # no --to-seq
    negative = run("rewind", *talk.args(talk.sid, "--to-seq", "-1", "--yes"), ok=False)
    assert negative.exit_code == 2
    assert seqs(talk.show()) == list(range(1, 9))


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal (pty)")
def test_rewind_asks_on_a_terminal(tmp_path: Any) -> None:
    """On a terminal, rewind says what it will delete and asks; "n" keeps everything."""
    url = f"sqlite://{tmp_path / 'ask.db'}"
    talk = Conversation(url)
    declined = _answer("n", "rewind", *talk.args(talk.sid, "--to-seq", "6"))
    assert declined.returncode == 1
    assert f"Rewind session {talk.sid} of sqlite" in declined.stdout
    assert "to seq 6, deleting its messages seq 7 to 8 and the states saved after seq 6?" in (
        declined.stdout
    )
    assert seqs(talk.show()) == list(range(1, 9))
    beyond = _answer("y", "rewind", *talk.args(talk.sid, "--to-seq", "9"))
    assert beyond.returncode == 1
    assert "Rewind session" not in beyond.stdout  # refused before asking
    assert beyond.stderr.strip().startswith("error: to_seq 9 is beyond")
    accepted = _answer("y", "rewind", *talk.args(talk.sid, "--to-seq", "6"))
    assert accepted.returncode == 0, accepted.stderr
    assert f"rewound session {talk.sid} to seq 6: deleted 2 messages" in accepted.stdout
    assert seqs(talk.show()) == list(range(1, 7))


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


# ---------------------------------------------------------------------- fork


@on_sql
def test_fork_at_seq_copies_exactly_and_sessions_parent_lists_it(database_url: str) -> None:
    talk = Conversation(database_url)
    before = talk.show()
    forked = run("fork", *talk.args(talk.sid, "--at-seq", "4", "--title", "plan B"))
    fork_id = forked.stdout.strip()
    assert str(uuid.UUID(fork_id)) == fork_id  # stdout is the new id alone, for scripts
    assert f"forked session {talk.sid} at seq 4 into {fork_id}" in forked.stderr

    copy = talk.show(fork_id)
    assert transcript(copy) == transcript(before)[:4]
    assert {m["id"] for m in copy["messages"]}.isdisjoint(m["id"] for m in before["messages"])
    session = copy["session"]
    assert (session["title"], session["last_seq"]) == ("plan B", 4)
    assert (session["tenant_id"], session["user_id"]) == (str(talk.tenant), str(talk.user))
    assert session["metadata"] == {"k": [1, 2.5]}
    assert talk.show() == before  # the original is untouched
    assert talk.append(fork_id) == 5  # the fork goes on from its own seq

    whole = run_json("fork", *talk.args(talk.sid))
    assert (whole["last_seq"], whole["forked_at_seq"], whole["title"]) == (8, 8, "plan")
    assert whole["parent_session_id"] == talk.sid
    assert transcript(talk.show(whole["id"])) == transcript(before)

    listed = run_json("sessions", *talk.args("--parent", talk.sid))["sessions"]
    assert sorted(item["id"] for item in listed) == sorted([fork_id, whole["id"]])
    assert run_json("sessions", *talk.args("--parent", whole["id"]))["sessions"] == []
    table = run("sessions", *talk.args("--parent", talk.sid)).stdout
    assert fork_id in table
    assert talk.sid not in table

    beyond = run("fork", *talk.args(talk.sid, "--at-seq", "9"), ok=False)
    assert_one_line_error(beyond, f"at_seq 9 is beyond session {talk.sid}'s last seq 8")
    other = run("fork", talk.sid, "--tenant", str(uuid.uuid4()), "--url", database_url, ok=False)
    assert_one_line_error(other, f"session {talk.sid} not found")
    assert_one_line_error(
        run("sessions", *talk.args("--parent", "nope"), ok=False), "--parent is not a valid UUID"
    )
    assert len(run_json("sessions", *talk.args())["sessions"]) == 3  # no fork was half-made


@on_sql
def test_a_fork_carries_the_states_saved_by_its_seq(database_url: str) -> None:
    talk = Conversation(database_url)
    fork = run_json("fork", *talk.args(talk.sid, "--at-seq", "4"))
    assert fork["state_version"] == 2
    state = talk.show(fork["id"])["state"]
    assert (state["version"], state["state"], state["at_seq"]) == (2, {"step": 2}, 4)


@on_sql
def test_show_and_sessions_tell_a_fork_by_its_origin(database_url: str) -> None:
    talk = Conversation(database_url)
    fork_id = run("fork", *talk.args(talk.sid, "--at-seq", "4")).stdout.strip()
    text = run("show", *talk.args(fork_id)).stdout
    assert f"fork of  {talk.sid} at seq 4" in text
    assert "fork of" not in run("show", *talk.args(talk.sid)).stdout
    session = talk.show(fork_id)["session"]
    assert (session["parent_session_id"], session["forked_at_seq"]) == (talk.sid, 4)
    (listed,) = run_json("sessions", *talk.args("--parent", talk.sid))["sessions"]
    assert (listed["parent_session_id"], listed["forked_at_seq"]) == (talk.sid, 4)
    table = run("sessions", *talk.args("--parent", talk.sid)).stdout
    assert f"{talk.sid[:8]}@4" in table
