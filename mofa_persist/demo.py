"""A two-process tour of the agent layer, offline: ``python -m mofa_persist.demo``.

1. This process chats a few turns with an agent (the deterministic ``echo`` provider, so no
   network or API key), then closes it.
2. A second process rebuilds the agent from the same session id and shows what it got back
   from the database: the history and the state. Its next reply shows it was sent that history.
3. Sessions are created, listed, switched and deleted; then the provider usage is summed.

It uses ``DATABASE_URL`` if set, else the SQLite file ``./mofa-demo.db``. Set ``SESSION_ID``
to continue an earlier run's conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .agent import EchoProvider, LLMAgentBuilder
from .errors import PersistenceError
from .urls import parse_url

if TYPE_CHECKING:
    from .agent import LLMAgent
    from .records import Message

DEFAULT_FILE = "mofa-demo.db"
SHOWN = 8  # newest messages printed after the restart
SYSTEM_PROMPT = "You are a helpful assistant. Keep answers short."
TURNS = (
    ("Hi! My name is Ada and I am planning a trip to Lisbon.", {"name": "Ada"}),
    ("I would like to visit in May.", {"month": "May"}),
    ("Please remember that I prefer trains to planes.", {"prefers": "trains"}),
)


def _say(text: str = "", indent: int = 0) -> None:
    print(textwrap.indent(text, " " * indent) if text else "", flush=True)


def _short(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _show_messages(messages: list[Message], indent: int) -> None:
    for message in messages:
        _say(f"#{message.seq:<3} {message.role:<9} {_short(message.content)}", indent)


def _builder(url: str) -> LLMAgentBuilder:
    # from_env() reads USER_ID / TENANT_ID / AGENT_ID (stable defaults when unset); the
    # provider and the database are fixed here so the demo is always offline.
    return (
        LLMAgentBuilder.from_env()
        .with_database_url(url)
        .with_provider(EchoProvider())
        .with_model(EchoProvider.default_model)
        .with_system_prompt(SYSTEM_PROMPT)
        .with_context_window(20)
    )


async def _chat(agent: LLMAgent, text: str, indent: int = 2) -> None:
    _say(f"you   > {text}", indent)
    reply = await agent.chat(text)
    _say(f"agent > {reply}", indent)


async def first_process(url: str, session_id: str | None) -> str:
    builder = _builder(url)
    if session_id:
        builder.with_session_id(session_id)
    async with await builder.with_initial_state({"turns": 0}).build_async() as agent:
        sid = str(agent.session_id)
        continuing = await agent.history(limit=1)
        if not continuing:
            await agent.store.update_session(agent.session_id, title="Trip to Lisbon")
        _say(
            f"Step 1. Process {os.getpid()} builds an agent and chats "
            + ("(continuing session " if continuing else "in a new session ")
            + f"{sid}{')' if continuing else ''}."
        )
        _say(
            "The echo provider repeats your message and reports how much context it was sent.",
            2,
        )
        _say()
        for text, facts in TURNS:
            agent.state.update(facts)
            agent.state["turns"] = int(agent.state.get("turns", 0)) + 1
            await _chat(agent, text)
        _say()
        _say(
            f"Each turn stored the user message, the reply and the state in one transaction. "
            f"State version {agent.state_version}:",
            2,
        )
        _say(json.dumps(agent.state, sort_keys=True), 4)
    _say("  The agent is closed and this process forgets it; the database remembers.")
    return sid


async def second_process(url: str, session_id: str) -> None:
    """Runs in a fresh interpreter: nothing is shared with the first process but the database."""
    async with await _builder(url).with_session_id(session_id).build_async() as agent:
        history = await agent.history(limit=SHOWN)
        total = await agent.store.count_messages(agent.session_id)
        _say(f"Process {os.getpid()} rebuilt the agent from session id {session_id}.", 2)
        _say(f"Restored history ({total} messages, read from the database):", 2)
        if total > len(history):
            _say(f"... {total - len(history)} older messages not shown", 4)
        _show_messages(history, 4)
        _say(f"Restored state (version {agent.state_version}):", 2)
        _say(json.dumps(agent.state, sort_keys=True), 4)
        _say()
        agent.state["turns"] = int(agent.state.get("turns", 0)) + 1
        await _chat(agent, "Which city and month did I mention, and how do I like to travel?")
        _say(
            "The reply was sent the restored messages as context: the conversation continued.",
            2,
        )


async def sessions_tour(url: str, session_id: str, started: datetime) -> None:
    async with await _builder(url).with_session_id(session_id).build_async() as agent:
        _say("Step 3. Sessions: create, list, switch, delete.")
        other = await agent.create_session(title="Packing list")
        _say(f"created session {other}; it is now current", 2)
        await _chat(agent, "Remind me to pack an umbrella.", 4)
        sessions = await agent.list_sessions()
        _say(f"this user's sessions with this agent ({len(sessions)}, newest activity first):", 2)
        for session in sessions[:5]:
            count = await agent.store.count_messages(session.id)
            title = session.title or "(untitled)"
            _say(f"{session.id}  {_short(title, 20):<20} {count} messages", 4)
        await agent.switch_session(session_id)
        restored = await agent.history(limit=2)
        _say(f"switched back to {session_id}; its newest messages:", 2)
        _show_messages(restored, 4)
        await agent.delete_session(other)
        remaining = {s.id for s in await agent.list_sessions()}
        gone = "gone" if other not in remaining else "STILL LISTED"
        _say(f"deleted {other} (with its messages and state): {gone}", 2)
        _say()
        usage = await agent.store.usage(since=started)
        _say("Step 4. Every provider call of this run was recorded in api_calls:")
        _say(
            f"{usage.calls} calls, {usage.failures} failed, {usage.total_tokens} tokens "
            f"({usage.prompt_tokens} prompt + {usage.completion_tokens} completion), "
            f"p50 latency {usage.latency_p50_ms or 0:.0f} ms",
            2,
        )


async def _run_second_process(url: str, session_id: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mofa_persist.demo", "--resume", session_id, env=env
    )
    if await child.wait() != 0:
        raise SystemExit(f"the second process failed (exit code {child.returncode})")


def _database_url() -> tuple[str, str]:
    """The URL to use and how to describe it to the reader."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        path = Path.cwd() / DEFAULT_FILE
        return f"sqlite:///{path}", f"SQLite file {path} (set DATABASE_URL to use another database)"
    parsed = parse_url(url)
    if parsed.kind == "memory":
        raise SystemExit(
            "DATABASE_URL=memory:// cannot be shared with a second process; unset it to use "
            f"./{DEFAULT_FILE}, or point it at a file or a server"
        )
    return url, f"{parsed.display} (from DATABASE_URL)"


async def main_async(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mofa_persist.demo", description=__doc__)
    parser.add_argument("--resume", metavar="SESSION_ID", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.resume:
        await second_process(os.environ["DATABASE_URL"], args.resume)
        return
    url, where = _database_url()
    started = datetime.now(UTC)
    _say("mofa-persist demo: an LLM agent whose memory survives a restart (offline)")
    _say(f"Database: {where}")
    _say()
    session_id = await first_process(url, os.environ.get("SESSION_ID") or None)
    _say()
    _say("Step 2. A second process starts, knowing only the database URL and the session id.")
    await _run_second_process(url, session_id)
    _say()
    await sessions_tour(url, session_id, started)
    _say()
    _say("Done. To continue this conversation later, run:")
    _say(f"SESSION_ID={session_id} python -m mofa_persist.demo", 2)


def main(argv: list[str] | None = None) -> None:
    try:
        asyncio.run(main_async(argv))
    except PersistenceError as error:
        raise SystemExit(f"demo failed: {type(error).__name__}: {error}") from None


if __name__ == "__main__":
    main()
