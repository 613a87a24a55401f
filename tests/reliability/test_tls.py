"""TLS to PostgreSQL with libpq's URL settings, against a private server with a CA of its own.

The server (its own data folder and free loopback port, never 5432) runs with ``ssl=on``, a
certificate for ``DNS:localhost`` only, signed by a CA this module makes with the ``openssl``
command, and a pg_hba.conf with ``hostssl`` lines only: a plain-text connection is refused.
The password has an ``@`` in it, as hosted providers' generated passwords may.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from common import raw_rows
from conftest import SERVERS
from rootconf import unavailable
from servers import PrivatePostgres, ServerUnavailable

import mofa_persist
from mofa_persist import BackendError, InvalidInputError
from mofa_persist.migrate import head_revision

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Kq7-Tz@w9V"
#: The passphrase of the client key (``sslpassword``).
PASSPHRASE = "cL1-Kp@ss9"
CERT_USER = "certuser"


def leaked(text: str) -> list[str]:
    """Any three characters in a row of the password or the key passphrase found in ``text``."""
    secrets = (PASSWORD, PASSPHRASE, quote(PASSWORD, safe=""), quote(PASSPHRASE, safe=""))
    pieces = {s[i : i + 3] for s in secrets for i in range(len(s) - 2)} - {"%40"}
    return sorted(piece for piece in pieces if piece in text)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class TlsServer:
    port: int
    certs: Path

    def url(
        self,
        host: str,
        query: str,
        *,
        user: str = "postgres",
        password: str | None = PASSWORD,
        database: str = "mofa_tls",
    ) -> str:
        credentials = f"{user}:{password}" if password is not None else user
        return f"postgres://{credentials}@{host}:{self.port}/{database}?{query}"

    def file(self, name: str) -> str:
        return quote(str(self.certs / name))

    @property
    def verify_full(self) -> str:
        return f"sslmode=verify-full&sslrootcert={self.file('ca.pem')}"


# ---------------------------------------------------------------- the server and its CA


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=folder, capture_output=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise ServerUnavailable(f"openssl {args[0]} failed: {done.stderr.decode()[-1000:]}")


#: P-256 keys: generated in milliseconds, unlike RSA.
EC_KEY = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")


def _issue(folder: Path, name: str, common_name: str, extensions: str, *key_args: str) -> None:
    """``name.key`` and ``name.crt`` for ``common_name``, signed by the CA in ``folder``."""
    (folder / f"{name}.cnf").write_text(
        f"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {common_name}\n"
        f"[v3]\n{extensions}\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    _openssl(folder, "genpkey", *EC_KEY, "-out", f"{name}.key", *key_args)
    passin = ["-passin", f"pass:{PASSPHRASE}"] if key_args else []
    _openssl(folder, "req", "-new", "-key", f"{name}.key", *passin, "-config", f"{name}.cnf",
             "-out", f"{name}.csr")  # fmt: skip
    serial = str(int.from_bytes(os.urandom(8), "big"))
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", serial, "-days", "2", "-extfile", f"{name}.cnf", "-extensions", "v3",
             "-out", f"{name}.crt")  # fmt: skip


def make_certificates(folder: Path) -> None:
    """A self-signed CA, a server certificate for DNS:localhost only, a client certificate
    for ``certuser`` whose key is encrypted with ``PASSPHRASE``."""
    (folder / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3\n"
        "[dn]\nCN = mofa-persist test CA\n"
        "[v3]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    _openssl(folder, "genpkey", *EC_KEY, "-out", "ca.key")
    _openssl(folder, "req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "2",
             "-config", "ca.cnf")  # fmt: skip
    _issue(
        folder,
        "server",
        "localhost",
        "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost",
    )
    _issue(
        folder,
        "client",
        CERT_USER,
        "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = clientAuth",
        *("-aes-256-cbc", "-pass", f"pass:{PASSPHRASE}"),
    )


def configure_tls(server: PrivatePostgres, certs: Path) -> None:
    """ssl=on with the server certificate; only TLS connections are let in (hostssl)."""
    for name in ("server.crt", "server.key", "ca.pem"):
        target = server.data / name
        shutil.copyfile(certs / name, target)
        target.chmod(0o600)
        if server.ids is not None:
            os.chown(target, *server.ids)
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            "ssl_ca_file = 'ca.pem'\npassword_encryption = 'scram-sha-256'\n"
        )
    (server.data / "pg_hba.conf").write_text(
        "local all all trust\n"
        f"hostssl all {CERT_USER} 127.0.0.1/32 cert\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    )


async def _prepare(server: PrivatePostgres) -> None:
    """Over the Unix socket (trusted): the password, the client-certificate role, databases."""
    import asyncpg

    conn = await asyncpg.connect(
        host=str(server.root), port=server.port, user="postgres", database="postgres"
    )
    try:
        await conn.execute(f"ALTER ROLE postgres PASSWORD '{PASSWORD}'")
        await conn.execute(f"CREATE ROLE {CERT_USER} LOGIN")
        for database in ("mofa_tls", "mofa_alembic"):
            await conn.execute(f"CREATE DATABASE {database}")
        await conn.execute(f"CREATE DATABASE mofa_cert OWNER {CERT_USER}")
    finally:
        await conn.close()


@pytest.fixture(scope="module", params=[name for name in SERVERS if name == "postgresql"])
def tls_server() -> Iterator[TlsServer]:
    """A private PostgreSQL that speaks TLS only, for this module; destroyed afterwards."""
    if shutil.which("openssl") is None:
        unavailable("the openssl command", "not on PATH")
    try:
        server = PrivatePostgres()
    except (ServerUnavailable, OSError) as error:
        unavailable("private postgresql server", error)
        raise  # unreachable: unavailable() fails or skips
    try:
        certs = server.root / "certs"
        certs.mkdir()
        make_certificates(certs)
        configure_tls(server, certs)
        server.start()
        asyncio.run(_prepare(server))
        yield TlsServer(server.port, certs)
    except ServerUnavailable as error:
        unavailable("private postgresql server with TLS", error)
    finally:
        server.destroy()


async def connection_is_encrypted(store: mofa_persist.Store) -> bool:
    (row,) = await raw_rows(store, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return bool(row.ssl)


async def refused(url: str, caplog: pytest.LogCaptureFixture) -> str:
    """The message of the ``BackendError`` that connecting to ``url`` raises."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as caught:
        await mofa_persist.connect(url, connect_timeout=10)
    text = f"{caught.value} {caught.value!r}"
    assert leaked(text + caplog.text) == [], text
    return str(caught.value)


