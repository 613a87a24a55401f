"""``import-from``: move the sessions of an agent framework's own store into this library.

One command for every framework: it opens the destination (created and migrated, as
``import`` does; through the ``--tenant`` view when given), then hands the source to the
framework's importer module, which exposes::

    async def import_from(source_url: str, store: Store,
                          progress: Callable[[int, int | None], None]) -> dict[str, int]

``progress(done, total)`` is the number of source sessions handled so far and their total
(``None`` while unknown); the counts returned are printed (``--json``: as an object). A count
named ``conflicts`` or ``failed`` above zero means some sessions were left out: exit code 1.

An importer may also take ``on_problem(line)``: each session it left out is then printed as a
``warning:`` line. The importers import their framework; a missing framework or importer is
one line saying what to install, not a traceback.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import inspect
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url

from ..errors import InvalidInputError
from .app import Output, app, checked, execute
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
    from collections.abc import Callable, Iterator
    from types import ModuleType

    from ..store import Store


class Framework(enum.StrEnum):
    """The frameworks ``import-from`` reads."""

    OPENAI_AGENTS = "openai-agents"
    ADK = "adk"


#: Per framework: the importer module, what to install for it, and the framework's name.
IMPORTERS: dict[Framework, tuple[str, str, str]] = {
    Framework.OPENAI_AGENTS: (
        "mofa_persist.integrations.openai_agents_import",
        "openai-agents",
        "the OpenAI Agents SDK",
    ),
    Framework.ADK: ("mofa_persist.integrations.adk_import", "adk", "Google ADK"),
}

#: Counts that mean sessions were left out: any above zero makes the exit code 1.
PROBLEM_COUNTS = ("conflicts", "failed")


def importer(framework: Framework) -> ModuleType:
    """The framework's importer module; a missing one says what to install."""
    module_name, extra, name = IMPORTERS[framework]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if error.name == module_name:
            raise InvalidInputError(
                f"import-from {framework} is not available in this version of mofa-persist "
                f"({module_name} is missing)"
            ) from None
        raise InvalidInputError(
            f"import-from {framework} needs {name}: pip install 'mofa-persist[{extra}]' "
            f"(cannot import {error.name or error})"
        ) from None
    if not callable(getattr(module, "import_from", None)):
        raise InvalidInputError(f"{module_name} has no import_from function")
    return module


def masked(source_url: str) -> str:
    """The source as messages show it: a URL's password hidden (a file path as it is)."""
    if "://" not in source_url:
        return source_url
    try:
        return make_url(source_url.strip()).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show no part of it that could hold a password
        return "the source URL"


@contextlib.contextmanager
def _bar(output: Output, description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A Rich progress bar on stderr driven by ``progress(done, total)``; only on a terminal."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output.err,
        transient=True,
        disable=not output.err.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command("import-from")
def import_from(
    framework: Annotated[Framework, typer.Argument(help="The framework: openai-agents or adk.")],
    source_url: Annotated[
        str,
        typer.Argument(
            help="The framework's database: a SQLAlchemy URL (sqlite+aiosqlite, "
            "postgresql+asyncpg, mysql+aiomysql) or a SQLite file path."
        ),
    ],
    sessions_table: Annotated[
        str | None,
        typer.Option(
            "--sessions-table",
            help="openai-agents: the SDK's sessions table. Default: agent_sessions.",
            show_default=False,
        ),
    ] = None,
    messages_table: Annotated[
        str | None,
        typer.Option(
            "--messages-table",
            help="openai-agents: the SDK's messages table. Default: agent_messages.",
            show_default=False,
        ),
    ] = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Import every session of a framework's own store (the OpenAI Agents SDK's
    SQLAlchemySession or SQLiteSession tables, Google ADK's) into this library, as its
    integration would have stored them.

    Idempotent: a second run writes nothing new; a session partly imported is completed, one
    whose history here differs is reported and left alone (exit code 1). Each session is
    written in one transaction. --tenant (with --user, --agent) imports into that view.
    """
    output = Output(as_json, verbose)
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    checked(output, lambda: owners.need_tenant("import-from"))
    database = checked(output, lambda: resolve_url(url))
    options: dict[str, Any] = {}
    if framework is Framework.OPENAI_AGENTS:
        if sessions_table is not None:
            options["sessions_table"] = sessions_table
        if messages_table is not None:
            options["messages_table"] = messages_table
    elif sessions_table is not None or messages_table is not None:
        raise output.fail("--sessions-table and --messages-table are for openai-agents only", 2)
    module = checked(output, lambda: importer(framework))
    if "on_problem" in inspect.signature(module.import_from).parameters:
        options["on_problem"] = lambda problem: output.err.print(
            Text(f"warning: {problem}", style="yellow"), soft_wrap=True
        )

    async def work() -> dict[str, int]:
        async with await open_store(database, create=True) as root:
            store: Store = owners.view(root)
            with _bar(output, f"importing from {framework}") as progress:
                counts: dict[str, int] = await module.import_from(
                    source_url, store, progress, **options
                )
            return counts

    counts = execute(output, work())
    source = masked(source_url)
    if output.as_json:
        output.json({"framework": str(framework), "source": source, **counts})
    else:
        output.note(f"imported from {framework} at {source}")
        table = Table("", "count")
        for name, value in counts.items():
            table.add_row(name, str(value))
        output.out.print(table)
    left_out = sum(counts.get(name, 0) for name in PROBLEM_COUNTS)
    if left_out:
        raise output.fail(f"{left_out} sessions were not imported (see the warnings above)")
