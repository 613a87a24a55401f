"""Provider calls: recorded in their own transaction, summed by usage(), kept after deletion."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from mofa_persist import ApiCall, InvalidInputError, NotFoundError, Store


async def test_record_api_call_copies_the_sessions_owner(scoped_store: Store) -> None:
    user, agent = uuid.uuid4(), uuid.uuid4()
    session = await scoped_store.create_session(user_id=user, agent_id=agent)
    call = await scoped_store.record_api_call(
        session_id=session.id,
        model="gpt-test",
        status="success",
        latency_ms=120,
        prompt_tokens=10,
        completion_tokens=5,
        provider="openai",
    )
    assert isinstance(call, ApiCall)
    assert call.total_tokens == 15
    assert (call.tenant_id, call.user_id, call.agent_id) == (session.tenant_id, user, agent)


async def test_usage_sums_tokens_failures_and_latency(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    for latency in range(1, 101):  # latencies 1..100 ms
        await scoped_store.record_api_call(
            session_id=session.id,
            model="m",
            status="success" if latency <= 90 else "rate_limited",
            latency_ms=latency,
            prompt_tokens=2,
            completion_tokens=1,
        )
    usage = await scoped_store.usage(session_id=session.id)
    assert usage.calls == 100 and usage.failures == 10
    assert usage.by_status == {"success": 90, "rate_limited": 10}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (200, 100, 300)
    assert (usage.latency_p50_ms, usage.latency_p95_ms, usage.latency_p99_ms) == (50, 95, 99)


async def test_usage_filters_by_time_and_scope(store: Store) -> None:
    mine, theirs = store.scoped(tenant_id=uuid.uuid4()), store.scoped(tenant_id=uuid.uuid4())
    own = await mine.create_session()
    other = await theirs.create_session()
    await mine.record_api_call(session_id=own.id, model="m", status="success", latency_ms=5)
    await theirs.record_api_call(session_id=other.id, model="m", status="failed", latency_ms=9)
    assert (await mine.usage()).calls == 1
    assert (await theirs.usage()).failures == 1
    future = datetime.now(UTC) + timedelta(hours=1)
    assert (await mine.usage(since=future)).calls == 0
    assert (await mine.usage(until=future)).calls == 1
    empty = await mine.usage(session_id=uuid.uuid4())
    assert empty.calls == 0 and empty.latency_p50_ms is None
    with pytest.raises(NotFoundError):
        await mine.record_api_call(session_id=other.id, model="m", status="success", latency_ms=1)


async def test_api_calls_outlive_their_session(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    await scoped_store.record_api_call(
        session_id=session.id, model="m", status="timeout", latency_ms=30000, error="read timeout"
    )
    await scoped_store.delete_session(session.id)
    usage = await scoped_store.usage()
    assert usage.calls == 1 and usage.by_status == {"timeout": 1}


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "ok"},
        {"model": ""},
        {"latency_ms": -1},
        {"prompt_tokens": "5"},
        {"session_id": "nope"},
        {"error": b"bytes"},
    ],
    ids=repr,
)
async def test_bad_api_call_input_is_refused(scoped_store: Store, bad: dict[str, object]) -> None:
    args: dict[str, object] = {
        "session_id": None,
        "model": "m",
        "status": "success",
        "latency_ms": 1,
    }
    args.update(bad)
    with pytest.raises(InvalidInputError):
        await scoped_store.record_api_call(**args)  # type: ignore[arg-type]
    assert (await scoped_store.usage()).calls == 0


async def test_usage_refuses_naive_datetimes(scoped_store: Store) -> None:
    with pytest.raises(InvalidInputError):
        await scoped_store.usage(since=datetime(2020, 1, 1))
