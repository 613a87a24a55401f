"""``search``: find messages across sessions with the store's query language.

A thin shell around :meth:`Store.search_messages`: the same words, phrases, ``-excluded``
words and ``prefix*`` on every backend, printed as a table with snippets (or ``--json``).
``--tenant``/``--user``/``--agent`` search inside that view only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Column, Table
from rich.text import Text

from ..validate import check_role, coerce_uuid
from .app import Output, app, checked, on_store, when
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
    from ..records import Page
    from ..searching import MessageHit
    from ..store import Store


@app.command()
def search(
    query: Annotated[
        str,
        typer.Argument(
            help='Words (all must match), "a phrase", -excluded, prefix*; quote it for the shell.'
        ),
    ],
    session: Annotated[
        str | None,
        typer.Option("--session", help="Only this session's messages.", show_default=False),
    ] = None,
    role: Annotated[
        str | None,
        typer.Option("--role", help="Only messages of this role (user, assistant, system, tool)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="Page size.")] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Next page: the cursor printed last time.")
    ] = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Search messages across sessions: most relevant first, with snippets."""
    output = Output(as_json, verbose)
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    checked(output, lambda: owners.need_tenant("search"))
    session_id = checked(output, lambda: coerce_uuid("--session", session, optional=True))
    checked_role = checked(output, lambda: None if role is None else check_role(role))
    database = checked(output, lambda: resolve_url(url))

    async def work(view: Store) -> Page[MessageHit]:
        return await view.search_messages(
            query, session_id=session_id, role=checked_role, limit=limit, cursor=cursor
        )

    page = on_store(output, database, work, owners)
    if output.as_json:
        output.json({"hits": page.items, "next_cursor": page.next_cursor})
        return
    table = Table(
        Column("session", no_wrap=True),
        Column("seq", justify="right"),
        "role",
        Column("title", overflow="ellipsis", max_width=24),
        Column("snippet", ratio=1),
        Column("created (UTC)", no_wrap=True),
        box=box.SIMPLE_HEAD,
    )
    for hit in page.items:
        table.add_row(
            str(hit.session_id),
            str(hit.message.seq),
            hit.message.role,
            Text(hit.session_title or ""),
            Text(hit.snippet),  # matched words between ** marks
            when(hit.message.created_at),
        )
    output.out.print(table)
    if not page.items:
        output.out.print(Text("no messages match", style="dim"))
    if page.next_cursor:
        output.out.print(Text(f"more: --cursor {page.next_cursor}"))
