"""``?pgbouncer=``: its validation, and that it leaves no prepared statement on a server
connection (what breaks behind PgBouncer's transaction pooling). The store behind a real
PgBouncer is tested by ``nox -s pgbouncer`` (tests/pgbouncer)."""

from __future__ import annotations

import pytest

import mofa_persist
from mofa_persist.errors import InvalidInputError
from mofa_persist.urls import parse_url, parse_urls


def test_the_option_is_parsed_and_kept_in_the_shown_url() -> None:
    parsed = parse_url("postgres://u:secret@pool:6432/app?pgbouncer=transaction")
    assert parsed.pgbouncer == "transaction"
    assert "pgbouncer=transaction" in parsed.display
    assert "secret" not in parsed.display and "secret" not in repr(parsed)
    assert parse_url("postgres://u@h/app?pgbouncer=session").pgbouncer == "session"
    assert parse_url("postgres://u@h/app").pgbouncer is None


@pytest.mark.parametrize("value", ["statement", "Transaction", "on", ""])
def test_an_unknown_value_lists_the_accepted_ones(value: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_url(f"postgres://u@h/app?pgbouncer={value}")
    message = str(caught.value)
    assert "pgbouncer=transaction" in message and "pgbouncer=session" in message
    if value == "statement":
        assert "multi-statement transactions" in message


def test_only_postgresql_urls_take_it() -> None:
    with pytest.raises(InvalidInputError, match="postgresql URLs only"):
        parse_url("mysql://root@h/app?pgbouncer=transaction")
    with pytest.raises(InvalidInputError):
        parse_url("sqlite:///tmp/x.db?pgbouncer=transaction")


def test_all_nodes_of_a_cluster_say_the_same() -> None:
    with pytest.raises(InvalidInputError, match="pgbouncer"):
        parse_urls(["postgres://u@h1/app?pgbouncer=transaction", "postgres://u@h2/app"])
    both = parse_urls(
        ["postgres://u@h1/app?pgbouncer=transaction", "postgres://u@h2/app?pgbouncer=transaction"]
    )
    assert both.pgbouncer == "transaction" and both.is_cluster


def _with(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _dead_node_first(url: str) -> str:
    """``url`` as a two-node cluster whose first node refuses connections."""
    scheme, rest = url.split("://", 1)
    userinfo, _, hosts = rest.rpartition("@")
    return f"{scheme}://{userinfo}@127.0.0.1:1,{hosts}"


async def _named_statements(url: str) -> int:
    """Run store calls on a one-connection pool, then count that connection's named
    prepared statements (the unnamed one is not listed)."""
    async with await mofa_persist.connect(url, pool_size=1, max_overflow=0) as store:
        session = await store.create_session(title="prepared")
        await store.append_message(session.id, "user", "hi")
        await store.get_messages(session.id, limit=50)
        await store.list_sessions()
        await store.save_state(session.id, {"k": 1})
        await store.load_state(session.id)
        async with store.engine.connect() as conn:
            found = await conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements")
            return int(found.scalar_one())


@pytest.mark.parametrize("cluster", [False, True], ids=["one-node", "two-nodes"])
async def test_no_prepared_statement_stays_on_the_server_connection(
    server_url: str, cluster: bool
) -> None:
    if parse_url(server_url).kind != "postgresql":
        pytest.skip("a PostgreSQL option")
    if "pgbouncer=" in server_url:
        pytest.skip("behind PgBouncer the counted connection is not the store's")
    url = _dead_node_first(server_url) if cluster else server_url
    # Without the option asyncpg and SQLAlchemy cache named statements: the check can fail.
    assert await _named_statements(url) > 0
    assert await _named_statements(_with(url, "pgbouncer=transaction")) == 0
    assert await _named_statements(_with(url, "pgbouncer=session")) > 0
