"""Search across conversations, on every backend: one corpus (several scripts, punctuation,
code, short words, stopwords, a message longer than PostgreSQL's indexed prefix) gives the
same hits everywhere; views, cursors, history edits, lifecycle and bad queries."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

import mofa_persist
from mofa_persist import (
    EchoProvider,
    InvalidInputError,
    LLMAgentBuilder,
    MessageHit,
    NotFoundError,
    PersistencePlugin,
    RetentionPolicy,
    Store,
)
from mofa_persist.agent.agent import RECALL_TOOL
from mofa_persist.cli import app
from mofa_persist.repository import search as search_module
from mofa_persist.searching import parse_query

if TYPE_CHECKING:
    from pathlib import Path

    from typer.testing import Result

CORPUS: dict[str, tuple[str, str]] = {
    "latin": ("user", "Le café de la Société Générale coûte 3,50 €; naïve façade."),
    "latin2": ("assistant", "Cafe without accents: the cafe is open."),
    "cyr": ("user", "Привет, мир! Заказ №48213 доставлен."),
    "cyr_upper": ("assistant", "ЗАКАЗ ОТМЕНЁН"),  # noqa: RUF001 - Cyrillic on purpose
    "greek": ("user", "Η ΟΔΟΣ είναι μακριά· ο δρόμος."),  # noqa: RUF001 - Greek on purpose
    "greek_lower": ("assistant", "μια οδος στην πόλη"),
    "code": ("tool", "def refund(order_id): return api.refund(order_id=order_id)  # id check"),
    "code2": ("tool", "SELECT * FROM orders WHERE id = 42;"),
    "punct": ("user", "Order #48213 — shipped!!! (finally...) e-mail: help@example.com"),
    "short": ("user", "My id is X1; it is the one."),
    "stop": ("assistant", "the the the"),
    "phrase": ("user", "please refund the order today"),
    "phrase_rev": ("assistant", "order the refund please"),
    "apos": ("user", "don't stop; it's O'Brien's turn"),
    "underscore": ("assistant", "user_id and order_id are keys"),
    "long": ("tool", "filler " * 20_000 + "needle in the haystack"),
}

#: Expected hits, written out by hand (not computed by the matcher under test).
EXPECTED: dict[str, set[str]] = {
    "café": {"latin"},
    "CAFÉ": {"latin"},
    "cafe": {"latin2"},
    "caf*": {"latin", "latin2"},
    "привет": {"cyr"},
    "заказ": {"cyr", "cyr_upper"},
    "отменён": {"cyr_upper"},
    "οδος": {"greek", "greek_lower"},
    "ΟΔΟΣ": {"greek", "greek_lower"},
    "id": {"code", "code2", "short"},
    "the": {"latin2", "short", "stop", "phrase", "phrase_rev", "long"},
    "order_id": {"code", "underscore"},
    "48213": {"cyr", "punct"},
    "refund": {"code", "phrase", "phrase_rev"},
    '"refund the order"': {"phrase"},
    "refund -order": {"code"},
    "example": {"punct"},
    "com": {"punct"},
    "don": {"apos"},
    "t": {"apos"},
    "brien": {"apos"},
    "3": {"latin"},
    "x1": {"short"},
    "ord*": {"code", "code2", "punct", "phrase", "phrase_rev", "underscore"},
    "it": {"short", "apos"},
    "e": {"punct"},
    '"id check"': {"code"},
    "help example": {"punct"},
    "-the refund": {"code"},
    "mail*": {"punct"},
    "needle haystack": {"long"},
    "filler": {"long"},
    "nothing_here": set(),
    "order -ord*": set(),
}


async def _write_corpus(store: Store) -> tuple[dict[uuid.UUID, str], uuid.UUID]:
    session = await store.create_session(title="corpus")
    items = [{"role": role, "content": content} for role, content in CORPUS.values()]
    stored = await store.append_messages(session.id, items)
    return {message.id: key for message, key in zip(stored, CORPUS, strict=True)}, session.id


async def _all_hits(store: Store, query: str, **filters: object) -> list[MessageHit]:
    hits: list[MessageHit] = []
    cursor = None
    while True:
        page = await store.search_messages(query, limit=7, cursor=cursor, **filters)  # type: ignore[arg-type]
        hits += page.items
        if page.next_cursor is None:
            return hits
        cursor = page.next_cursor


async def test_corpus_gives_the_same_hits_on_every_backend(store: Store, tenant: uuid.UUID) -> None:
    view = store.scoped(tenant_id=tenant)
    keys, session_id = await _write_corpus(view)
    wrong: dict[str, tuple[set[str], set[str]]] = {}
    for query, expected in EXPECTED.items():
        reference = {key for key, (_, text) in CORPUS.items() if parse_query(query).matches(text)}
        assert reference == expected, f"the matcher itself disagrees on {query!r}"
        hits = await _all_hits(view, query)
        found = [keys[hit.message.id] for hit in hits]
        assert len(found) == len(set(found)), f"{query!r} returned a message twice"
        if set(found) != expected:
            wrong[query] = (set(found), expected)
        for hit in hits:
            assert hit.session_id == session_id
            assert hit.session_title == "corpus"
            assert hit.message.content == CORPUS[keys[hit.message.id]][1]
    assert wrong == {}


async def test_hits_are_ranked_then_newest_first_and_snippets_mark_words(
    store: Store, tenant: uuid.UUID
) -> None:
    view = store.scoped(tenant_id=tenant)
    session = await view.create_session()
    await view.append_messages(
        session.id, [{"role": "user", "content": "kiwi tastes sweet"} for _ in range(12)]
    )
    page = await view.search_messages("kiwi", limit=50)
    assert [hit.message.seq for hit in page.items] == list(range(12, 0, -1))
    ranks = [hit.rank for hit in page.items]
    assert ranks == sorted(ranks, reverse=True)
    assert page.items[0].snippet == "**kiwi** tastes sweet"
    long_text = " ".join(f"w{index}" for index in range(100)) + " target " + "tail " * 50
    await view.append_message(session.id, "assistant", long_text)
    (hit,) = (await view.search_messages("target")).items
    assert "**target**" in hit.snippet
    assert hit.snippet.startswith("… ") and hit.snippet.endswith(" …")
    assert len(hit.snippet) < 200


async def test_pages_cover_every_hit_once(store: Store, tenant: uuid.UUID) -> None:
    view = store.scoped(tenant_id=tenant)
    session = await view.create_session()
    texts = [f"mango {'mango ' * (index % 3)}number {index}" for index in range(23)]
    await view.append_messages(session.id, [{"role": "user", "content": t} for t in texts])
    await view.append_message(session.id, "user", "no fruit here")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await view.search_messages("mango", limit=5, cursor=cursor)
        pages += 1
        seen += [hit.message.seq for hit in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 5
    assert sorted(seen) == list(range(1, 24))


async def test_many_matches_page_in_rank_order_whichever_view_holds_the_best(
    store: Store, tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More matches than one batch, most of them (and the best ranked) in another view: every
    view and session pages through exactly its own hits, best rank first (SQLite ranks a
    window of the best matches first and must fall back when the window is someone else's)."""
    monkeypatch.setattr(search_module, "WINDOW_FROM", 50)  # the window from 50 matches on
    view = store.scoped(tenant_id=tenant)
    other = store.scoped(tenant_id=uuid.uuid4())
    mine = await view.create_session()
    theirs = await other.create_session()

    def texts(count: int, low: int) -> list[dict[str, str]]:
        return [
            {
                "role": "user",
                "content": f"{'tamarind ' * (low + index % 4)}{'pulp ' * (index % 5)}no {index}",
            }
            for index in range(count)
        ]

    await view.append_messages(mine.id, texts(130, 1))
    await other.append_messages(theirs.id, texts(300, 5))

    async def pages(reader: Store, **filters: object) -> list[MessageHit]:
        hits = await _all_hits(reader, "tamarind", **filters)
        ranks = [hit.rank for hit in hits]
        assert ranks == sorted(ranks, reverse=True)
        return hits

    for reader, filters, session, count in (
        (view, {}, mine, 130),
        (other, {}, theirs, 300),
        (store, {"session_id": mine.id}, mine, 130),
        (store, {"session_id": theirs.id}, theirs, 300),
    ):
        hits = await pages(reader, **filters)
        assert sorted(hit.message.seq for hit in hits) == list(range(1, count + 1))
        assert {hit.session_id for hit in hits} == {session.id}


