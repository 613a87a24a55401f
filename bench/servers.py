"""Databases of a run: created fresh under unique names and dropped afterwards.

Server databases are named ``mofa_bench_<hex>`` and nothing else on the server is touched.
SQLite files live in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mofa_persist.urls import parse_url

from .config import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class Unreachable(Exception):
    """The server for a backend could not be reached (skipped, or fatal under CI=true)."""


@dataclass(frozen=True)
class Target:
    """Where one backend's run happens: the library URL plus raw connection parameters."""

    backend: str
    url: str  # what mofa_persist.connect() gets
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    database: str | None = None
    path: str | None = None  # SQLite file, or ":memory:"


def _admin_params(backend: str) -> dict[str, Any]:
    admin = POSTGRES_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL
    url = parse_url(admin).sa_url
    default_port = 5432 if backend == "postgresql" else 3306
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or default_port,
        "user": url.username or ("postgres" if backend == "postgresql" else "root"),
        "password": url.password or "",
        "database": url.database,
    }


async def _admin(backend: str, statement: str) -> None:
    params = _admin_params(backend)
    try:
        if backend == "postgresql":
            import asyncpg

            conn = await asyncpg.connect(
                host=params["host"],
                port=params["port"],
                user=params["user"],
                password=params["password"] or None,
                database=params["database"],
                timeout=10,
            )
            try:
                await conn.execute(statement)
            finally:
                await conn.close()
        else:
            import aiomysql

            mconn = await aiomysql.connect(
                host=params["host"],
                port=params["port"],
                user=params["user"],
                password=params["password"],
                db=params["database"],
                connect_timeout=10,
                autocommit=True,
            )
            try:
                async with mconn.cursor() as cursor:
                    await cursor.execute(statement)
            finally:
                mconn.close()
    except (OSError, TimeoutError) as error:
        raise Unreachable(
            f"{backend} server unreachable ({type(error).__name__}: {error})"
        ) from error
    except Exception as error:
        # Driver-specific connection errors (auth, "too many connections", ...).
        if "connect" in type(error).__name__.lower() or "Operational" in type(error).__name__:
            raise Unreachable(
                f"{backend} server unreachable ({type(error).__name__}: {error})"
            ) from error
        raise


@contextlib.asynccontextmanager
async def provision(backend: str) -> AsyncIterator[Target]:
    """A fresh, empty database for ``backend``, dropped (or deleted) on exit."""
    if backend == "memory":
        yield Target(backend, "memory://", path=":memory:")
        return
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="mofa_bench_"))
        try:
            path = folder / "bench.db"
            yield Target(backend, f"sqlite://{path}", path=str(path))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = f"mofa_bench_{uuid.uuid4().hex[:12]}"
    params = _admin_params(backend)
    if backend == "postgresql":
        await _admin(backend, f'CREATE DATABASE "{name}"')
        drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    else:
        await _admin(backend, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        drop = f"DROP DATABASE IF EXISTS `{name}`"
    admin = POSTGRES_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL
    url = parse_url(admin).sa_url.set(database=name).render_as_string(hide_password=False)
    try:
        yield Target(
            backend,
            url,
            host=params["host"],
            port=params["port"],
            user=params["user"],
            password=params["password"],
            database=name,
        )
    finally:
        await _admin(backend, drop)
