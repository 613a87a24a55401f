"""Data commands: ``export``, ``import`` and ``copy``.

Thin shells around :mod:`mofa_persist.transfer`: they parse the selection, open the stores
(through the ``--tenant`` view, see :mod:`.views`), draw a progress bar and report. An export
to a file appears only once it is complete.
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
from .app import Output, app, checked, execute, progress
from .database import durable_url, open_store
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
from .views import Owners

if TYPE_CHECKING:
    from ..store import Store


def _parsed(
    session: str | None, tenant: str | None, user: str | None, agent: str | None
) -> tuple[Owners, transfer.Selection]:
    owners = Owners.parse(tenant, user, agent)
    return owners, owners.selection(coerce_uuid("--session", session, optional=True))


def _counted(counts: transfer.Counts) -> str:
    text = (
        f"{counts.sessions} sessions, {counts.messages} messages, {counts.states} states, "
        f"{counts.api_calls} api calls"
    )
    extra = {
        name.replace("_", " "): value
        for name, value in counts.as_dict().items()
        if name not in ("sessions", "messages", "states", "api_calls")
    }
    return text + "".join(f", {value} {name}" for name, value in extra.items())


# ---------------------------------------------------------------------- export


@app.command()
def export(
    session: SessionOption = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    everything: Annotated[bool, typer.Option("--all", help="Every session.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")
    ] = None,
    batch_size: BatchOption = transfer.DEFAULT_BATCH,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export sessions with their messages, states, provider calls, external keys, LangGraph
    checkpoints and Google ADK sessions and app/user state as JSON Lines.

    --session, --tenant, --user and --agent combine (AND); --all takes every session.
    Streams in constant memory; the format is in docs/export-format.md.
    """
    output = Output(as_json, verbose)
    narrowed = any(value is not None for value in (session, tenant, user, agent))
    if narrowed == everything:
        raise output.fail(
            "choose what to export: --all, or any of --session, --tenant, --user, --agent", 2
        )
    owners, selection = checked(output, lambda: _parsed(session, tenant, user, agent))
    database = checked(output, lambda: resolve_url(url))

    async def work() -> transfer.Counts:
        async with await open_store(database) as root:
            store = owners.view(root)
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
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    batch_size: BatchOption = transfer.DEFAULT_BATCH,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Import an export file: every line is validated first, then each session is written in
    one transaction. Importing the same file twice changes nothing; rows that exist with other
    content are reported as conflicts and never overwritten. With --tenant, a file holding
    rows outside that view is refused before anything is written."""
    output = Output(as_json, verbose)
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    checked(output, lambda: owners.need_tenant("import"))
    database = checked(output, lambda: resolve_url(url))

    async def work() -> tuple[transfer.Counts, transfer.ImportReport | None]:
        size = file.stat().st_size
        async with await open_store(database, create=not check) as root:
            store = owners.view(root)
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
    rows = (("inserted", report.inserted), ("unchanged", report.unchanged))
    names = list({name: None for _, counts in rows for name in counts.as_dict()})
    table = Table("", *(name.replace("_", " ") for name in names))
    for label, counts in rows:
        table.add_row(label, *(str(getattr(counts, name)) for name in names))
    output.out.print(table)
    for conflict in report.conflicts:
        output.out.print(Text(f"conflict: {conflict}", style="yellow"))


# ---------------------------------------------------------------------- copy


@app.command()
def copy(
    src_url: Annotated[str, typer.Argument(help="Copy from this database.")],
    dst_url: Annotated[str, typer.Argument(help="To this one (its schema is created).")],
    session: SessionOption = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    batch_size: BatchOption = transfer.DEFAULT_BATCH,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Copy sessions (default: all) with every row between any two backends.

    One transaction per session; run it again after an interruption and it resumes, skipping
    sessions already copied. Ends by verifying counts and a sha256 per session. --tenant
    reads and writes through that tenant's view at both ends.
    """
    output = Output(as_json, verbose)
    owners, selection = checked(output, lambda: _parsed(session, tenant, user, agent))
    checked(output, lambda: (durable_url(src_url, "SRC_URL"), durable_url(dst_url, "DST_URL")))

    async def work() -> transfer.CopyReport:
        async with (
            await open_store(src_url) as src_root,
            await open_store(dst_url, create=True) as dst_root,
        ):
            src, dst = owners.view(src_root), owners.view(dst_root)
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
