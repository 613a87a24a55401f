"""History commands: ``rewind`` (cut a session back to a seq) and ``fork`` (branch it).

Thin shells around the store's ``rewind`` and ``fork_session``. Like ``show``, each names one
session and takes ``--tenant``/``--user``/``--agent`` (see :mod:`.views`): a session outside
the view, or not of the ``--user``/``--agent`` given as filters, is not found, exactly as an
id that does not exist. ``rewind`` deletes for good, so it asks first, as ``erase`` does.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from ..errors import InvalidInputError, NotFoundError
from ..validate import require_uuid
from .app import Output, app, checked, on_store
from .database import display
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

    from ..records import RewindResult, Session
    from ..store import Store

SessionArgument = Annotated[str, typer.Argument(help="The session's id.", show_default=False)]


async def _admitted(store: Store, owners: Owners, session_id: uuid.UUID) -> Session:
    """The session, if the view holds it and it passes the ``--user``/``--agent`` filters."""
    session = await store.get_session(session_id)
    if not owners.admits(session):  # the same answer as for an id that does not exist
        raise NotFoundError(f"session {session.id} not found")
    return session


# ---------------------------------------------------------------------- rewind


@app.command()
def rewind(
    session_id: SessionArgument,
    to_seq: Annotated[
        int,
        typer.Option(
            "--to-seq",
            min=0,
            show_default=False,
            help="Keep messages up to this seq (0: none); later ones and the states saved "
            "after it are deleted.",
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask; the messages are deleted for good.")
    ] = False,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Rewind a session to --to-seq: delete its later messages and the state snapshots saved
    after that point, in one transaction. The next message gets seq --to-seq + 1.

    Asks first on a terminal; elsewhere it needs --yes.
    """
    output = Output(as_json, verbose)
    sid = checked(output, lambda: require_uuid("session_id", session_id))
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    database = checked(output, lambda: resolve_url(url))
    if not yes:
        if not sys.stdin.isatty():
            raise output.fail(
                f"rewind deletes the messages of session {sid} after seq {to_seq} for good; "
                "pass --yes to confirm"
            )
        session = on_store(output, database, lambda view: _admitted(view, owners, sid), owners)
        checked(output, lambda: _check_cut(session, to_seq))
        typer.confirm(
            f"Rewind session {sid} of {display(database)} to seq {to_seq}, deleting "
            f"{_doomed(session, to_seq)}? It cannot be undone",
            abort=True,
        )

    async def work(view: Store) -> RewindResult:
        await _admitted(view, owners, sid)
        return await view.rewind(sid, to_seq)

    result = on_store(output, database, work, owners)
    if output.as_json:
        output.json(result)
        return
    output.out.print(
        Text(
            f"rewound session {sid} to seq {result.last_seq}: deleted "
            f"{result.messages_deleted} messages and {result.states_deleted} states; state "
            f"version {result.state_version}; the next message gets seq {result.last_seq + 1}"
        )
    )


def _check_cut(session: Session, to_seq: int) -> None:
    """Refuse before asking what the store would refuse after the answer."""
    if to_seq > session.last_seq:
        raise InvalidInputError(
            f"to_seq {to_seq} is beyond session {session.id}'s last seq {session.last_seq}"
        )


def _doomed(session: Session, to_seq: int) -> str:
    if to_seq == session.last_seq:
        return "nothing (it is at that seq already)"
    first, last = to_seq + 1, session.last_seq
    span = f"seq {first}" if first == last else f"seq {first} to {last}"
    return f"its messages {span} and the states saved after seq {to_seq}"


# ---------------------------------------------------------------------- fork


@app.command()
def fork(
    session_id: SessionArgument,
    at_seq: Annotated[
        int | None,
        typer.Option(
            "--at-seq",
            min=0,
            show_default=False,
            help="Copy the messages up to this seq (default: all of them).",
        ),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option("--title", show_default=False, help="The fork's title (default: the same)."),
    ] = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Fork a session: a new session (same tenant, user and agent) with copies of its messages
    up to --at-seq and of the states saved by then. Prints the new session's id.

    The original is not changed; `mofa-persist sessions --parent SESSION` lists its forks.
    """
    output = Output(as_json, verbose)
    sid = checked(output, lambda: require_uuid("session_id", session_id))
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    database = checked(output, lambda: resolve_url(url))

    async def work(view: Store) -> Session:
        await _admitted(view, owners, sid)
        return await view.fork_session(sid, at_seq=at_seq, title=title)

    forked = on_store(output, database, work, owners)
    if output.as_json:
        output.json(forked)
        return
    output.out.print(Text(str(forked.id)))  # alone on stdout: NEW=$(mofa-persist fork ...)
    output.note(
        f"forked session {sid} at seq {forked.forked_at_seq} into {forked.id} "
        f"({forked.last_seq} messages, state version {forked.state_version})"
    )