async def test_filters_by_session_role_and_time(store: Store, tenant: uuid.UUID) -> None:
    view = store.scoped(tenant_id=tenant)
    first = await view.create_session()
    second = await view.create_session()
    await view.append_message(first.id, "user", "papaya question")
    await view.append_message(first.id, "assistant", "papaya answer")
    await view.append_message(second.id, "user", "papaya again")
    in_first = await view.search_messages("papaya", session_id=first.id)
    assert {hit.message.content for hit in in_first.items} == {
        "papaya question",
        "papaya answer",
    }
    users = await view.search_messages("papaya", role="user")
    assert {hit.message.content for hit in users.items} == {"papaya question", "papaya again"}
    now = datetime.now(UTC)
    assert (await view.search_messages("papaya", until=now - timedelta(hours=1))).items == []
    assert len((await view.search_messages("papaya", since=now - timedelta(hours=1))).items) == 3
    with pytest.raises(NotFoundError):
        await view.search_messages("papaya", session_id=uuid.uuid4())
    with pytest.raises(InvalidInputError):
        await view.search_messages("papaya", role="robot")
    with pytest.raises(InvalidInputError):
        await view.search_messages("papaya", since=datetime(2026, 1, 1))  # naive
    with pytest.raises(InvalidInputError):
        await view.search_messages("papaya", limit=-1)
    assert (await view.search_messages("papaya", limit=0)).items == []


