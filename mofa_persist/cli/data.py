"""Data commands: ``export``, ``import``, ``copy`` and ``prune``.

Thin shells around :mod:`mofa_persist.transfer`: they parse the selection, open the stores,
draw a progress bar and report. An export to a file appears only once it is complete.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path  # noqa: TC003  (Typer reads the command signatures at runtime)
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .. import transfer
from ..validate import coerce_uuid
from .app import Output, app, execute, progress, when
from .database import open_store
from .options import (
    AgentOption,
    BatchOption,
    JsonOption,
    SessionOption,
    TenantOption,
    UrlOption,
    UserOption,
    VerboseOption,
    resolve_url,
)

if TYPE_CHECKING:
    from ..store import Store


def _selection(
    session: str | None,
    user: str | None,
    tenant: str | None,
    agent: str | None = None,
) -> transfer.Selection:
    return transfer.Selection(
        session_id=coerce_uuid("--session", session, optional=True),
        user_id=coerce_uuid("--user", user, optional=True),
        tenant_id=coerce_uuid("--tenant", tenant, optional=True),
        agent_id=coerce_uuid("--agent", agent, optional=True),
    )


def _counted(counts: transfer.Counts) -> str:
    return (
        f"{counts.sessions} sessions, {counts.messages} messages, {counts.states} states, "
        f"{counts.api_calls} api calls"
    )


# ---------------------------------------------------------------------- export


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
            with progress(output, "exporting", total.total) as advance:
                if out is None:
                    return await _export_to(store, sys.stdout, selection, batch_size, advance)
                return await _export_file(store, out, selection, batch_size, advance)

    counts = execute(output, work())
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


# ---------------------------------------------------------------------- import


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
            with progress(output, "validating", size, in_bytes=True) as advance:
                counts = await transfer.validate_file(store, file, on_bytes=advance)
            if check:
                return counts, None
            with progress(output, "importing", size, in_bytes=True) as advance:
                report = await transfer.import_jsonl(
                    store, file, batch_size=batch_size, on_bytes=advance, validated=True
                )
            return counts, report

    counts, report = execute(output, work())
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
            with progress(output, "copying sessions", total.sessions) as advance:
                return await transfer.copy_data(
                    src,
                    dst,
                    selection,
                    batch_size=batch_size,
                    on_session=lambda _id, _outcome: advance(1),
                )

    report = execute(output, work())
    _report_copy(output, report)
    if not report.ok:
        problems = len(report.conflicts) + len(report.mismatches)
        raise output.fail(f"copy finished with {problems} problems (see above)")


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
            with progress(output, "pruning", total) as advance:
                return await transfer.prune(
                    store, older_than=age, keep_last=keep_last, dry_run=dry_run, on_batch=advance
                )

    report = execute(output, work())
    if output.as_json:
        output.json(report)
        return
    verb = "would remove" if report.dry_run else "removed"
    cutoff = when(report.cutoff)
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
