"""The Typer app every command registers on, with what all commands share.

Shared: :class:`Output` (data to stdout, progress and errors to stderr), :func:`progress` and
:func:`execute`, which turns any failure into one ``error: ...`` line and an exit code instead
of a traceback (and SIGTERM into the same clean-up as Ctrl-C); :func:`checked` does the same
for input parsed before any I/O, and :func:`on_store` runs a command's work on the store at
``--url`` (or on a view of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import typer
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
from rich.text import Text

from .. import __version__
from ..errors import PersistenceError
from .database import open_store

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

    from ..store import Store
    from .views import Owners

T = TypeVar("T")

HELP = (
    "Durable memory for LLM agents: migrations, inspection, export/import/copy, retention, erasure."
)

app = typer.Typer(
    name="mofa-persist",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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
    """Options of ``mofa-persist`` itself; its help text is :data:`HELP`."""


# ---------------------------------------------------------------------- output


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

    def crash(self, error: Exception) -> typer.Exit:
        """An unexpected failure: one line, and the traceback too with ``--verbose``."""
        if self.verbose:
            self.err.print(Text("".join(traceback.format_exception(error))))
        return self.fail(describe(error))


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


def when(value: datetime) -> str:
    """A timestamp as tables show it: UTC, to the second."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class Advance(Protocol):
    """Moves a progress bar by ``amount``; ``description`` relabels it (e.g. per table)."""

    def __call__(self, amount: int = 1, *, description: str | None = None) -> None: ...


@contextlib.contextmanager
def progress(
    output: Output, description: str, total: int | None, *, in_bytes: bool = False
) -> Iterator[Advance]:
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
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(amount: int = 1, *, description: str | None = None) -> None:
            bar.update(task, advance=amount, description=description)

        yield advance


# ---------------------------------------------------------------------- errors and exit codes


#: The exit code of a command stopped by SIGTERM, as a shell reports a process it killed.
TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM stopped the command, after its clean-up ran (not an ``Exception``, so no
    ``except Exception`` on the way out swallows it)."""


def execute(output: Output, work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; any failure becomes one line and an exit code, not a trace.

    SIGTERM cancels the work, as Ctrl-C does, so its clean-up runs on the way out (an open
    transaction never commits, connections close, a half-written export file is removed)
    before the command exits with 143. A second SIGTERM kills at once, should that hang.
    """
    try:
        return asyncio.run(_terminable(work))
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise output.fail("interrupted", 130) from None
    except Terminated:
        raise output.fail("terminated", TERMINATED) from None
    except Exception as error:  # the top of the command: every failure becomes one line
        raise output.crash(error) from None


async def _terminable(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it on SIGTERM (left alone where the event loop cannot handle
    signals: off the main thread, or on Windows)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL in a shell; a test runner may set one
    stopped = False

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        if before is not None:
            signal.signal(signal.SIGTERM, before)

    def stop() -> None:
        nonlocal stopped
        stopped = True
        restore()  # a second SIGTERM meets the handler from before: the default one kills
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, stop)
    except (NotImplementedError, RuntimeError, ValueError):
        return await work
    try:
        return await work
    except asyncio.CancelledError:
        if stopped:
            raise Terminated from None
        raise
    finally:
        if not stopped:
            restore()


def describe(error: BaseException) -> str:
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


def checked(output: Output, parse: Callable[[], T]) -> T:
    """Input parsed before any I/O (ids, ages, files): a bad value is one line too."""
    try:
        return parse()
    except PersistenceError as error:
        raise output.fail(describe(error)) from None


def on_store(
    output: Output,
    url: str,
    work: Callable[[Store], Coroutine[Any, Any, T]],
    owners: Owners | None = None,
) -> T:
    """Run ``work`` on the store at ``url`` (from ``resolve_url``; it must exist, at head),
    as :func:`execute` does; on the view of ``owners`` when they name a tenant."""

    async def opened() -> T:
        async with await open_store(url) as store:
            return await work(store if owners is None else owners.view(store))

    return execute(output, opened())
