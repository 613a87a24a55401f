"""Schema commands: ``upgrade``, ``downgrade``, ``current`` and ``history``.

They run the packaged Alembic migrations on their own engine (no pool, no foreign keys
enforced while tables change), not through a store, which needs the schema to exist. Only
``upgrade`` creates a SQLite file; the others refuse one that does not exist.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from alembic.script import ScriptDirectory
from rich.table import Table
from rich.text import Text

from .. import migrate as migrations
from ..engine import create_engine
from ..translate import DRIVER_ERRORS, to_backend_error
from ..urls import parse_url
from .app import Output, app, checked, execute, progress
from .database import current_revision, display, make_parent, require_file
from .options import JsonOption, UrlOption, VerboseOption, resolve_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..urls import DatabaseUrl


@app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Upgrade the schema with the packaged Alembic migrations (default: to head)."""
    output = Output(as_json, verbose)
    database = checked(output, lambda: resolve_url(url))
    before, after = execute(output, _migrate(database, "upgrade", revision, output))
    _report_migration(output, "upgrade", before, after)


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0001 or base.")],
    url: UrlOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask; downgrades drop data.")] = False,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Downgrade the schema to REVISION; tables dropped on the way lose their data."""
    output = Output(as_json, verbose)
    database = checked(output, lambda: resolve_url(url))
    if not yes:
        if not sys.stdin.isatty():
            raise output.fail("downgrade drops tables and their data; pass --yes to confirm")
        typer.confirm(f"Downgrade {display(database)} to {revision}? Data may be lost", abort=True)
    before, after = execute(output, _migrate(database, "downgrade", revision, output))
    _report_migration(output, "downgrade", before, after)


@contextlib.asynccontextmanager
async def _engine(parsed: DatabaseUrl, action: str, **options: bool) -> AsyncIterator[AsyncEngine]:
    """An engine of its own for one command, without a pool; driver errors name ``action``."""
    engine = create_engine(parsed, use_null_pool=True, **options)
    try:
        yield engine
    except DRIVER_ERRORS as error:
        raise to_backend_error(error, parsed, action) from error
    finally:
        await engine.dispose()


async def _migrate(
    url: str, direction: str, revision: str, output: Output
) -> tuple[str | None, str | None]:
    parsed = parse_url(url)
    if direction == "downgrade":
        require_file(parsed)
    else:
        make_parent(parsed)
    async with _engine(parsed, f"{direction} the schema", enforce_foreign_keys=False) as engine:
        before = await current_revision(engine)
        with progress(output, f"{direction} to {revision}", None):
            if direction == "upgrade":
                await migrations.upgrade(engine, revision)
            else:
                await migrations.downgrade(engine, revision)
        return before, await current_revision(engine)


def _report_migration(
    output: Output, direction: str, before: str | None, after: str | None
) -> None:
    if output.as_json:
        output.json({"direction": direction, "from": before, "to": after})
        return
    if before == after:
        output.out.print(Text(f"schema already at {after or 'base'}; nothing to do"))
    else:
        output.out.print(Text(f"{direction}d schema: {before or 'base'} -> {after or 'base'}"))


@app.command()
def current(
    url: UrlOption = None, as_json: JsonOption = False, verbose: VerboseOption = False
) -> None:
    """Show the database's schema revision and whether it is at head."""
    output = Output(as_json, verbose)
    database = checked(output, lambda: resolve_url(url))
    revision = execute(output, _read_revision(database))
    head = migrations.head_revision()
    if output.as_json:
        output.json({"current": revision, "head": head, "up_to_date": revision == head})
        return
    state = "up to date" if revision == head else f"behind head {head}: run mofa-persist upgrade"
    output.out.print(Text(f"{revision or 'base (no schema)'} ({state})"))


async def _read_revision(url: str) -> str | None:
    parsed = parse_url(url)
    require_file(parsed)  # reading must not create the file, nor call a missing one "base"
    async with _engine(parsed, "read the schema revision") as engine:
        return await current_revision(engine)


@app.command()
def history(
    url: UrlOption = None, as_json: JsonOption = False, verbose: VerboseOption = False
) -> None:
    """List the packaged migrations, newest first, marking the database's current one."""
    output = Output(as_json, verbose)
    database = checked(output, lambda: resolve_url(url))
    revision = execute(output, _read_revision(database))
    script = ScriptDirectory.from_config(migrations.alembic_config())
    rows: list[dict[str, Any]] = [
        {
            "revision": item.revision,
            "down_revision": item.down_revision,
            "description": item.doc,
            "current": item.revision == revision,
            "head": item.is_head,
        }
        for item in script.walk_revisions()
    ]
    if output.as_json:
        output.json(rows)
        return
    table = Table("revision", "parent", "description", "")
    for row in rows:
        marks = " ".join(name for name in ("head", "current") if row[name])
        table.add_row(row["revision"], str(row["down_revision"] or "-"), row["description"], marks)
    output.out.print(table)
