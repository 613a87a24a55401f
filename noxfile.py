"""Test matrix for mofa-persist. Plain `nox` runs the sessions in `nox.options.sessions`:
tests (each backend), integrations, migrations, reliability, scaleout, failover, pgbouncer
(the suite through a private PgBouncer), bench_smoke, lint and typecheck. Run on request
only: `soak` (longer reliability runs), `bench` (the full benchmarks), `bench-peers` (the
framework stores beside the library) and `bench_scale` (1M messages and sessions).

Each dialect gets its own session so a failure names its backend. Server URLs default to the
local services (PostgreSQL on 5432, MariaDB on 3306) and can be overridden with
MOFA_TEST_POSTGRES_URL / MOFA_TEST_MYSQL_URL. With CI=true an unreachable server fails the run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    "tests",
    "integrations",
    "migrations",
    "reliability",
    "scaleout",
    "failover",
    "pgbouncer",
    "bench_smoke",
    "lint",
    "typecheck",
]

PYPROJECT = nox.project.load_toml("pyproject.toml")
DIALECTS = ["memory", "sqlite", "postgresql", "mysql"]
PASSED_ENV = ("CI", "MOFA_TEST_POSTGRES_URL", "MOFA_TEST_MYSQL_URL")
#: pytest-xdist workers for the suites whose tests each make their own database: the time
#: goes to round trips, fsyncs and CLI subprocesses, so two workers help even on 2 cores.
#: The integrations suite runs on them too. The reliability, migrations and cluster suites
#: stay serial (they kill, restart and race).
PARALLEL = ("-n", "auto", "--maxprocesses=4")


def _install(session: nox.Session, *groups: str) -> None:
    # The package itself is installed (not imported from the tree), as users get it.
    session.install(".[all]")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


def _conformance(session: nox.Session, *args: str, **env: str) -> None:
    """The conformance suite (tests/ without its reliability and scale-out sub-suites)."""
    session.run(
        "pytest",
        "tests",
        "--ignore=tests/reliability",
        "--ignore=tests/scaleout",
        "--ignore=tests/integrations",
        "--ignore=tests/pgbouncer",
        "--ignore=tests/failover",
        *args,
        env=_env(**env),
    )


def _env(**extra: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env["DATABASE_URL"] = ""  # tests choose their own databases
    env.update(extra)
    return env


@nox.session
@nox.parametrize("dialect", DIALECTS)
def tests(session: nox.Session, dialect: str) -> None:
    """Run the conformance suite on one backend (memory, sqlite, postgresql, mysql)."""
    _install(session, "test")
    _conformance(
        session, "-m", "not migrations", *PARALLEL, *session.posargs, MOFA_TEST_BACKENDS=dialect
    )


@nox.session
def integrations(session: nox.Session) -> None:
    """The framework integrations (OpenAI Agents, LangGraph, ADK) on every backend, with each
    framework's own contract: its conformance suite, or the same tests run on its reference
    store too. The base install never imports a framework; this session installs the extras."""
    session.install(".[all,openai-agents,langgraph,adk]")
    for group in ("test", "integrations"):
        session.install(*nox.project.dependency_groups(PYPROJECT, group))
    session.run(
        "pytest",
        "tests/integrations",
        *PARALLEL,
        *session.posargs,
        env=_env(MOFA_TEST_BACKENDS="memory,sqlite,postgresql,mysql"),
    )
    # The integrations' docs pages, with their frameworks installed.
    session.run("pytest", "tests/test_docs.py", "-k", "integrations", env=_env())


@nox.session
def migrations(session: nox.Session) -> None:
    """Alembic upgrade head / downgrade base, no drift, concurrent first connects, the wheel."""
    _install(session, "test")
    # The wheel tests build with `python -m pip wheel`; uv-made environments have no pip.
    session.install("pip")
    _conformance(
        session, "-m", "migrations", *session.posargs, MOFA_TEST_BACKENDS="sqlite,postgresql,mysql"
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    sources = ["mofa_persist", "tests", "migrations", "bench", "scripts", "noxfile.py"]
    session.run("ruff", "check", *sources)
    session.run("ruff", "format", "--check", *sources)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    _install(session, "typecheck")
    session.run("mypy", "--strict", "mofa_persist")


@nox.session
def reliability(session: nox.Session) -> None:
    """Reliability: multi-process writers, SIGKILL crashes, server restarts, hostile input."""
    _install(session, "test")
    session.run(
        "pytest",
        "tests/reliability",
        "-m",
        "not soak",
        *session.posargs,
        env=_env(MOFA_TEST_BACKENDS="sqlite,postgresql,mysql"),
    )


@nox.session
def scaleout(session: nox.Session) -> None:
    """A private 3-node Galera cluster and a PostgreSQL primary with a streaming replica.

    The conformance suite (migrations included) runs unchanged against one Galera node, then
    tests/scaleout runs the cluster checks (writers on every node, node kills, migrations
    racing on three nodes, replica routing).
    """
    _install(session, "test")
    session.install("pip")  # the wheel tests build with `python -m pip wheel`
    # Outside the checkout (session.create_tmp() would be inside it, and would also point
    # TMPDIR there, which the wheel tests refuse: they install outside the repository).
    root = Path(tempfile.mkdtemp(prefix="mofa-galera-")) / "cluster"
    script = "scripts/galera-cluster"
    session.run("python", script, "start", "--dir", str(root))
    try:
        session.run("python", script, "check", "--dir", str(root))
        sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
        from galera import GaleraCluster

        node = GaleraCluster.load(root).admin_url(0)
        # Migrations included: the Galera lease lock, drift, the wheel.
        _conformance(session, MOFA_TEST_BACKENDS="mysql", MOFA_TEST_MYSQL_URL=node)
        session.run(
            "pytest",
            "tests/scaleout",
            *session.posargs,
            env=_env(MOFA_TEST_BACKENDS="mysql", MOFA_GALERA_DIR=str(root)),
        )
    finally:
        session.run("python", script, "destroy", "--dir", str(root))
        shutil.rmtree(root.parent, ignore_errors=True)


@nox.session
def pgbouncer(session: nox.Session) -> None:
    """PostgreSQL through a private PgBouncer in transaction mode (?pgbouncer=transaction).

    scripts/pgbouncer_private.py installs Debian's pgbouncer if missing (as root), starts one
    on a free loopback port in front of the PostgreSQL on 5432 and runs each command with
    MOFA_PGBOUNCER_URL set: the conformance suite (migrations included) through it, then
    tests/pgbouncer (50 writers on 4 server connections). With CI=true a missing PgBouncer
    fails the run.
    """
    _install(session, "test")
    session.install("pip")  # the wheel tests build with `python -m pip wheel`
    script = ["python", "scripts/pgbouncer_private.py", "--"]
    through = 'MOFA_TEST_POSTGRES_URL="$MOFA_PGBOUNCER_URL" exec "$@"'
    conformance = [
        "pytest",
        "tests",
        "--ignore=tests/reliability",
        "--ignore=tests/scaleout",
        "--ignore=tests/integrations",
        "--ignore=tests/pgbouncer",
        "--ignore=tests/failover",
        *PARALLEL,
    ]
    # The conformance suite needs the pooler: without one it is not run (tests/pgbouncer
    # then says why, and fails under CI=true).
    guarded = f'[ -n "$MOFA_PGBOUNCER_URL" ] || exit 0; {through}'
    env = _env(MOFA_TEST_BACKENDS="postgresql")
    session.run(*script, "sh", "-c", guarded, "sh", *conformance, env=env)
    session.run(
        *script, "sh", "-c", through, "sh", "pytest", "tests/pgbouncer", *session.posargs, env=env
    )


@nox.session
def failover(session: nox.Session) -> None:
    """Automatic failover: Patroni + etcd over two private PostgreSQL 15 nodes (synchronous
    replication); the primary's node is SIGKILLed under load and the store follows the
    promoted standby (tests/failover, about 1.5 minutes).

    scripts/pg_ha_private.py installs Debian's patroni and etcd-server if missing (as root);
    with CI=true a missing one fails the run. The test starts its own cluster on free
    loopback ports and never touches the shared servers.
    """
    _install(session, "test")
    session.run("python", "scripts/pg_ha_private.py", "install", env=_env())
    session.run(
        "pytest",
        "tests/failover",
        *session.posargs,
        env=_env(MOFA_TEST_BACKENDS="postgresql"),
    )


@nox.session
def soak(session: nox.Session) -> None:
    """Longer reliability runs (not part of plain `nox`)."""
    _install(session, "test")
    session.run(
        "pytest",
        "tests/reliability",
        "-m",
        "soak",
        *session.posargs,
        env=_env(MOFA_TEST_BACKENDS="sqlite,postgresql,mysql"),
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against the raw drivers on every backend (`nox -s bench -- --scale 0.1`)."""
    _install(session, "bench")
    session.run("python", "-m", "bench", *session.posargs, env=_env())


@nox.session
def bench_smoke(session: nox.Session) -> None:
    """The benchmark suite at a tiny scale: proves it runs; no timing is judged."""
    _install(session, "bench")
    session.run("python", "-m", "bench", "--scale", "0.01", "--smoke", *session.posargs, env=_env())


@nox.session(name="bench-peers")
def bench_peers(session: nox.Session) -> None:
    """The framework session stores (OpenAI Agents, ADK, LangChain, LangGraph) and this
    library's adapters, same workloads, one run (`nox -s bench-peers -- --scale 0.1`)."""
    _install(session, "bench-peers")
    session.run("python", "-m", "bench.peers", *session.posargs, env=_env())


@nox.session
def bench_scale(session: nox.Session) -> None:
    """W3 at 1M messages, W4 at 1M sessions, export peak at 1M (about 25 minutes on 2 cores)."""
    _install(session, "bench")
    session.run("python", "-m", "bench.scale", *session.posargs, env=_env())
