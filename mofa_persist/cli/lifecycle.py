"""Lifecycle commands: ``prune`` (by age, or by a retention policy), ``erase`` and ``erasures``.

Thin shells around the store's ``apply_retention``, ``erase_user``/``erase_tenant`` and
``list_erasures`` (and :func:`mofa_persist.transfer.prune` for the older ``--older-than``
form). Every deletion runs through the ``--tenant`` view when one is given, so the library,
not this module, keeps it inside that tenant.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import timedelta
from pathlib import Path  # noqa: TC003  (Typer reads the command signatures at runtime)
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from .. import transfer
from ..errors import InvalidInputError
from ..lifecycle import RetentionPolicy, parse_age
from .app import Output, app, checked, execute, on_store, progress, when
from .database import display, open_store
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
    from ..lifecycle import Erasure, RetentionReport
    from ..store import Store

#: The rule options of ``prune``, by the policy field each sets.
RULE_OPTIONS = {
    "message_age": "--message-age",
    "messages_per_session": "--messages-per-session",
    "idle_session_age": "--idle-session-age",
    "state_versions": "--state-versions",
    "api_call_age": "--api-call-age",
    "checkpoints_per_thread": "--checkpoints-per-thread",
}


def _option(flag: str, help_text: str) -> Any:
    return typer.Option(flag, help=help_text, show_default=False)


# ---------------------------------------------------------------------- prune


@app.command()
def prune(
    older_than: Annotated[
        str | None, _option("--older-than", "Age cutoff: 30d, 12h, 90m, 2w (the older form).")
    ] = None,
    keep_last: Annotated[
        int | None,
        typer.Option(
            "--keep-last",
            min=0,
            help="With --older-than: prune old MESSAGES instead of sessions, keeping each "
            "session's newest N.",
        ),
    ] = None,
    policy_file: Annotated[
        Path | None, _option("--policy", "A retention policy file (TOML); see docs/cli.md.")
    ] = None,
    message_age: Annotated[
        str | None, _option("--message-age", "Delete messages older than this (90d).")
    ] = None,
    messages_per_session: Annotated[
        int | None, _option("--messages-per-session", "Keep each session's newest N messages.")
    ] = None,
    idle_session_age: Annotated[
        str | None, _option("--idle-session-age", "Delete sessions idle this long, whole.")
    ] = None,
    state_versions: Annotated[
        int | None, _option("--state-versions", "Keep each session's newest N states (N >= 1).")
    ] = None,
    api_call_age: Annotated[
        str | None, _option("--api-call-age", "Delete provider calls older than this.")
    ] = None,
    checkpoints_per_thread: Annotated[
        int | None,
        _option(
            "--checkpoints-per-thread",
            "Keep each LangGraph thread's newest N checkpoints (N >= 1).",
        ),
    ] = None,
    tenant: TenantOption = None,
    user: UserOption = None,
    agent: AgentOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be removed.")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=10_000,
            show_default=False,
            help="Rows per transaction with a policy (default 1000); sessions per transaction "
            "with --older-than (default 500).",
        ),
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Retention: apply a policy (--policy FILE and/or the rule options), or the older form
    --older-than AGE [--keep-last N].

    A policy deletes, a short batch per transaction, whatever any of its rules no longer
    keeps; rule options override the file's rules. --older-than deletes sessions not updated
    for that long (with their messages and states), or with --keep-last N only their old
    messages beyond the newest N.
    """
    output = Output(as_json, verbose)
    flags: dict[str, str | int] = {
        name: value
        for name, value in (
            ("message_age", message_age),
            ("messages_per_session", messages_per_session),
            ("idle_session_age", idle_session_age),
            ("state_versions", state_versions),
            ("api_call_age", api_call_age),
            ("checkpoints_per_thread", checkpoints_per_thread),
        )
        if value is not None
    }
    by_age = older_than is not None or keep_last is not None
    by_policy = policy_file is not None or bool(flags)
    if by_age and by_policy:
        raise output.fail(
            "--older-than/--keep-last cannot be mixed with --policy or the rule options "
            f"({', '.join(RULE_OPTIONS.values())}); use one form or the other",
            2,
        )
    if not by_age and not by_policy:
        raise output.fail(
            "say what to prune: --policy FILE and/or rule options such as --message-age 90d, "
            "or --older-than AGE",
            2,
        )
    if older_than is None and keep_last is not None:
        raise output.fail("--keep-last needs --older-than", 2)
    owners = checked(output, lambda: Owners.parse(tenant, user, agent))
    database = checked(output, lambda: resolve_url(url))
    if older_than is not None:
        age = checked(output, lambda: transfer.parse_age(older_than))
        _prune_by_age(output, database, owners, age, keep_last, dry_run, batch_size)
        return
    checked(output, lambda: owners.need_tenant("prune --policy"))
    policy = checked(output, lambda: build_policy(policy_file, flags))
    _apply_policy(output, database, owners, policy, dry_run, batch_size or 1000)


