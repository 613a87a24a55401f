"""The ``mofa-persist`` command: migrations, inspection, export/import, copy and retention.

Typer builds the commands from typed functions; Rich draws the tables and progress bars (on
stderr, so ``--json`` output and exports to stdout stay clean). Each command is a thin shell
around :mod:`mofa_persist.transfer` or the store API.

Errors are one line on stderr, ``error: ...``, with exit code 1 (2 for usage errors, 130 when
interrupted); ``--verbose`` adds the traceback. Documented in ``docs/cli.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import sys
import tempfile
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from alembic.script import ScriptDirectory
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from . import __version__, transfer
from . import migrate as migrations
from .engine import create_engine
from .errors import InvalidInputError, PersistenceError
from .store import Store, connect
from .translate import DRIVER_ERRORS, to_backend_error
from .urls import DatabaseUrl, parse_url
from .validate import coerce_uuid

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

T = TypeVar("T")

DEFAULT_URL = "sqlite://mofa.db"

app = typer.Typer(
    name="mofa-persist",
    help="Durable memory for LLM agents: migrations, inspection, export/import, copy, retention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# ---------------------------------------------------------------------- shared options

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL. Default: $DATABASE_URL, then sqlite://mofa.db.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show details (tracebacks) on errors.")
]
SessionOption = Annotated[str | None, typer.Option("--session", help="One session id.")]
UserOption = Annotated[str | None, typer.Option("--user", help="Sessions of this user id.")]
TenantOption = Annotated[str | None, typer.Option("--tenant", help="Sessions of this tenant id.")]
AgentOption = Annotated[str | None, typer.Option("--agent", help="Sessions of this agent id.")]
BatchOption = Annotated[
    int, typer.Option("--batch-size", min=1, max=10_000, help="Rows per query and per insert.")
]


@dataclass
class Output:
    """Where a command writes: data to stdout, progress and errors to stderr."""

    as_json: bool = False
    verbose: bool = False
    out: Console = field(default_factory=lambda: _console(sys.stdout))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    def json(self, data: object) -> None:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=_plain) + "\n")

    def note(self, message: str) -> None:
        self.err.print(Text(message))

    def fail(self, message: str, code: int = 1) -> typer.Exit:
        self.err.print(Text(f"error: {message}", style="red"), soft_wrap=True)
        return typer.Exit(code)


def _console(stream: Any) -> Console:
    """Tables fit a terminal; piped into a file or another program they are not cut at 80."""
    interactive = hasattr(stream, "isatty") and stream.isatty()
    return Console(highlight=False, width=None if interactive else 200)


def _plain(value: object) -> object:
    """JSON for what the records hold: UUIDs, datetimes, dataclasses."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("DATABASE_URL") or DEFAULT_URL