async def test_a_view_never_finds_other_owners_messages(store: Store) -> None:
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    user_1, user_2, agent_1, agent_2 = (uuid.uuid4() for _ in range(4))
    owners = [
        (tenant_a, user_1, agent_1),
        (tenant_a, user_1, agent_2),
        (tenant_a, user_2, agent_1),
        (tenant_b, user_1, agent_1),
    ]
    for tenant, user, agent in owners:
        session = await store.create_session(tenant_id=tenant, user_id=user, agent_id=agent)
        await store.append_message(session.id, "user", f"quince secret of {user} {agent}")

    async def owners_found(view: Store) -> set[tuple[uuid.UUID | None, ...]]:
        found = set()
        for hit in (await view.search_messages("quince")).items:
            session = await store.get_session(hit.session_id)
            found.add((session.tenant_id, session.user_id, session.agent_id))
        return found

    assert await owners_found(store.scoped(tenant_id=tenant_a)) == set(owners[:3])
    assert await owners_found(store.scoped(tenant_id=tenant_b)) == {owners[3]}
    assert await owners_found(store.scoped(tenant_id=tenant_a, user_id=user_1)) == set(owners[:2])
    assert await owners_found(
        store.scoped(tenant_id=tenant_a, user_id=user_1, agent_id=agent_2)
    ) == {owners[1]}
    assert await owners_found(store.scoped(tenant_id=uuid.uuid4())) == set()
    foreign = (await store.scoped(tenant_id=tenant_b).search_messages("quince")).items[0]
    with pytest.raises(NotFoundError):
        await store.scoped(tenant_id=tenant_a).search_messages(
            "quince", session_id=foreign.session_id
        )


