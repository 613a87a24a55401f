"""This library itself (``mofa_persist.Store``), the reference every framework store is
compared with, and the engine URL the SQLAlchemy-based peers take for the same database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

import mofa_persist

from .harness import POOL, TEXT, PeerStore

if TYPE_CHECKING:
    from ..servers import Target


def sqlalchemy_url(target: Target, file: str = "peer.db") -> str:
    """``target``'s database as an async SQLAlchemy URL (SQLite: ``file`` beside it)."""
    if target.path is not None:
        return f"sqlite+aiosqlite:///{Path(target.path).with_name(file)}"
    url = make_url(target.url)
    driver = "postgresql+asyncpg" if url.get_backend_name().startswith("postgres") else None
    return url.set(drivername=driver or "mysql+aiomysql").render_as_string(hide_password=False)


class LibraryStore(PeerStore):
    framework = "library"
    name = "mofa_persist.Store"
    ours = True

    async def open(self, target: Target) -> None:
        self.store = await mofa_persist.connect(target.url, pool_size=POOL, max_overflow=0)

    async def close(self) -> None:
        await self.store.close()

    async def session(self, key: str) -> Any:
        return (await self.store.create_session(title=key)).id

    async def append(self, handle: Any, text: str) -> None:
        await self.store.append_message(handle, "user", text)

    async def newest(self, handle: Any, count: int) -> list[str]:
        return [m.content for m in await self.store.get_messages(handle, limit=count)]

    async def texts(self, handle: Any) -> list[str]:
        return [m.content for m in await self.store.get_messages(handle)]

    async def seed(self, handle: Any, count: int) -> None:
        for start in range(0, count, 500):
            batch = [
                {"role": "user", "content": f"h{i} {TEXT}"}
                for i in range(start, min(count, start + 500))
            ]
            await self.store.append_messages(handle, batch)
