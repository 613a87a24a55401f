"""Hostile input on every backend: a table of nasty values and hypothesis properties.

Each input either round-trips exactly or raises ``InvalidInputError`` before anything is
written: never a driver error, never another exception type, never a partial write.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import tally
from common import backend_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mofa_persist
from mofa_persist import ConflictError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

MB = 1_000_000
INJECTIONS = [
    "'; DROP TABLE messages; --",
    '" OR "1"="1',
    "Robert'); DROP TABLE sessions;--",
    "1; SELECT pg_sleep(30); --",
    "' UNION SELECT id, tenant_id FROM sessions --",
    "%s %(name)s ? :name $1 {0} %%",
    "\\'; \\\\ \\x00 \\0 \\n",
    "`id`; DELETE FROM agent_state WHERE 1=1 /*",
    "'||(SELECT version())||'",
    "$$; COPY messages TO '/tmp/x'; $$",
]
UNICODE = [
    "😀👩‍👩‍👧‍👦🏳️‍🌈",  # 4-byte characters, ZWJ sequences
    "\u202eevil\u202c \u200b\u200d\ufeff",  # RTL override, zero widths, BOM
    "e\u0301 \u00e9",  # decomposed and composed é: must not be normalized
    "\u2028\u2029\r\n\t\x0b\x0c\x1b[31m",
    "\U0001d573\U0001d58a\U0001d591 \U0010ffff \ue000",  # fraktur, last code point, PUA
    "Ω≈ç√∫\u02dcµ≤≥÷ 田中さん ﷽ 𒐫",
]


def nested_list(depth: int) -> list[Any]:
    node: list[Any] = []
    for _ in range(depth - 1):
        node = [node]
    return node


def nested_dict(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"k": node}
    return node


@dataclass
class Case:
    id: str
    target: str  # what the value is passed as
    value: Any


def _cases() -> list[Case]:
    cases: list[Case] = []
    for index, text in enumerate(INJECTIONS + UNICODE):
        cases += [
            Case(f"text{index}-content", "content", text),
            Case(f"text{index}-metadata", "metadata", {text: text, "nested": {text: [text]}}),
            Case(f"text{index}-state", "state", {text: text}),
            Case(f"text{index}-title", "title", text),
            Case(f"text{index}-role", "role", text),
            Case(f"text{index}-session-id", "session_id", text),
        ]
    cases += [
        Case("content-10MB-ascii", "content", "a" * (10 * MB)),
        Case("content-10MB-emoji", "content", "😀" * (10 * MB // 4)),
        Case("content-over-12MiB", "content", "b" * (12 * 1024 * 1024 + 1)),
        Case("batch-2x10MB", "batch", [{"role": "user", "content": "c" * (10 * MB)}] * 2),
        Case("batch-good-then-bad", "batch", [{"role": "user", "content": "ok"}, {"role": "x"}]),
        Case(
            "batch-good-then-nan",
            "batch",
            [
                {"role": "user", "content": "ok"},
                {"role": "user", "content": "ok", "metadata": {"x": math.nan}},
            ],
        ),
        Case("batch-not-a-list", "batch", "user: hi"),
        Case("batch-dict", "batch", {"role": "user", "content": "hi"}),
        Case("metadata-1MB-string", "metadata", {"blob": "m" * MB}),
        Case("state-1MB-list", "state", {"numbers": list(range(150_000))}),
        Case("state-over-12MiB", "state", {"blob": "s" * (12 * 1024 * 1024)}),
        Case("metadata-1000-deep-list", "metadata", {"deep": nested_list(1000)}),
        Case("state-1000-deep-dict", "state", nested_dict(1000)),
        Case("state-30-deep-dict", "state", nested_dict(30)),
        Case("state-31-deep-dict", "state", nested_dict(31)),
        Case("metadata-nan", "metadata", {"x": math.nan}),
        Case("metadata-inf", "metadata", {"x": math.inf}),
        Case("state-minus-inf", "state", {"x": [-math.inf]}),
        Case("metadata-floats", "metadata", {"f": [1e308, 5e-324, -0.0, 1e16, 0.1, -2.5e-7]}),
        Case("metadata-int-2**64", "metadata", {"n": 2**64, "m": -(2**63) - 1}),
        Case("state-int-2**1000", "state", {"n": 2**1000, "m": -(10**40)}),
        Case("metadata-bool-none", "metadata", {"t": True, "f": False, "n": None, "": ""}),
        Case("metadata-nul", "metadata", {"k": "a\x00b"}),
        Case("metadata-nul-key", "metadata", {"a\x00": 1}),
        Case("content-nul", "content", "a\x00b"),
        Case("content-lone-surrogate", "content", "a\ud800b"),
        Case("state-lone-surrogate-key", "state", {"\udfff": 1}),
        Case("title-501-chars", "title", "t" * 501),
        Case("role-21-chars", "role", "a" * 21),
        Case("role-user-space", "role", "user "),
        Case("role-upper", "role", "USER"),
        Case("role-empty", "role", ""),
        Case("content-empty", "content", ""),
        Case("content-none", "content", None),
        Case("role-none", "role", None),
        Case("metadata-none", "metadata", None),
        Case("state-none", "state", None),
        Case("title-none", "title", None),
        Case("session-id-none", "session_id", None),
        Case("content-bytes", "content", b"bytes"),
        Case("role-bytes", "role", b"user"),
        Case("metadata-bytes-value", "metadata", {"b": b"\x00\xff"}),
        Case("state-bytearray", "state", {"b": bytearray(b"x")}),
        Case("session-id-bytes", "session_id", uuid.uuid4().bytes),
        Case("content-int", "content", 42),
        Case("content-list", "content", ["a"]),
        Case("role-int", "role", 1),
        Case("title-int", "title", 5),
        Case("metadata-list", "metadata", [1, 2]),
        Case("metadata-str", "metadata", '{"a": 1}'),
        Case("state-list", "state", [1]),
        Case("metadata-int-key", "metadata", {1: "x"}),
        Case("metadata-tuple", "metadata", {"t": (1, 2)}),
        Case("metadata-set", "metadata", {"s": {1}}),
        Case("metadata-datetime", "metadata", {"d": datetime.now(UTC)}),
        Case("metadata-decimal", "metadata", {"d": Decimal("1.1")}),
        Case("metadata-uuid", "metadata", {"u": uuid.uuid4()}),
        Case("metadata-object", "metadata", {"o": object()}),
        Case("session-id-empty", "session_id", ""),
        Case("session-id-garbage", "session_id", "not-a-uuid"),
        Case("session-id-33-hex", "session_id", "0" * 33),
        Case("session-id-g", "session_id", "0" * 31 + "g"),
        Case("session-id-int", "session_id", 12345),
        Case("session-id-float", "session_id", 1.5),
        Case("session-id-unknown", "session_id", str(uuid.uuid4())),
        Case("session-id-braces", "session_id", "{" + str(uuid.uuid4()) + "}"),
    ]
    for value in (2**63, 2**64, 2**70, 10**30, -1, -(2**63) - 1, True, 1.5, "3", None):
        cases += [
            Case(f"limit-{value!r:.12}", "limit", value),
            Case(f"before-seq-{value!r:.12}", "before_seq", value),
            Case(f"expected-version-{value!r:.12}", "expected_version", value),
            Case(f"state-version-{value!r:.12}", "version", value),
            Case(f"list-limit-{value!r:.12}", "list_limit", value),
            Case(f"tokens-{value!r:.12}", "tokens", value),
        ]
    cases += [Case("tokens-2**31", "tokens", 2**31), Case("tokens-2**40", "tokens", 2**40)]
    return cases


CASES = _cases()


async def _snapshot(store: mofa_persist.Store, sid: uuid.UUID) -> tuple[Any, ...]:
    session = await store.get_session(sid)
    return (
        await store.count_messages(sid),
        session.last_seq,
        session.state_version,
        session.title,
        len((await store.list_sessions(limit=1000)).items),
        (await store.usage()).calls,
    )


async def _try(store: mofa_persist.Store, sid: uuid.UUID, case: Case) -> bool:
    """Run the case; True if it was accepted (and then checked to round-trip)."""
    value = case.value
    if case.target == "content":
        sent = await store.append_message(sid, "user", value)
        got = await store.get_messages(sid, after_seq=sent.seq - 1, limit=1)
        assert got[0].content == value
    elif case.target == "metadata":
        sent = await store.append_message(sid, "user", "m", metadata=value)
        got = await store.get_messages(sid, after_seq=sent.seq - 1, limit=1)
        assert got[0].metadata == (value or {}) == sent.metadata
    elif case.target == "state":
        saved = await store.save_state(sid, value)
        loaded = await store.load_state(sid)
        assert loaded is not None
        assert loaded.state == value == saved.state
    elif case.target == "title":
        created = await store.create_session(title=value)
        assert (await store.get_session(created.id)).title == value
        await store.delete_session(created.id)
    elif case.target == "role":
        sent = await store.append_message(sid, value, "r")
        assert (await store.get_messages(sid, limit=1))[0].role == value == sent.role
    elif case.target == "batch":
        sent_batch = await store.append_messages(sid, value)
        got = await store.get_messages(sid, limit=len(sent_batch))
        assert [(m.role, m.content) for m in got] == [(i["role"], i["content"]) for i in value]
    elif case.target == "session_id":
        # Only refusal is acceptable for a malformed id; an unknown one is NotFoundError.
        try:
            await store.get_messages(value)
        except NotFoundError:
            with pytest.raises(NotFoundError):
                await store.append_message(value, "user", "to nowhere")
            return True
        raise AssertionError(f"reading messages of session id {value!r} succeeded")
    elif case.target in ("limit", "before_seq"):
        await store.get_messages(sid, **{case.target: value})
    elif case.target == "version":
        with contextlib.suppress(NotFoundError):
            await store.load_state(sid, version=value)
    elif case.target == "list_limit":
        await store.list_sessions(limit=value)
    elif case.target == "expected_version":
        with contextlib.suppress(ConflictError):
            await store.save_state(sid, {"v": 1}, expected_version=value)
    elif case.target == "tokens":
        call = await store.record_api_call(
            session_id=sid, model="m", status="success", latency_ms=1, prompt_tokens=value
        )
        assert (await store.usage(session_id=sid)).prompt_tokens >= (call.prompt_tokens or 0)
    else:  # pragma: no cover
        raise AssertionError(case.target)
    return True


@pytest.fixture
async def hostile_store(any_url: str) -> Any:
    async with await mofa_persist.connect(any_url) as store:
        yield store


async def test_table_of_nasty_inputs_round_trips_or_is_refused(
    hostile_store: mofa_persist.Store,
) -> None:
    store = hostile_store
    session = await store.create_session(title="hostile")
    await store.append_message(session.id, "user", "first")
    accepted = refused = 0
    wrong: list[str] = []
    for case in CASES:
        before = await _snapshot(store, session.id)
        try:
            await _try(store, session.id, case)
        except InvalidInputError:
            refused += 1
            after = await _snapshot(store, session.id)
            if after != before:
                wrong.append(f"{case.id}: refused but wrote something: {before} -> {after}")
        except AssertionError as error:
            wrong.append(f"{case.id}: accepted but changed: {str(error)[:200]}")
        except Exception as error:
            wrong.append(f"{case.id}: {type(error).__name__}: {str(error)[:200]}")
        else:
            accepted += 1
    assert not wrong, "\n".join(wrong)
    tally.add(
        "hostile-table",
        backend_of(str(store.url.sa_url)) if store.url.kind != "memory" else "memory",
        inputs=len(CASES),
        round_tripped=accepted,
        refused=refused,
    )


# ---------------------------------------------------------------- properties

#: Any Unicode text, sometimes with lone surrogates (which the store must refuse).
texts = st.text() | st.text(st.characters(exclude_categories=()), max_size=5)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
documents = st.dictionaries(texts, json_values, max_size=5)


@pytest.fixture
def runner_store(any_url: str) -> Iterator[tuple[asyncio.Runner, mofa_persist.Store]]:
    """A store on its own event loop, for hypothesis tests (which are synchronous)."""
    with asyncio.Runner() as runner:
        store = runner.run(mofa_persist.connect(any_url))
        try:
            yield runner, store
        finally:
            runner.run(store.close())


def _property(runner: asyncio.Runner, check: Callable[[], Awaitable[None]]) -> bool:
    """Run one example: True if accepted (and checked), False if refused cleanly."""
    try:
        runner.run(check())
    except InvalidInputError:
        return False
    return True


PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
SOAK_PROPERTY = settings(PROPERTY, max_examples=1000)


def _round_trip_property(
    runner_store: tuple[asyncio.Runner, mofa_persist.Store], config: settings, check_name: str
) -> None:
    runner, store = runner_store
    sid = runner.run(store.create_session()).id
    counts = {"examples": 0, "refused": 0}

    @config
    @given(content=texts, metadata=documents, state=documents)
    def prop(content: str, metadata: dict[str, Any], state: dict[str, Any]) -> None:
        async def check() -> None:
            before = await store.count_messages(sid)
            version = (await store.get_session(sid)).state_version
            try:
                turn = await store.record_turn(
                    sid, [{"role": "user", "content": content, "metadata": metadata}], state=state
                )
            except InvalidInputError:
                assert await store.count_messages(sid) == before
                assert (await store.get_session(sid)).state_version == version
                raise
            (message,) = await store.get_messages(sid, limit=1)
            assert message.content == content
            assert message.metadata == metadata == turn.messages[0].metadata
            loaded = await store.load_state(sid)
            assert loaded is not None
            assert loaded.state == state
            assert loaded.version == version + 1

        counts["examples"] += 1
        if not _property(runner, check):
            counts["refused"] += 1
            # Refusal is only for what the store documents as unstorable.
            assert (
                _has_nul((content, metadata, state))
                or _has_non_finite((metadata, state))
                or _has_surrogate((content, metadata, state))
                or _too_deep((metadata, state))
            ), (content, metadata, state)

    prop()
    tally.add(check_name, store.url.kind, **counts)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _walk(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _walk(item)


def _has_nul(node: Any) -> bool:
    return any(isinstance(v, str) and "\x00" in v for v in _walk(node))


def _has_non_finite(node: Any) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in _walk(node))


def _has_surrogate(node: Any) -> bool:
    return any(
        isinstance(v, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in v) for v in _walk(node)
    )


def _too_deep(node: Any, depth: int = 0) -> bool:
    if isinstance(node, dict):
        return depth > 30 or any(_too_deep(v, depth + 1) for v in node.values())
    if isinstance(node, (list, tuple)):
        return depth > 30 or any(_too_deep(v, depth + 1) for v in node)
    return False


def test_arbitrary_unicode_content_metadata_and_state_round_trip(
    runner_store: tuple[asyncio.Runner, mofa_persist.Store],
) -> None:
    _round_trip_property(runner_store, PROPERTY, "hypothesis-round-trip")


@pytest.mark.soak
def test_soak_arbitrary_content_metadata_and_state_round_trip(
    runner_store: tuple[asyncio.Runner, mofa_persist.Store],
) -> None:
    _round_trip_property(runner_store, SOAK_PROPERTY, "hypothesis-round-trip-soak")