# ---------------------------------------------------------------- the modes


async def test_verify_full_runs_the_store_over_tls(tls_server: TlsServer) -> None:
    url = tls_server.url("localhost", tls_server.verify_full)
    async with await mofa_persist.connect(url, connect_timeout=10) as store:
        session = await store.create_session(title="over tls")
        await store.append_message(session.id, role="user", content="sealed")
        await store.append_message(session.id, role="assistant", content="delivered")
        assert [m.content for m in await store.get_messages(session.id)] == ["sealed", "delivered"]
        assert (await store.get_session(session.id)).title == "over tls"
        assert await connection_is_encrypted(store)
        assert "sslmode=verify-full" in store.url.display
        assert leaked(f"{store.url.display} {store!r}") == []


async def test_verify_full_to_a_name_not_in_the_certificate_is_refused(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The certificate names DNS:localhost only; the same server by its IP address fails.
    message = await refused(tls_server.url("127.0.0.1", tls_server.verify_full), caplog)
    assert f"127.0.0.1:{tls_server.port}/mofa_tls" in message
    assert "certificate" in message and "127.0.0.1" in message.split("):", 1)[1]


async def test_verify_ca_checks_the_chain_but_not_the_name(tls_server: TlsServer) -> None:
    query = f"sslmode=verify-ca&sslrootcert={tls_server.file('ca.pem')}"
    async with await mofa_persist.connect(tls_server.url("127.0.0.1", query)) as store:
        assert await connection_is_encrypted(store)


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
async def test_a_certificate_from_an_untrusted_ca_is_refused(
    tls_server: TlsServer, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The system's CAs do not include this module's CA.
    message = await refused(tls_server.url("localhost", f"sslmode={mode}"), caplog)
    assert "certificate verify failed" in message


@pytest.mark.parametrize("mode", ["require", "prefer", "allow"])
async def test_weaker_modes_still_encrypt_without_a_ca(tls_server: TlsServer, mode: str) -> None:
    async with await mofa_persist.connect(tls_server.url("127.0.0.1", f"sslmode={mode}")) as store:
        await store.create_session(title=mode)
        assert await connection_is_encrypted(store)


async def test_disable_against_a_tls_only_server_is_refused(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    message = await refused(tls_server.url("127.0.0.1", "sslmode=disable"), caplog)
    assert "no encryption" in message and "pg_hba.conf" in message


# ---------------------------------------------------------------- clusters, client certificates


async def test_every_node_of_a_cluster_uses_the_tls_settings(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    dead, port = closed_port(), tls_server.port
    nodes = f"postgres://postgres:{PASSWORD}@127.0.0.1:{dead},localhost:{port}/mofa_tls"
    async with await mofa_persist.connect(f"{nodes}?{tls_server.verify_full}") as store:
        assert store.url.is_cluster
        assert await connection_is_encrypted(store)
    # Named by its IP address, the live second node fails verify-full like a single host.
    nodes = f"postgres://postgres:{PASSWORD}@localhost:{dead},127.0.0.1:{port}/mofa_tls"
    message = await refused(f"{nodes}?{tls_server.verify_full}", caplog)
    assert f"127.0.0.1:{port}: SSLCertVerificationError" in message


def client_certificate(tls_server: TlsServer, passphrase: str) -> str:
    files = f"sslcert={tls_server.file('client.crt')}&sslkey={tls_server.file('client.key')}"
    query = f"{tls_server.verify_full}&{files}&sslpassword={quote(passphrase, safe='')}"
    return tls_server.url("localhost", query, user=CERT_USER, password=None, database="mofa_cert")


async def test_a_client_certificate_with_an_encrypted_key_logs_in(tls_server: TlsServer) -> None:
    url = client_certificate(tls_server, PASSPHRASE)
    async with await mofa_persist.connect(url, connect_timeout=10) as store:
        session = await store.create_session(title="by certificate")
        assert (await store.get_session(session.id)).title == "by certificate"
        (row,) = await raw_rows(
            store,
            "SELECT current_user AS who, ssl, client_dn FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()",
        )
        assert (row.who, row.ssl, row.client_dn) == (CERT_USER, True, f"/CN={CERT_USER}")
        assert "sslpassword=***" in store.url.display
        assert leaked(f"{store.url.display} {store!r}") == []


async def test_a_wrong_key_passphrase_is_invalid_input_that_does_not_show_it(
    tls_server: TlsServer,
) -> None:
    wrong = "wR0ng-Pp@x"
    with pytest.raises(InvalidInputError) as caught:
        await mofa_persist.connect(client_certificate(tls_server, wrong))
    text = f"{caught.value} {caught.value!r}"
    assert (
        "sslcert/sslkey" in text and "client.key" in text and "wrong or missing sslpassword" in text
    )
    assert not [wrong[i : i + 3] for i in range(len(wrong) - 2) if wrong[i : i + 3] in text]


async def test_cert_login_without_a_client_certificate_is_refused(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = tls_server.url(
        "localhost", tls_server.verify_full, user=CERT_USER, password=None, database="mofa_cert"
    )
    message = await refused(url, caplog)
    assert "certificate" in message


# ---------------------------------------------------------------- the other ways in


def test_alembic_and_the_cli_migrate_over_tls(tls_server: TlsServer) -> None:
    from typer.testing import CliRunner

    from mofa_persist.cli import app

    url = tls_server.url("localhost", tls_server.verify_full, database="mofa_alembic")
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = CliRunner().invoke(app, ["current", "--url", url], env={"DATABASE_URL": ""})
    assert result.exit_code == 0, result.output
    assert head_revision() in result.output
    assert leaked(done.stdout + done.stderr + result.output) == []
