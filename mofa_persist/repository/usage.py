"""Provider calls: recording each LLM call and summing usage within the view."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select

from ..backend import scope_filter
from ..convert import _now
from ..errors import ConflictError, InvalidInputError
from ..ids import uuid7
from ..records import API_CALL_STATUSES, ApiCall, Usage
from ..validate import check_limit, check_text, coerce_uuid
from . import idempotency
from .core import StoreCore
from .tables import c_t, s_t

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.sql.elements import ColumnElement


class UsageApi(StoreCore):
    """Provider calls: recording each LLM call and summing usage within the view."""

    async def record_api_call(
        self,
        *,
        session_id: uuid.UUID | str | None,
        model: str,
        status: str,
        latency_ms: int,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        error: str | None = None,
        provider: str | None = None,
        idempotency_key: str | None = None,
    ) -> ApiCall:
        """Record one LLM provider call, in a transaction of its own (failed calls too).

        ``status`` is one of success, failed, timeout, rate_limited, cancelled. The session's
        tenant, user and agent are copied onto the row so usage survives session deletion.
        ``idempotency_key`` is unique per session, or per tenant for calls of no session.
        """
        sid = coerce_uuid("session_id", session_id, optional=True)
        checked_model = check_text("model", model, max_bytes=800)
        if not checked_model or len(checked_model) > 200:
            raise InvalidInputError("model must be 1 to 200 characters")
        if status not in API_CALL_STATUSES:
            raise InvalidInputError(
                f"status must be one of {', '.join(sorted(API_CALL_STATUSES))}; got {status!r}"
            )
        latency = check_limit("latency_ms", latency_ms, optional=False)
        tokens = {
            name: check_limit(name, value)
            for name, value in (
                ("prompt_tokens", prompt_tokens),
                ("completion_tokens", completion_tokens),
                ("total_tokens", total_tokens),
            )
        }
        if tokens["total_tokens"] is None and None not in (
            tokens["prompt_tokens"],
            tokens["completion_tokens"],
        ):
            tokens["total_tokens"] = (tokens["prompt_tokens"] or 0) + (
                tokens["completion_tokens"] or 0
            )
        error_text = None if error is None else check_text("error", error)[:10_000]
        provider_name = None if provider is None else check_text("provider", provider)[:50]
        call_id = uuid7()
        now = _now()
        key = idempotency.check_key(idempotency_key)
        keyed = None
        if key is not None:
            scope = (
                idempotency.session_scope(sid)
                if sid is not None
                else idempotency.tenant_scope(self._scope.tenant_id)
            )
            payload = [checked_model, status, latency, tokens, error_text, provider_name]
            keyed = idempotency.KeyedCall.of(key, scope, "record_api_call", payload)

        async def replay(conn: AsyncConnection) -> ApiCall | None:
            if keyed is None:
                return None
            if sid is not None:
                await self._require_session(conn, sid)  # never replay across views
            found = await idempotency.find(conn, keyed)
            return None if found is None else await idempotency.replay_api_call(conn, keyed, found)

        async def work(conn: AsyncConnection) -> ApiCall:
            replayed = await replay(conn)
            if replayed is not None:
                return replayed
            owner: Any = None
            if sid is not None:
                owner = (
                    await conn.execute(
                        select(s_t.c.tenant_id, s_t.c.user_id, s_t.c.agent_id).where(
                            *self._session_filter(sid)
                        )
                    )
                ).first()
                if owner is None:
                    raise self._not_found(sid)
            tenant = owner.tenant_id if owner is not None else self._scope.tenant_id
            user = owner.user_id if owner is not None else self._scope.user_id
            agent = owner.agent_id if owner is not None else self._scope.agent_id
            record = ApiCall(
                id=call_id,
                session_id=sid,
                tenant_id=tenant,
                user_id=user,
                agent_id=agent,
                provider=provider_name,
                model=checked_model,
                status=status,
                prompt_tokens=tokens["prompt_tokens"],
                completion_tokens=tokens["completion_tokens"],
                total_tokens=tokens["total_tokens"],
                latency_ms=latency or 0,
                error=error_text,
                created_at=now,
            )
            await conn.execute(insert(c_t), dataclasses.asdict(record))
            if keyed is not None:
                await idempotency.remember(
                    conn,
                    keyed,
                    {"api_call": str(call_id)},
                    session_id=sid,
                    owner=(tenant, user),
                )
            return record

        try:
            return await self._run(work, write=True, action="record a provider call")
        except ConflictError:
            if keyed is None:
                raise
            # Lost the race for the key: the winner's call.
            replayed = await self._run(replay, write=False, action="record a provider call")
            if replayed is None:
                raise
            return replayed

    async def usage(
        self,
        *,
        session_id: uuid.UUID | str | None = None,
        user_id: uuid.UUID | str | None = None,
        tenant_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Usage:
        """Calls, failures, token sums and latency percentiles of recorded provider calls.

        Filters combine with AND and with the store's scope; ``since`` is inclusive and
        ``until`` exclusive (timezone-aware datetimes).
        """
        filters: list[ColumnElement[bool]] = []
        for name, value in (
            ("session_id", session_id),
            ("user_id", user_id),
            ("tenant_id", tenant_id),
            ("agent_id", agent_id),
        ):
            checked = coerce_uuid(name, value, optional=True)
            if checked is not None:
                filters.append(c_t.c[name] == checked)
        filters += scope_filter(self._scope, c_t)
        for bound_name, bound in (("since", since), ("until", until)):
            if bound is not None and (not isinstance(bound, datetime) or bound.tzinfo is None):
                raise InvalidInputError(f"{bound_name} must be a timezone-aware datetime")
        if since is not None:
            filters.append(c_t.c.created_at >= since)
        if until is not None:
            filters.append(c_t.c.created_at < until)
        totals = (
            select(
                c_t.c.status,
                func.count(),
                func.coalesce(func.sum(c_t.c.prompt_tokens), 0),
                func.coalesce(func.sum(c_t.c.completion_tokens), 0),
                func.coalesce(func.sum(c_t.c.total_tokens), 0),
            )
            .where(*filters)
            .group_by(c_t.c.status)
        )

        async def work(conn: AsyncConnection) -> Usage:
            by_status: dict[str, int] = {}
            prompt = completion = total = 0
            for status, count, p_tokens, c_tokens, t_tokens in await conn.execute(totals):
                by_status[status] = int(count)
                prompt += int(p_tokens)
                completion += int(c_tokens)
                total += int(t_tokens)
            calls = sum(by_status.values())
            percentiles = await _latency_percentiles(conn, filters, calls, (0.5, 0.95, 0.99))
            return Usage(
                calls=calls,
                failures=calls - by_status.get("success", 0),
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=total,
                latency_p50_ms=percentiles[0],
                latency_p95_ms=percentiles[1],
                latency_p99_ms=percentiles[2],
                by_status=by_status,
            )

        return await self._run(work, write=False, action="read usage", stale_ok=True)


async def _latency_percentiles(
    conn: AsyncConnection,
    filters: list[ColumnElement[bool]],
    calls: int,
    fractions: tuple[float, ...],
) -> list[float | None]:
    """Nearest-rank percentiles of latency_ms, computed in the database on every dialect.

    Each one is an ORDER BY ... LIMIT 1 OFFSET k, so no latency list is sent to Python.
    """
    if calls == 0:
        return [None for _ in fractions]
    results: list[float | None] = []
    for fraction in fractions:
        rank = max(1, math.ceil(fraction * calls))
        stmt = (
            select(c_t.c.latency_ms)
            .where(*filters)
            .order_by(c_t.c.latency_ms)
            .limit(1)
            .offset(rank - 1)
        )
        value = (await conn.execute(stmt)).scalar()
        results.append(None if value is None else float(value))
    return results
