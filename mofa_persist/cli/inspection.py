"""Read-only commands: ``sessions`` (a page of them), ``show`` (one transcript) and ``stats``.

They open the store without creating or migrating anything, and page through long data so a
long transcript is never held whole. Each takes ``--tenant``/``--user``/``--agent`` (see
:mod:`.views`): with ``--tenant`` it reads through that tenant's view only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Column, Table
from rich.text import Text

from .. import transfer
from ..errors import InvalidInputError, NotFoundError
from ..transfer.stats import METRICS
from ..validate import coerce_uuid
from .app import Output, app, checked, execute, on_store, progress, when
from .database import open_store
from .options import (
    AgentOption,
    JsonOption,
    TenantOption,
    UrlOption,
    UserOption,
    VerboseOption,
    resolve_url,
)
from .views import Owners

if TYPE_CHECKING:
    import uuid

    from ..records import Session
    from ..store import Store


@app.command()
def sessions(
    user: UserOption = None,
    tenant: TenantOption = None,
    agent: AgentOption = None,
    parent: Annotated[
        str | None,
        typer.Option("--parent", help="Only the forks of this session.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Next page: the cursor printed last time.")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """List sessions, newest activity first, one page at a time (--parent: the forks of one
    session)."""
    output = Output(as_json, verbose)
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    parent_id = checked(output, lambda: coerce_uuid("--parent", parent, optional=True))
    database = checked(output, lambda: resolve_url(url))
    page = on_store(
        output,
        database,
        lambda view: view.list_sessions(
            **owners.filters(), parent_session_id=parent_id, limit=limit, cursor=cursor
        ),
        owners,
    )
    if output.as_json:
        output.json({"sessions": page.items, "next_cursor": page.next_cursor})
        return
    table = Table(
        Column("id", no_wrap=True),
        Column("title", overflow="ellipsis", max_width=40),
        "tenant",
        "user",
        "agent",
        Column("msgs", justify="right"),
        Column("state", justify="right"),
        "fork of",
        Column("updated (UTC)", no_wrap=True),
        box=box.SIMPLE_HEAD,
    )
    for item in page.items:
        table.add_row(
            str(item.id),
            Text(item.title or ""),
            _short(item.tenant_id),
            _short(item.user_id),
            _short(item.agent_id),
            str(item.last_seq),
            str(item.state_version),
            _fork_of(item),
            when(item.updated_at),
        )
    output.out.print(table)
    if page.next_cursor:
        output.out.print(Text(f"more: --cursor {page.next_cursor}"))


def _short(value: uuid.UUID | None) -> str:
    return "-" if value is None else str(value)[:8]


def _fork_of(session: Session) -> str:
    """``0193a2b4@12``: the parent's short id and the seq the fork was taken at."""
    if session.parent_session_id is None:
        return "-"
    return f"{_short(session.parent_session_id)}@{session.forked_at_seq}"


@app.command()
def show(
    session_id: Annotated[str, typer.Argument(help="The session's id.")],
    last: Annotated[
        int | None, typer.Option("--last", min=1, help="Only the newest N messages.")
    ] = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Show a session: its transcript with roles and timestamps, and its latest state.

    A session outside --tenant (or not of --user/--agent) is not found, like a missing one.
    """
    output = Output(as_json, verbose)
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    database = checked(output, lambda: resolve_url(url))

    async def work(store: Store) -> None:
        session = await store.get_session(session_id)
        if not owners.admits(session):  # the same answer as for an id that does not exist
            raise NotFoundError(f"session {session.id} not found")
        state = await store.load_state(session.id)
        if output.as_json:
            messages = await store.get_messages(session.id, limit=last)
            output.json({"session": session, "messages": messages, "state": state})
            return
        _print_session(output, session)
        if last is not None:
            _print_messages(output, await store.get_messages(session.id, limit=last))
        else:  # page through: a long transcript is never held whole
            after = 0
            while page := await store.get_messages(session.id, after_seq=after, limit=500):
                _print_messages(output, page)
                after = page[-1].seq
        _print_state(output, state)

    on_store(output, database, work, owners)


def _print_session(output: Output, session: Session) -> None:
    lines = [
        f"session  {session.id}",
        f"title    {session.title or '-'}",
        f"tenant   {session.tenant_id or '-'}",
        f"user     {session.user_id or '-'}",
        f"agent    {session.agent_id or '-'}",
        f"created  {when(session.created_at)} UTC",
        f"updated  {when(session.updated_at)} UTC",
        f"messages {session.last_seq} (last seq), state version {session.state_version}",
    ]
    if session.parent_session_id is not None:
        lines.append(f"fork of  {session.parent_session_id} at seq {session.forked_at_seq}")
    if session.metadata:
        lines.append(f"metadata {json.dumps(session.metadata, ensure_ascii=False)}")
    output.out.print(Text("\n".join(lines)))


_ROLE_STYLES = {"user": "cyan", "assistant": "green", "system": "magenta", "tool": "yellow"}


def _print_messages(output: Output, messages: list[Any]) -> None:
    for message in messages:
        head = Text(f"\n#{message.seq} ", style="dim")
        head.append(message.role, style=f"bold {_ROLE_STYLES.get(message.role, '')}")
        head.append(f"  {when(message.created_at)}", style="dim")
        output.out.print(head)
        output.out.print(Text(message.content), soft_wrap=True)


def _print_state(output: Output, state: Any) -> None:
    if state is None:
        output.out.print(Text("\nno saved state", style="dim"))
        return
    output.out.print(Text(f"\nstate v{state.version}  {when(state.created_at)}", style="bold"))
    output.out.print(Text(json.dumps(state.state, indent=2, ensure_ascii=False)))


@app.command()
def stats(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only rows created since: an age (7d, 12h) or a date."),
    ] = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Sessions, messages, states, provider calls and tokens, by tenant and by day (UTC)."""
    output = Output(as_json, verbose)
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    start = checked(output, lambda: parse_since(since))
    database = checked(output, lambda: resolve_url(url))

    async def work() -> transfer.Stats:
        async with await open_store(database) as store:
            with progress(output, "collecting stats", None):
                return await transfer.collect_stats(
                    owners.view(store), since=start, selection=owners.selection()
                )

    result = execute(output, work())
    if output.as_json:
        output.json(result)
        return
    output.out.print(Text("totals: " + "  ".join(f"{m} {result.totals[m]}" for m in METRICS)))
    for title, key, rows in (
        ("by tenant", "tenant_id", result.by_tenant),
        ("by day (UTC)", "day", result.by_day),
    ):
        table = Table(key, *METRICS, title=title)
        for row in rows:
            table.add_row(str(row[key] or "-"), *(str(row[m]) for m in METRICS))
        output.out.print(table)


def parse_since(text: str | None) -> datetime | None:
    """An age (``7d``) back from now, or an ISO date/datetime (UTC when it has no offset)."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - transfer.parse_age(text)
    except InvalidInputError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"--since {text!r}: write an age like 7d or 12h, or a date like 2026-01-31"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