def build_policy(path: Path | None, flags: dict[str, str | int]) -> RetentionPolicy:
    """The file's policy (if any) with each rule given as an option put over it."""
    base = RetentionPolicy() if path is None else RetentionPolicy.from_toml(path)
    given: dict[str, Any] = {}
    for name, value in flags.items():
        option = RULE_OPTIONS[name]
        try:
            given[name] = parse_age(value) if isinstance(value, str) else value
            RetentionPolicy(**{name: given[name]})  # checks the value alone, naming its option
        except InvalidInputError as error:
            raise InvalidInputError(f"{option}: {error}") from None
    policy = dataclasses.replace(base, **given)
    if policy.empty:
        raise InvalidInputError(
            f"the retention policy in {path} has no rule; set at least one of "
            f"{', '.join(RULE_OPTIONS)}"
        )
    return policy


def age_text(age: timedelta) -> str:
    """An age as a policy file writes it: ``90d`` rather than ``7776000s``."""
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def policy_rules(policy: RetentionPolicy) -> dict[str, str | int]:
    """The policy's rules, ages as ``90d``: what ``--json`` and the summary line show."""
    rules: dict[str, str | int] = {}
    for name in RULE_OPTIONS:
        value = getattr(policy, name)
        if value is not None:
            rules[name] = age_text(value) if isinstance(value, timedelta) else value
    return rules


def _apply_policy(
    output: Output,
    url: str,
    owners: Owners,
    policy: RetentionPolicy,
    dry_run: bool,
    batch_size: int,
) -> None:
    verb = "counting" if dry_run else "deleting"

    async def work(view: Store) -> RetentionReport:
        with progress(output, "applying the retention policy", None) as advance:
            return await view.apply_retention(
                policy,
                dry_run=dry_run,
                batch_size=batch_size,
                on_progress=lambda table, rows: advance(rows, description=f"{verb} {table}"),
            )

    report = on_store(output, url, work, owners)
    rules = policy_rules(policy)
    if output.as_json:
        output.json(
            {
                "dry_run": report.dry_run,
                "ran_at": report.ran_at,
                "view": owners.selection().as_dict(),
                "policy": rules,
                "counts": report.counts,
                "total": report.total,
            }
        )
        return
    said = "would delete" if report.dry_run else "deleted"
    where = owners.describe()
    text = "  ".join(f"{name}={value}" for name, value in rules.items())
    output.out.print(Text(f"{said} {report.total} rows ({where}); policy: {text}"))
    output.out.print(_counts_table(report.counts, report.total))


def _counts_table(counts: dict[str, int], total: int) -> Table:
    table = Table("table", Column("rows", justify="right"))
    for name, rows in counts.items():
        table.add_row(name, str(rows))
    table.add_row("total", str(total), style="bold")
    return table