async def test_cursors_are_bound_to_view_query_and_filters(store: Store, tenant: uuid.UUID) -> None:
    view = store.scoped(tenant_id=tenant)
    session = await view.create_session()
    await view.append_messages(session.id, [{"role": "user", "content": "lime"}] * 4)
    page = await view.search_messages("lime", limit=2)
    cursor = page.next_cursor
    assert cursor is not None
    second = await view.search_messages("lime", limit=2, cursor=cursor)
    assert len(second.items) == 2 and second.next_cursor is None
    assert {hit.message.seq for hit in page.items + second.items} == {1, 2, 3, 4}
    tampered = [
        cursor[:-1] + ("A" if cursor[-1] != "A" else "B"),
        cursor[:10] + ("x" if cursor[10] != "x" else "y") + cursor[11:],
        "s1." + cursor[3:-4],
        "garbage",
        cursor.replace("s1.", "v2."),
    ]
    for bad in tampered:
        with pytest.raises(InvalidInputError, match="cursor"):
            await view.search_messages("lime", limit=2, cursor=bad)
    elsewhere = [
        (store.scoped(tenant_id=uuid.uuid4()), "lime", {}),
        (store, "lime", {}),
        (view, "lime*", {}),
        (view, "LIME other", {}),
        (view, "lime", {"role": "user"}),
        (view, "lime", {"session_id": session.id}),
    ]
    for other, query, filters in elsewhere:
        with pytest.raises(InvalidInputError, match="does not belong"):
            await other.search_messages(query, limit=2, cursor=cursor, **filters)  # type: ignore[arg-type]
    # The same query spelled differently is the same query.
    assert (await view.search_messages("  LIME ", limit=2, cursor=cursor)).items


