"""Several nodes in one URL (failover) and read replicas, on the shared servers.

The real cluster runs (Galera, a streaming replica) are in tests/scaleout; these check the
routing rules themselves: node order, a dead node skipped, stale-tolerant reads on a replica,
reads that must see the caller's writes on the primary, and a dead replica skipped.
"""

from __future__ import annotations

import socket

import pytest

import mofa_persist
from mofa_persist.urls import parse_url, parse_urls


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def on_port(url: str, port: int) -> str:
    sa_url = parse_url(url).sa_url.set(host="127.0.0.1", port=port)
    scheme = "postgresql" if sa_url.drivername.startswith("postgresql") else "mysql"
    return sa_url.set(drivername=scheme).render_as_string(hide_password=False)


# ---------------------------------------------------------------- URL forms


def test_comma_separated_hosts_name_the_nodes_in_order() -> None:
    url = parse_url("mysql://app:s3cret@10.0.0.1:3307,10.0.0.2,10.0.0.3:3309/mofa")
    assert url.is_cluster
    assert [(node.host, node.port) for node in url.nodes] == [
        ("10.0.0.1", 3307),
        ("10.0.0.2", None),
        ("10.0.0.3", 3309),
    ]
    assert {node.database for node in url.nodes} == {"mofa"}
    assert url.host == "10.0.0.1:3307,10.0.0.2,10.0.0.3:3309"
    assert "s3cret" not in url.display and "s3cret" not in repr(url)
    assert url.display.count("***") == 3


def test_a_list_of_urls_names_the_nodes_in_order() -> None:
    url = parse_urls(["postgres://u:pw@a:5432/db", "postgresql://u:pw@b:5433/db"])
    assert [(node.host, node.port) for node in url.nodes] == [("a", 5432), ("b", 5433)]
    assert url.kind == "postgresql" and url.database == "db"
    assert parse_urls(["postgres://u@a/db"]) == parse_url("postgres://u@a/db")
    assert not parse_url("postgres://u@a/db").is_cluster


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["postgres://u@a/db", "mysql://u@b/db"], "all be PostgreSQL or all MySQL"),
        (["postgres://u@a/db", "postgres://u@b/other"], "same database"),
        (["sqlite:///tmp/a.db", "sqlite:///tmp/b.db"], "server cluster"),
        ([], "non-empty list"),
        ("mysql://u@a,,b/db", "empty host"),
        ("mysql://u@a,/db", "empty host"),
    ],
)
def test_bad_node_lists_are_refused(urls: str | list[str], message: str) -> None:
    with pytest.raises(mofa_persist.InvalidInputError, match=message):
        parse_urls(urls)


@pytest.mark.parametrize(
    ("url", "replicas", "message"),
    [
        ("memory://", ["postgres://u@a/db"], "server backend"),
        ("memory://", [], None),
        ("postgres://u@a/db", "postgres://u@b/db", "a list of URLs"),
        ("postgres://u@a/db", ["mysql://u@b/db"], "a mysql URL was given"),
        ("postgres://u@a/db", ["postgres://u@b/other"], "same database"),
    ],
)
async def test_bad_read_replicas_are_refused_before_connecting(
    url: str, replicas: object, message: str | None
) -> None:
    if message is None:  # an empty list is no replicas at all
        async with await mofa_persist.connect(url, read_replicas=[]) as store:
            assert store.read_replicas == () and not store.stale_reads
        return
    with pytest.raises(mofa_persist.InvalidInputError, match=message):
        await mofa_persist.connect(url, read_replicas=replicas)  # type: ignore[arg-type]


async def test_sqlite_takes_no_read_replicas(tmp_path: object) -> None:
    with pytest.raises(mofa_persist.InvalidInputError, match="server backend"):
        await mofa_persist.connect(
            f"sqlite:///{tmp_path}/a.db", read_replicas=[f"sqlite:///{tmp_path}/b.db"]
        )


# ---------------------------------------------------------------- failover


async def test_a_dead_first_node_is_skipped(server_url: str) -> None:
    dead = on_port(server_url, closed_port())
    async with await mofa_persist.connect([dead, server_url], connect_timeout=5) as store:
        session = await store.create_session(title="failover")
        await store.append_message(session.id, role="user", content="hello")
        assert [m.content for m in await store.get_messages(session.id)] == ["hello"]
        assert store.url.is_cluster and len(store.url.nodes) == 2


async def test_no_node_answering_is_a_backend_error_naming_each(server_url: str) -> None:
    ports = [closed_port(), closed_port()]
    url = ",".join(f"127.0.0.1:{port}" for port in ports)
    scheme, rest = on_port(server_url, ports[0]).split("://", 1)
    userinfo = rest.split("@")[0] + "@" if "@" in rest else ""
    database = rest.rsplit("/", 1)[1]
    cluster = f"{scheme}://{userinfo}{url}/{database}"
    with pytest.raises(mofa_persist.BackendError) as raised:
        await mofa_persist.connect(cluster, connect_timeout=2)
    text = str(raised.value)
    assert all(str(port) in text for port in ports), text
    assert not raised.value.outcome_unknown  # nothing was written


# ---------------------------------------------------------------- read replicas


async def test_stale_tolerant_reads_go_to_the_replica(server_url: str) -> None:
    # The same server stands in for a replica here: routing is what is checked.
    async with await mofa_persist.connect(server_url, read_replicas=[server_url]) as store:
        tenant = store.scoped(tenant_id="018f2e2c-0000-7000-8000-000000000001")
        session = await tenant.create_session(title="replicated")
        await tenant.append_message(session.id, role="user", content="hi")
        await tenant.get_messages(session.id)
        await tenant.load_state(session.id)
        await tenant.get_session(session.id)
        assert store.read_replicas[0].reads == 0  # read-your-writes reads: the primary
        page = await tenant.list_sessions()
        usage = await tenant.usage()
        assert [s.id for s in page.items] == [session.id] and usage.calls == 0
        (status,) = store.read_replicas
        assert status.reads == 2 and status.up and status.failures == 0
        assert status.url == parse_url(server_url).display
        await tenant.on_primary().list_sessions()
        assert store.read_replicas[0].reads == 2
        assert tenant.stale_reads and not tenant.on_primary().stale_reads
        pinned = store.on_primary().scoped(tenant_id="018f2e2c-0000-7000-8000-000000000001")
        assert not pinned.stale_reads  # a scoped view keeps the primary-only choice
        assert [s.id for s in (await pinned.list_sessions()).items] == [session.id]
        assert store.read_replicas[0].reads == 2


async def test_a_dead_replica_is_skipped_and_the_primary_answers(server_url: str) -> None:
    with_password = parse_url(on_port(server_url, closed_port())).sa_url.set(password="hunter2")
    dead = with_password.set(drivername=with_password.drivername.split("+")[0])
    dead_url = dead.render_as_string(hide_password=False)
    async with await mofa_persist.connect(
        server_url, read_replicas=[dead_url], connect_timeout=5
    ) as store:
        tenant = store.scoped(tenant_id="018f2e2c-0000-7000-8000-000000000002")
        session = await tenant.create_session(title="still listed")
        page = await tenant.list_sessions()
        assert [s.id for s in page.items] == [session.id]
        (status,) = store.read_replicas
        assert status.failures == 1 and not status.up and status.reads == 1
        assert "hunter2" not in status.url and "hunter2" not in repr(store)
        # Skipped while it is down: the next reads do not try it again.
        await tenant.list_sessions()
        assert (await tenant.usage()).calls == 0
        assert store.read_replicas[0].reads == 1