def _prune_by_age(
    output: Output,
    url: str,
    owners: Owners,
    age: timedelta,
    keep_last: int | None,
    dry_run: bool,
    batch_size: int | None,
) -> None:
    selection = owners.selection()
    sizes: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}

    async def work() -> transfer.PruneReport:
        async with await open_store(url) as root:
            store = owners.view(root)
            total = await transfer.count_prune_candidates(
                store, older_than=age, keep_last=keep_last, selection=selection
            )
            with progress(output, "pruning", total) as advance:
                return await transfer.prune(
                    store,
                    older_than=age,
                    keep_last=keep_last,
                    dry_run=dry_run,
                    selection=selection,
                    on_batch=advance,
                    **sizes,
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


# ---------------------------------------------------------------------- erase

NO_AGENT = "an erasure covers all of a person's agents, so --agent cannot narrow it"


@app.command()
def erase(
    user: Annotated[
        str | None, _option("--user", "Erase this user (only within --tenant, if given).")
    ] = None,
    tenant: Annotated[
        str | None,
        _option("--tenant", "Erase this tenant; with --user, the tenant to erase the user in."),
    ] = None,
    agent: Annotated[str | None, _option("--agent", "Refused: " + NO_AGENT + ".")] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask; the rows are deleted for good.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=10_000, help="Rows deleted per transaction.")
    ] = 1000,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Erase every row of one user (--user) or one tenant (--tenant) from every table, and
    leave an audit record (see `mofa-persist erasures`). Asks first unless --yes.

    With --tenant T --user U, user U is erased within tenant T only.
    """
    output = Output(as_json, verbose)
    if user is None and tenant is None:
        raise output.fail("say who to erase: --user ID or --tenant ID", 2)
    if agent is not None:
        raise output.fail(NO_AGENT, 2)
    owners = checked(output, lambda: Owners.parse(tenant, user, None))
    if owners.user is not None:
        inside = "" if owners.tenant is None else f" in tenant {owners.tenant}"
        what = f"user {owners.user}{inside}"
    else:
        what = f"tenant {owners.tenant}"
    database = checked(output, lambda: resolve_url(url))
    if not yes:
        if not sys.stdin.isatty():
            raise output.fail(f"erase deletes every row of {what} for good; pass --yes to confirm")
        typer.confirm(
            f"Erase every row of {what} from {display(database)}? It cannot be undone", abort=True
        )

    async def work(store: Store) -> Erasure:
        view = Owners(tenant=owners.tenant).view(store)  # a user is erased in the whole tenant
        with progress(output, f"erasing {what}", None):
            if owners.user is not None:
                return await view.erase_user(owners.user, batch_size=batch_size)
            assert owners.tenant is not None
            return await view.erase_tenant(owners.tenant, batch_size=batch_size)

    record = on_store(output, database, work)
    if output.as_json:
        output.json(record)
        return
    total = sum(record.counts.values())
    output.out.print(Text(f"erased {what}: {total} rows; audit record {record.id}"))
    output.out.print(_counts_table(record.counts, total))


# ---------------------------------------------------------------------- erasures


@app.command()
def erasures(
    user: Annotated[str | None, _option("--user", "Only the erasures of this user id.")] = None,
    tenant: Annotated[
        str | None,
        _option("--tenant", "Only erasures of this tenant, or of users erased within it."),
    ] = None,
    agent: Annotated[str | None, _option("--agent", "Refused: " + NO_AGENT + ".")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most N.")] = 100,
    url: UrlOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """List erasure audit records, newest first: kind, subject hash, rows deleted, and when
    (an erasure that never finished shows as interrupted: run it again)."""
    output = Output(as_json, verbose)
    if agent is not None:
        raise output.fail(NO_AGENT, 2)
    owners = checked(output, lambda: Owners.parse(tenant, user, None))
    database = checked(output, lambda: resolve_url(url))
    records = on_store(
        output,
        database,
        lambda view: view.list_erasures(user_id=owners.user, limit=limit),
        Owners(tenant=owners.tenant),
    )
    if output.as_json:
        output.json(records)
        return
    table = Table(
        Column("id", no_wrap=True),
        "kind",
        Column("subject hash", no_wrap=True),
        "rows deleted",
        Column("started (UTC)", no_wrap=True),
        Column("finished (UTC)", no_wrap=True),
    )
    for record in records:
        rows = ", ".join(f"{name} {count}" for name, count in record.counts.items() if count)
        table.add_row(
            str(record.id),
            record.kind,
            record.subject_hash[:12],
            rows or "-",
            when(record.started_at),
            "interrupted" if record.finished_at is None else when(record.finished_at),
        )
    output.out.print(table)