async def test_history_edits_and_lifecycle_remove_hits(store: Store, tenant: uuid.UUID) -> None:
    view = store.scoped(tenant_id=tenant)
    user = uuid.uuid4()

    async def count(query: str) -> int:
        return len(await _all_hits(view, query))

    session = await view.create_session(user_id=user)
    await view.append_messages(
        session.id, [{"role": "user", "content": f"guava {index}"} for index in range(1, 6)]
    )
    assert await count("guava") == 5
    popped = await view.pop_message(session.id)
    assert popped is not None and popped.content == "guava 5"
    assert await count("guava") == 4
    assert await count('"guava 5"') == 0
    await view.rewind(session.id, 2)
    assert await count("guava") == 2
    await view.append_message(session.id, "user", "guava 3 again")
    assert await count('"guava 3"') == 1

    fork = await view.fork_session(session.id)
    assert await count("guava") == 6
    await view.delete_session(fork.id)
    assert await count("guava") == 3

    await view.apply_retention(RetentionPolicy(messages_per_session=1))
    assert [hit.message.content for hit in await _all_hits(view, "guava")] == ["guava 3 again"]

    other = await view.create_session(user_id=uuid.uuid4())
    await view.append_message(other.id, "user", "guava kept")
    await view.erase_user(user)
    assert [hit.message.content for hit in await _all_hits(view, "guava")] == ["guava kept"]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "   ",
        "-excluded",
        '-"only excluded"',
        '"unclosed',
        '""',
        "a-b",
        "foo*bar",
        "*",
        "**",
        "-",
        "c++",
        "(x)",
        "NEAR(a b)",
        'a" OR "b',
        "x:y",
        "'single'",
        "order #48213",
        "a & b",
        "a | !b",
        "\x00",
        "x" * 1001,
        " ".join(["w"] * 33),
    ],
)
async def test_bad_queries_are_invalid_input_naming_the_forms(
    scoped_store: Store, query: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await scoped_store.search_messages(query)
    if len(query) <= 1000 and query.count("w") < 33:
        assert "accepted forms" in str(caught.value)


async def test_queries_that_look_like_backend_syntax_are_plain_words(
    store: Store, tenant: uuid.UUID
) -> None:
    """Words the backends' own query parsers treat as operators are just words here."""
    view = store.scoped(tenant_id=tenant)
    session = await view.create_session()
    await view.append_message(session.id, "user", "apples OR pears AND NOT plums NEAR me")
    for query in ["OR", "AND", "NOT", "NEAR", "or pears", "not*", '"OR pears AND"']:
        page = await view.search_messages(query)
        assert len(page.items) == 1, query
    assert (await view.search_messages("-plums apples")).items == []
    with pytest.raises(InvalidInputError):
        await view.search_messages(123)  # type: ignore[arg-type]


def test_cli_search_prints_snippets_honours_views_and_refuses_bad_queries(
    tmp_path: Path,
) -> None:
    url = f"sqlite://{tmp_path / 'cli.db'}"
    tenant, other = uuid.uuid4(), uuid.uuid4()

    async def seed() -> uuid.UUID:
        async with await mofa_persist.connect(url) as store:
            mine = await store.create_session(tenant_id=tenant, title="support")
            await store.append_message(mine.id, "user", "Where is order 48213? It is late.")
            await store.append_message(mine.id, "assistant", "Order 48213 ships tomorrow.")
            theirs = await store.create_session(tenant_id=other, title="theirs")
            await store.append_message(theirs.id, "user", "order 48213 of someone else")
            return mine.id

    mine = asyncio.run(seed())

    def run(*args: str) -> Result:
        return CliRunner().invoke(
            app, ["search", *args, "--url", url], env={"DATABASE_URL": "", "COLUMNS": "200"}
        )

    table = run("order 48213")
    assert table.exit_code == 0, table.output
    assert table.output.count("**48213**") == 3
    listed = run("order 48213", "--tenant", str(tenant), "--role", "user", "--json")
    assert listed.exit_code == 0, listed.output
    hits = json.loads(listed.stdout)["hits"]
    assert [(hit["session_id"], hit["message"]["seq"]) for hit in hits] == [(str(mine), 1)]
    assert hits[0]["snippet"] == "Where is **order** **48213**? It is late."
    in_session = json.loads(run("48213", "--session", str(mine), "--json").stdout)["hits"]
    assert len(in_session) == 2
    bad = run("order(")
    assert bad.exit_code == 1
    assert "accepted forms" in bad.output and "Traceback" not in bad.output
    assert run("order", "--user", str(uuid.uuid4())).exit_code == 1  # --user needs --tenant


async def test_agent_recall_finds_the_users_earlier_sessions_only(
    store: Store, tenant: uuid.UUID
) -> None:
    user, agent_id = uuid.uuid4(), uuid.uuid4()
    plugin = PersistencePlugin("persistence", store, user, tenant, agent_id)
    agent = (
        await LLMAgentBuilder()
        .with_persistence_plugin(plugin)
        .with_provider(EchoProvider())
        .build_async()
    )
    first = agent.session_id
    await agent.chat("I am allergic to peanuts and sesame")
    await agent.create_session()
    await agent.chat("book a table for friday")
    stranger = PersistencePlugin("persistence", store, uuid.uuid4(), tenant, agent_id)
    theirs = await stranger.create_session()
    await stranger.store.append_message(theirs.id, "user", "I am allergic to peanuts too")

    hits = await agent.recall("allergic peanut*")
    assert {(hit["session_id"], hit["role"]) for hit in hits} == {
        (str(first), "user"),
        (str(first), "assistant"),  # the echo repeats it
    }
    assert all("**allergic**" in hit["snippet"] for hit in hits)
    assert json.loads(json.dumps(hits)) == hits  # ready to hand to a model
    assert RECALL_TOOL["function"]["name"] == "recall"
    with pytest.raises(InvalidInputError, match="accepted forms"):
        await agent.recall("peanuts?")
    await agent.close()
