"""Bad input is refused with InvalidInputError before anything is written; JSON is exact."""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from mofa_persist import InvalidInputError, Store
from mofa_persist.validate import MAX_JSON_DEPTH

if TYPE_CHECKING:
    from conftest import Quirks


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"d": doc}
    return doc


BAD_IDS = ["not-a-uuid", "", "1234", "g" * 32, 42, 3.5, b"\x00" * 16, ["x"], True]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_session_ids_are_refused(scoped_store: Store, bad: object) -> None:
    with pytest.raises(InvalidInputError):
        await scoped_store.get_session(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await scoped_store.create_session(session_id=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ["robot", "", "USER", "a" * 21, None, 1, b"user"], ids=repr)
async def test_unknown_roles_are_refused(scoped_store: Store, role: object) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.append_message(session.id, role, "x")  # type: ignore[arg-type]
    assert await scoped_store.count_messages(session.id) == 0


@pytest.mark.parametrize(
    "content", [None, 1, b"bytes", ["list"], {"d": 1}, "nul \x00 inside", "lone \ud800"], ids=repr
)
async def test_bad_content_is_refused(scoped_store: Store, content: object) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.append_message(session.id, "user", content)  # type: ignore[arg-type]
    assert await scoped_store.count_messages(session.id) == 0


BAD_DOCUMENTS = [
    ["a", "list"],
    "a string",
    {1: "int key"},
    {"t": (1, 2)},
    {"s": {1, 2}},
    {"b": b"bytes"},
    {"nan": float("nan")},
    {"inf": float("inf")},
    {"neg": [float("-inf")]},
    {"nul": "a\x00b"},
    {"nul\x00key": 1},
    {"obj": object()},
    {"surrogate": "\udcff"},
    nested(MAX_JSON_DEPTH + 1),
    nested(1000),
]


@pytest.mark.parametrize("doc", BAD_DOCUMENTS, ids=[f"bad{i}" for i in range(len(BAD_DOCUMENTS))])
async def test_bad_json_documents_are_refused_everywhere(scoped_store: Store, doc: Any) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.append_message(session.id, "user", "x", metadata=doc)
    with pytest.raises(InvalidInputError):
        await scoped_store.save_state(session.id, doc)
    with pytest.raises(InvalidInputError):
        await scoped_store.create_session(metadata=doc)
    with pytest.raises(InvalidInputError):
        await scoped_store.update_session(session.id, metadata=doc)
    after = await scoped_store.get_session(session.id)
    assert after.last_seq == 0
    assert after.state_version == 0
    assert after.metadata == {}


GOOD_DOCUMENTS: list[dict[str, Any]] = [
    {},
    {"unicode": "😀 𝄞 ümlaut ﷽", "empty": "", "sql": "'; DROP TABLE x; --"},
    {"ints": [0, -1, 2**63 - 1, -(2**63), 2**64, 10**30, -(10**40)]},
    {"floats": [0.1, -2.5, 1.0, 1e16, 1.5e-7, 1e300, -1e-300, 123456789.123456789]},
    {"bools": [True, False, None], "nested": {"a": {"b": {"c": [1, [2, [3]]]}}}},
    {'quote"key': 1, "back\\slash": 2, "": 3, "ключ": 4},
    nested(MAX_JSON_DEPTH),
]


async def test_negative_zero_is_stored_as_zero_everywhere(scoped_store: Store) -> None:
    """JSONB has no -0.0; every backend stores 0.0 so documents read back alike."""
    session = await scoped_store.create_session(metadata={"z": -0.0, "l": [-0.0, 1e20]})
    stored = (await scoped_store.get_session(session.id)).metadata
    assert stored == {"z": 0.0, "l": [0.0, 1e20]}
    assert math.copysign(1.0, stored["z"]) == 1.0
    assert isinstance(stored["l"][1], float)


@pytest.mark.parametrize(
    "doc", GOOD_DOCUMENTS, ids=[f"good{i}" for i in range(len(GOOD_DOCUMENTS))]
)
async def test_json_documents_round_trip_exactly(
    scoped_store: Store, doc: dict[str, Any], quirks: Quirks
) -> None:
    session = await scoped_store.create_session(metadata=doc)
    await scoped_store.append_message(session.id, "user", "x", metadata=doc)
    await scoped_store.save_state(session.id, doc)
    loaded = [
        (await scoped_store.get_session(session.id)).metadata,
        (await scoped_store.get_messages(session.id))[0].metadata,
        (await scoped_store.load_state(session.id)).state,  # type: ignore[union-attr]
    ]
    for value in loaded:
        assert value == doc
        assert _types(value) == _types(doc)  # 1e16 stays a float, 2**64 an int
        if quirks.keeps_json_key_order:
            assert list(value) == list(doc)


def _types(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _types(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_types(value) for value in node]
    return type(node).__name__


@pytest.mark.parametrize("limit", [-1, "5", 2.0, True])
async def test_bad_limits_are_refused(scoped_store: Store, limit: object) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.get_messages(session.id, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await scoped_store.list_sessions(limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "items",
    [
        "not a list",
        {"role": "user", "content": "a mapping, not a list"},
        [{"role": "user"}],
        [{"content": "no role"}],
        [{"role": "user", "content": "x", "extra": 1}],
        ["just a string"],
        [{"role": "user", "content": "ok"}, {"role": "user", "content": None}],
    ],
    ids=repr,
)
async def test_bad_message_batches_write_nothing(scoped_store: Store, items: Any) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.append_messages(session.id, items)
    assert await scoped_store.count_messages(session.id) == 0


async def test_bad_titles_are_refused(scoped_store: Store) -> None:
    for title in (1, b"t", "x" * 501, "nul\x00"):
        with pytest.raises(InvalidInputError):
            await scoped_store.create_session(title=title)  # type: ignore[arg-type]


async def test_invalid_input_error_is_a_value_error(scoped_store: Store) -> None:
    with pytest.raises(ValueError, match="not a valid UUID"):
        await scoped_store.get_session("nope")


async def test_state_must_be_a_dict(scoped_store: Store) -> None:
    session = await scoped_store.create_session()
    with pytest.raises(InvalidInputError):
        await scoped_store.save_state(session.id, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await scoped_store.save_state(session.id, [1])  # type: ignore[arg-type]


async def test_other_tenants_ids_and_random_ids_look_the_same(store: Store) -> None:
    """A scoped caller cannot probe which session ids exist in other tenants."""
    owner = store.scoped(tenant_id=uuid.uuid4())
    prober = store.scoped(tenant_id=uuid.uuid4())
    existing = await owner.create_session()
    messages = []
    for sid in (existing.id, uuid.uuid4()):
        try:
            await prober.get_session(sid)
        except Exception as error:  # compare the two failures
            messages.append((type(error), str(error).replace(str(sid), "<id>")))
    assert len(messages) == 2
    assert messages[0] == messages[1]
