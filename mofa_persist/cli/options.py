"""The options several commands share, so each is spelled and documented once.

Typer reads these ``Annotated`` types from the command signatures; a command lists the ones it
takes, in the order its ``--help`` shows them.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ..errors import InvalidInputError
from .database import FILE_URL_FORMS, durable_url

DEFAULT_URL = "sqlite://mofa.db"

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL (a file or a server; not in memory). Default: $DATABASE_URL, then "
        "sqlite://mofa.db.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show details (tracebacks) on errors.")
]
SessionOption = Annotated[str | None, typer.Option("--session", help="One session id.")]
TenantOption = Annotated[
    str | None,
    typer.Option("--tenant", help="Only this tenant: the command runs on its view."),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", help="Only this user (narrows the --tenant view, else a filter)."),
]
AgentOption = Annotated[
    str | None,
    typer.Option("--agent", help="Only this agent (narrows the --tenant view, else a filter)."),
]
BatchOption = Annotated[
    int, typer.Option("--batch-size", min=1, max=10_000, help="Rows per query and per insert.")
]


def resolve_url(url: str | None) -> str:
    """The database a command works on: ``--url``, else ``$DATABASE_URL``, else
    :data:`DEFAULT_URL`; ``InvalidInputError`` when it would store nothing (see
    :func:`.database.durable_url`).

    An empty ``--url ""`` is refused rather than taken as "not given": it is what an unset
    shell variable gives, and the default database is not what was asked for.
    """
    if url is not None:
        if not url.strip():
            raise InvalidInputError(
                "--url is empty (is a shell variable in it unset?); give a database URL such "
                f"as {FILE_URL_FORMS}"
            )
        return durable_url(url, "--url")
    from_env = os.environ.get("DATABASE_URL", "").strip()
    if from_env:
        return durable_url(from_env, "DATABASE_URL")
    return DEFAULT_URL
