"""The read path's conversion caches (mofa_persist.sql): values that repeat between reads are
converted once, and no caller ever shares a mutable value with another."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from mofa_persist import Store, sql, telemetry


async def test_rereads_give_each_caller_its_own_metadata(store: Store) -> None:
    session = await store.create_session(metadata={"topic": "x"})
    await store.append_messages(
        session.id,
        [
            {"role": "user", "content": "a", "metadata": {"tokens": 1, "model": "m"}},
            {"role": "user", "content": "b", "metadata": {"tokens": 1, "model": "m"}},
            {"role": "user", "content": "c", "metadata": {"nested": {"k": [1, 2]}}},
            {"role": "user", "content": "d"},
        ],
    )
    first = await store.get_messages(session.id, limit=10)
    first[0].metadata["tokens"] = 99
    first[2].metadata["nested"]["k"].append(3)
    first[3].metadata["added"] = True
    assert first[0].metadata is not first[1].metadata
    assert first[1].metadata == {"tokens": 1, "model": "m"}
    again = await store.get_messages(session.id, limit=10)
    assert [m.metadata for m in again] == [
        {"tokens": 1, "model": "m"},
        {"tokens": 1, "model": "m"},
        {"nested": {"k": [1, 2]}},
        {},
    ]
    assert [m.id for m in again] == [m.id for m in first]
    assert [m.created_at for m in again] == [m.created_at for m in first]
    assert all(m.created_at.tzinfo is not None for m in again)
    assert all(m.created_at.utcoffset() == UTC.utcoffset(None) for m in again)

    page = await store.list_sessions()
    page.items[0].metadata["topic"] = "changed"
    assert (await store.list_sessions()).items[0].metadata == {"topic": "x"}
    assert (await store.get_session(session.id)).metadata == {"topic": "x"}


def test_cached_conversions_equal_fresh_ones() -> None:
    texts = [uuid.uuid4().hex for _ in range(5)]
    fresh = [uuid.UUID(hex=text) for text in texts]
    for _ in range(2):  # a miss, then a hit
        found = sql.hex_uuids(texts)
        assert found == fresh
        assert all(type(value) is uuid.UUID for value in found)
        assert [value.is_safe for value in found] == [uuid.SafeUUID.unknown] * 5
    stamps = ["2026-01-02 03:04:05.000006", "2026-01-02 03:04:05.000007"]
    lane = sql.Lane()
    for _ in range(2):
        times = lane.times(stamps)
        assert times == [datetime(2026, 1, 2, 3, 4, 5, 6 + i, tzinfo=UTC) for i in range(2)]
        assert all(value.tzinfo is UTC for value in times)


@pytest.mark.parametrize(
    ("text", "cached"),
    [
        ('{"a":1,"b":"x","c":null,"d":true,"e":1.5}', True),
        ("{}", True),
        ('{"a":[1]}', False),
        ('{"a":{"b":1}}', False),
        ('{"a":NaN}', False),
        ('{"a":Infinity}', False),
    ],
)
def test_only_flat_documents_are_cached(text: str, cached: bool) -> None:
    sql._document_cache.clear()
    first = sql.documents([text, text])
    assert first[0] is not first[1]
    assert (text in sql._document_cache) is cached
    second = sql.documents([text])
    assert second[0] is not first[0]
    if cached:
        assert second[0] is not sql._document_cache[text]
        assert second == [sql._document_cache[text]]


def test_documents_keep_refusing_what_is_not_an_object() -> None:
    for _ in range(2):
        with pytest.raises(TypeError):
            sql.documents(["[1, 2]"])
    assert sql.documents([" {}"]) == [{}]  # leading whitespace: json.loads decides


def test_caches_stay_bounded() -> None:
    texts = [uuid.uuid4().hex for _ in range(sql.CACHE_SIZE + 10)]
    big = [uuid.uuid4().hex for _ in range(sql.CACHED_READ_ROWS + 1)]
    assert sql.hex_uuids(big) == [uuid.UUID(hex=text) for text in big]
    assert big[0] not in sql._uuid_cache
    for start in range(0, len(texts), 50):
        sql.hex_uuids(texts[start : start + 50])
        assert len(sql._uuid_cache) <= sql.CACHE_SIZE + 50
    long_text = '{"a":"' + "x" * sql.CACHED_DOCUMENT_CHARS + '"}'
    sql.documents([long_text])
    assert long_text not in sql._document_cache


def test_unconfigured_fast_check_agrees_with_the_providers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if telemetry._tracer is None:
        pytest.skip("opentelemetry-api is not installed")
    from opentelemetry import metrics, trace
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    def by_the_calls() -> bool:
        return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) and isinstance(
            metrics.get_meter_provider(), _ProxyMeterProvider
        )

    assert telemetry._unconfigured() == by_the_calls()
    if telemetry._unset_check is not None:
        tracers: Any = telemetry._unset_check[0]
        monkeypatch.setattr(tracers, "_TRACER_PROVIDER", object())
        assert not telemetry._unconfigured()