def _execute(output: Output, work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; any failure becomes one line and an exit code, not a trace."""
    try:
        return asyncio.run(work)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise output.fail("interrupted", 130) from None
    except Exception as error:  # the top of the command: every failure becomes one line
        if output.verbose:
            output.err.print(Text("".join(traceback.format_exception(error))))
        raise output.fail(_describe(error)) from None


def _describe(error: BaseException) -> str:
    """One line that says what went wrong, without a password or a stack."""
    if isinstance(error, PersistenceError):
        text = str(error)
    elif isinstance(error, ModuleNotFoundError) and error.name in ("asyncpg", "aiomysql"):
        extra = "postgres" if error.name == "asyncpg" else "mysql"
        text = f"the {error.name} driver is not installed: pip install 'mofa-persist[{extra}]'"
    elif isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or error}: {error.filename}"
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:500]


@contextlib.contextmanager
def _progress(
    output: Output, description: str, total: int | None, *, in_bytes: bool = False
) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr; ``advance(n)`` moves it. Drawn only on a terminal."""
    count: ProgressColumn = DownloadColumn() if in_bytes else MofNCompleteColumn()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        count,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output.err,
        transient=True,
        disable=not output.err.is_terminal,  # no bar frames in logs or pipes
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(amount: int = 1) -> None:
            progress.advance(task, amount)

        yield advance


# ---------------------------------------------------------------------- opening databases


def _parse(url: str) -> DatabaseUrl:
    return parse_url(url)


def _file_missing(parsed: DatabaseUrl) -> bool:
    return parsed.kind == "sqlite" and parsed.host is not None and not Path(parsed.host).exists()


def _require_file(parsed: DatabaseUrl) -> None:
    """Read commands never create a SQLite file by accident (a typo would make a new one)."""
    if _file_missing(parsed):
        raise InvalidInputError(f"no SQLite database at {parsed.host}")


async def _schema_revision(store: Store) -> str | None:
    async with store.engine.connect() as conn:
        return await conn.run_sync(migrations.current_revision)


async def open_store(url: str, *, create: bool = False) -> Store:
    """Connect for a command. ``create=True`` (import, copy's destination) creates and
    migrates the schema; otherwise the schema must exist at the packaged head revision."""
    parsed = _parse(url)
    if create or parsed.kind == "memory":
        return await connect(url, migrate=True)
    _require_file(parsed)
    store = await connect(url, migrate=False)
    try:
        current = await _schema_revision(store)
    except DRIVER_ERRORS as error:
        await store.close()
        raise to_backend_error(error, parsed, "read the schema revision") from error
    head = migrations.head_revision()
    if current != head:
        await store.close()
        where = parsed.display
        if current is None:
            raise InvalidInputError(
                f"{where} has no mofa-persist schema; run: mofa-persist upgrade --url {where}"
            )
        raise InvalidInputError(
            f"{where} is at schema revision {current}, this mofa-persist needs {head}; "
            f"run: mofa-persist upgrade --url {where}"
        )
    return store


def _uuid(name: str, value: str | None) -> uuid.UUID | None:
    return coerce_uuid(name, value, optional=True)


# ---------------------------------------------------------------------- migrations


@app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Upgrade the schema with the packaged Alembic migrations (default: to head)."""
    output = Output(as_json, verbose)
    before, after = _execute(output, _migrate(resolve_url(url), "upgrade", revision, output))
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
    target = resolve_url(url)
    if not yes:
        if not sys.stdin.isatty():
            raise output.fail("downgrade drops tables and their data; pass --yes to confirm")
        typer.confirm(f"Downgrade {_display(target)} to {revision}? Data may be lost", abort=True)
    before, after = _execute(output, _migrate(target, "downgrade", revision, output))
    _report_migration(output, "downgrade", before, after)


def _display(url: str) -> str:
    try:
        return parse_url(url).display
    except PersistenceError:
        return "the database"


async def _migrate(
    url: str, direction: str, revision: str, output: Output
) -> tuple[str | None, str | None]:
    parsed = _parse(url)
    if direction == "downgrade":
        _require_file(parsed)
    else:
        _make_parent(parsed)
    engine = create_engine(parsed, use_null_pool=True, enforce_foreign_keys=False)
    try:
        before = await _current(engine)
        with _progress(output, f"{direction} to {revision}", None):
            if direction == "upgrade":
                await migrations.upgrade(engine, revision)
            else:
                await migrations.downgrade(engine, revision)
        return before, await _current(engine)
    except DRIVER_ERRORS as error:
        raise to_backend_error(error, parsed, f"{direction} the schema") from error
    finally:
        await engine.dispose()


def _make_parent(parsed: DatabaseUrl) -> None:
    if parsed.kind == "sqlite" and parsed.host is not None:
        Path(parsed.host).parent.mkdir(parents=True, exist_ok=True)


async def _current(engine: Any) -> str | None:
    async with engine.connect() as conn:
        revision: str | None = await conn.run_sync(migrations.current_revision)
        return revision


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
    revision = _execute(output, _read_revision(resolve_url(url)))
    head = migrations.head_revision()
    if output.as_json:
        output.json({"current": revision, "head": head, "up_to_date": revision == head})
        return
    state = "up to date" if revision == head else f"behind head {head}: run mofa-persist upgrade"
    output.out.print(Text(f"{revision or 'base (no schema)'} ({state})"))


async def _read_revision(url: str) -> str | None:
    parsed = _parse(url)
    if _file_missing(parsed):
        return None  # reading must not create the file
    engine = create_engine(parsed, use_null_pool=True)
    try:
        return await _current(engine)
    except DRIVER_ERRORS as error:
        raise to_backend_error(error, parsed, "read the schema revision") from error
    finally:
        await engine.dispose()


@app.command()
def history(
    url: UrlOption = None, as_json: JsonOption = False, verbose: VerboseOption = False
) -> None:
    """List the packaged migrations, newest first, marking the database's current one."""
    output = Output(as_json, verbose)
    revision = _execute(output, _read_revision(resolve_url(url)))
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


# ---------------------------------------------------------------------- inspection


@app.command()
def sessions(
    user: UserOption = None,
    tenant: TenantOption = None,
    agent: AgentOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Next page: the cursor printed last time.")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """List sessions, newest activity first, one page at a time."""
    output = Output(as_json, verbose)

    async def work() -> Any:
        async with await open_store(resolve_url(url)) as store:
            return await store.list_sessions(
                user_id=user, tenant_id=tenant, agent_id=agent, limit=limit, cursor=cursor
            )

    page = _execute(output, work())
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
            _when(item.updated_at),
        )
    output.out.print(table)
    if page.next_cursor:
        output.out.print(Text(f"more: --cursor {page.next_cursor}"))


def _short(value: uuid.UUID | None) -> str:
    return "-" if value is None else str(value)[:8]


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def show(
    session_id: Annotated[str, typer.Argument(help="The session's id.")],
    last: Annotated[
        int | None, typer.Option("--last", min=1, help="Only the newest N messages.")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Show a session: its transcript with roles and timestamps, and its latest state."""
    output = Output(as_json, verbose)

    async def work() -> None:
        async with await open_store(resolve_url(url)) as store:
            session = await store.get_session(session_id)
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

    _execute(output, work())


def _print_session(output: Output, session: Any) -> None:
    lines = [
        f"session  {session.id}",
        f"title    {session.title or '-'}",
        f"tenant   {session.tenant_id or '-'}",
        f"user     {session.user_id or '-'}",
        f"agent    {session.agent_id or '-'}",
        f"created  {_when(session.created_at)} UTC",
        f"updated  {_when(session.updated_at)} UTC",
        f"messages {session.last_seq} (last seq), state version {session.state_version}",
    ]
    if session.metadata:
        lines.append(f"metadata {json.dumps(session.metadata, ensure_ascii=False)}")
    output.out.print(Text("\n".join(lines)))


_ROLE_STYLES = {"user": "cyan", "assistant": "green", "system": "magenta", "tool": "yellow"}


def _print_messages(output: Output, messages: list[Any]) -> None:
    for message in messages:
        head = Text(f"\n#{message.seq} ", style="dim")
        head.append(message.role, style=f"bold {_ROLE_STYLES.get(message.role, '')}")
        head.append(f"  {_when(message.created_at)}", style="dim")
        output.out.print(head)
        output.out.print(Text(message.content), soft_wrap=True)


def _print_state(output: Output, state: Any) -> None:
    if state is None:
        output.out.print(Text("\nno saved state", style="dim"))
        return
    output.out.print(Text(f"\nstate v{state.version}  {_when(state.created_at)}", style="bold"))
    output.out.print(Text(json.dumps(state.state, indent=2, ensure_ascii=False)))


@app.command()
def stats(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only rows created since: an age (7d, 12h) or a date."),
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Sessions, messages, states, provider calls and tokens, by tenant and by day (UTC)."""
    output = Output(as_json, verbose)

    async def work() -> transfer.Stats:
        start = parse_since(since)
        async with await open_store(resolve_url(url)) as store:
            with _progress(output, "collecting stats", None):
                return await transfer.collect_stats(store, since=start)

    result = _execute(output, work())
    if output.as_json:
        output.json(result)
        return
    metrics = ("sessions", "messages", "states", "api_calls", "tokens")
    output.out.print(Text("totals: " + "  ".join(f"{m} {result.totals[m]}" for m in metrics)))
    for title, key, rows in (
        ("by tenant", "tenant_id", result.by_tenant),
        ("by day (UTC)", "day", result.by_day),
    ):
        table = Table(key, *metrics, title=title)
        for row in rows:
            table.add_row(str(row[key] or "-"), *(str(row[m]) for m in metrics))
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


# ---------------------------------------------------------------------- export / import


def _selection(
    session: str | None,
    user: str | None,
    tenant: str | None,
    agent: str | None = None,
) -> transfer.Selection:
    return transfer.Selection(
        session_id=_uuid("--session", session),
        user_id=_uuid("--user", user),
        tenant_id=_uuid("--tenant", tenant),
        agent_id=_uuid("--agent", agent),
    )


@app.command()
def export(
    session: SessionOption = None,
    user: UserOption = None,
    tenant: TenantOption = None,
    everything: Annotated[bool, typer.Option("--all", help="Every session.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")
    ] = None,
    batch_size: BatchOption = transfer.DEFAULT_BATCH,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export sessions with their messages, states and provider calls as JSON Lines.

    Streams in constant memory; the format is in docs/export-format.md.
    """
    output = Output(as_json, verbose)
    chosen = sum(value is not None for value in (session, user, tenant)) + everything
    if chosen != 1:
        raise output.fail("choose exactly one of --session, --user, --tenant or --all", 2)

    async def work() -> transfer.Counts:
        selection = _selection(session, user, tenant)
        async with await open_store(resolve_url(url)) as store:
            total = await transfer.count_selection(store, selection)
            with _progress(output, "exporting", total.total) as advance:
                if out is None:
                    return await _export_to(store, sys.stdout, selection, batch_size, advance)
                return await _export_file(store, out, selection, batch_size, advance)

    counts = _execute(output, work())
    summary = {"out": str(out) if out else "-", **counts.as_dict()}
    if output.as_json and out is not None:
        output.json(summary)
    else:
        output.note(f"exported {_counted(counts)} to {out or 'stdout'}")


async def _export_to(
    store: Store, stream: Any, selection: transfer.Selection, batch: int, advance: Any
) -> transfer.Counts:
    return await transfer.export_jsonl(
        store, stream, selection, batch_size=batch, on_row=lambda: advance(1)
    )


async def _export_file(
    store: Store, out: Path, selection: transfer.Selection, batch: int, advance: Any
) -> transfer.Counts:
    """Write to a temporary file next to ``out`` and rename it at the end: an interrupted
    export never leaves a file that looks finished."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="\n", dir=out.parent, prefix=f".{out.name}.", delete=False
    ) as handle:
        try:
            counts = await _export_to(store, handle, selection, batch, advance)
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, out)
    return counts


def _counted(counts: transfer.Counts) -> str:
    return (
        f"{counts.sessions} sessions, {counts.messages} messages, {counts.states} states, "
        f"{counts.api_calls} api calls"
    )


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A mofa-persist JSON Lines export.")],
    check: Annotated[
        bool, typer.Option("--check", help="Only validate the file; write nothing.")
    ] = False,
    batch_size: BatchOption = transfer.DEFAULT_BATCH,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Import an export file: every line is validated first, then each session is written in
    one transaction. Importing the same file twice changes nothing; rows that exist with other
    content are reported as conflicts and never overwritten."""
    output = Output(as_json, verbose)

    async def work() -> tuple[transfer.Counts, transfer.ImportReport | None]:
        size = file.stat().st_size
        async with await open_store(resolve_url(url), create=not check) as store:
            with _progress(output, "validating", size, in_bytes=True) as advance:
                counts = await transfer.validate_file(store, file, on_bytes=advance)
            if check:
                return counts, None
            with _progress(output, "importing", size, in_bytes=True) as advance:
                report = await transfer.import_jsonl(
                    store, file, batch_size=batch_size, on_bytes=advance, validated=True
                )
            return counts, report

    counts, report = _execute(output, work())
    if report is None:
        if output.as_json:
            output.json({"valid": True, **counts.as_dict()})
        else:
            output.out.print(Text(f"{file}: valid, {_counted(counts)}"))
        return
    _report_import(output, report)
    if not report.ok:
        raise output.fail(f"{len(report.conflicts)} conflicting sessions were not imported")


def _report_import(output: Output, report: transfer.ImportReport) -> None:
    if output.as_json:
        output.json(report)
        return
    table = Table("", "sessions", "messages", "states", "api calls")
    for label, counts in (("inserted", report.inserted), ("unchanged", report.unchanged)):
        table.add_row(label, *(str(v) for v in counts.as_dict().values()))
    output.out.print(table)
    for conflict in report.conflicts:
        output.out.print(Text(f"conflict: {conflict}", style="yellow"))


# ---------------------------------------------------------------------- copy


@app.command()
def copy(
    src_url: Annotated[str, typer.Argument(help="Copy from this database.")],
    dst_url: Annotated[str, typer.Argument(help="To this one (its schema is created).")],
    session: SessionOption = None,
    user: UserOption = None,
    tenant: TenantOption = None,
    agent: AgentOption = None,
    batch_size: BatchOption = transfer.DEFAULT_BATCH,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Copy sessions (default: all) with every row between any two backends.

    One transaction per session; run it again after an interruption and it resumes, skipping
    sessions already copied. Ends by verifying counts and a sha256 per session.
    """
    output = Output(as_json, verbose)

    async def work() -> transfer.CopyReport:
        selection = _selection(session, user, tenant, agent)
        async with await open_store(src_url) as src, await open_store(dst_url, create=True) as dst:
            total = await transfer.count_selection(src, selection)
            with _progress(output, "copying sessions", total.sessions) as advance:
                return await _copy(src, dst, selection, batch_size, advance)

    report = _execute(output, work())
    _report_copy(output, report)
    if not report.ok:
        problems = len(report.conflicts) + len(report.mismatches)
        raise output.fail(f"copy finished with {problems} problems (see above)")


async def _copy(
    src: Store, dst: Store, selection: transfer.Selection, batch: int, advance: Any
) -> transfer.CopyReport:
    return await transfer.copy_data(
        src,
        dst,
        selection,
        batch_size=batch,
        on_session=lambda _id, _outcome: advance(1),
    )


def _report_copy(output: Output, report: transfer.CopyReport) -> None:
    if output.as_json:
        output.json({**asdict(report), "ok": report.ok})
        return
    output.out.print(
        Text(
            f"{report.sessions} sessions: {report.copied} copied, {report.skipped} already "
            f"there; {report.verified} verified (counts and sha256)"
        )
    )
    output.out.print(Text(f"rows written: {_counted(report.rows)}"))
    for line in report.conflicts:
        output.out.print(Text(f"conflict: {line}", style="yellow"))
    for line in report.mismatches:
        output.out.print(Text(f"MISMATCH: {line}", style="red"))


# ---------------------------------------------------------------------- prune


@app.command()
def prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Age cutoff: 30d, 12h, 90m, 2w.")],
    keep_last: Annotated[
        int | None,
        typer.Option(
            "--keep-last",
            min=0,
            help="Prune old MESSAGES instead of sessions, keeping each session's newest N.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be removed.")
    ] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Retention: delete sessions not updated for --older-than (with their messages and
    states), or with --keep-last N only their messages older than that beyond the newest N."""
    output = Output(as_json, verbose)

    async def work() -> transfer.PruneReport:
        age = transfer.parse_age(older_than)
        async with await open_store(resolve_url(url)) as store:
            total = await transfer.count_prune_candidates(
                store, older_than=age, keep_last=keep_last
            )
            with _progress(output, "pruning", total) as advance:
                return await transfer.prune(
                    store, older_than=age, keep_last=keep_last, dry_run=dry_run, on_batch=advance
                )

    report = _execute(output, work())
    if output.as_json:
        output.json(report)
        return
    verb = "would remove" if report.dry_run else "removed"
    cutoff = _when(report.cutoff)
    if report.mode == "sessions":
        text = (
            f"{verb} {report.sessions} sessions not updated since {cutoff} UTC, with "
            f"{report.messages} messages and {report.states} states"
        )
    else:
        text = (
            f"{verb} {report.messages} messages older than {cutoff} UTC from {report.sessions} "
            f"sessions, keeping each session's newest {report.keep_last}"
        )
    output.out.print(Text(text))


# ---------------------------------------------------------------------- demo


@app.command()
def demo(url: UrlOption = None, verbose: VerboseOption = False) -> None:
    """Run the offline agent demo (no network, no API key)."""
    output = Output(False, verbose)
    try:
        module = importlib.import_module("mofa_persist.demo")
    except ModuleNotFoundError as error:
        if error.name != "mofa_persist.demo":
            raise output.fail(_describe(error)) from None
        raise output.fail(
            "the demo is not part of this version of mofa-persist (it comes with the agents "
            "feature)"
        ) from None
    main_function = getattr(module, "main", None)
    if not callable(main_function):
        raise output.fail("mofa_persist.demo has no main()")
    with _database_url(url):
        _run_demo(output, main_function)


@contextlib.contextmanager
def _database_url(url: str | None) -> Iterator[None]:
    """The demo reads DATABASE_URL; set it for the demo only, then put it back."""
    if url is None:
        yield
        return
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous


def _run_demo(output: Output, main_function: Callable[..., Any]) -> None:
    try:
        # The demo parses its own arguments: give it none rather than this command's argv.
        takes_argv = bool(inspect.signature(main_function).parameters)
        result = main_function([]) if takes_argv else main_function()
        if inspect.isawaitable(result):
            result = _execute(output, _awaited(result))
    except typer.Exit:
        raise
    except SystemExit as done:
        result = done.code
    except Exception as error:  # the demo's own failure: one line, like every command
        if output.verbose:
            output.err.print(Text("".join(traceback.format_exception(error))))
        raise output.fail(_describe(error)) from None
    if isinstance(result, int) and result:
        raise typer.Exit(result)


async def _awaited(result: Any) -> Any:
    return await result


# ---------------------------------------------------------------------- entry point


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mofa-persist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Durable memory for LLM agents: migrations, inspection, export/import, copy, retention."""


def main() -> None:
    """The ``mofa-persist`` console script."""
    app(prog_name="mofa-persist")


if __name__ == "__main__":
    main()
