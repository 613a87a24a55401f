"""A LangGraph checkpointer on this library's store: ``MofaSaver(store)``.

Install with ``pip install 'mofa-persist[langgraph]'``. A LangGraph thread is an ordinary session
of the store (:meth:`mofa_persist.Store.session_for` with namespace ``"langgraph"``, in the
store's view), so the CLI, export and copy, retention, ``delete_session`` and erasure all see
its checkpoints. The schema comes with the library's migrations: there is no ``setup()``.

Three tables hold a thread (``mofa_persist.models``): ``langgraph_checkpoints`` (one row per
checkpoint, without its channel values), ``langgraph_blobs`` (a channel's value, stored once per
channel version, so a checkpoint that changes one channel writes one blob) and
``langgraph_writes`` (pending writes). Payloads are the serializer's bytes in binary columns.

The async methods are the real ones. The sync methods (``get_tuple``, ``list``, ``put``, ...)
run the async ones on the store's event loop and wait, so they work from any other thread (as
LangGraph's own async savers do); called on the store's loop they would deadlock, so they raise
:class:`asyncio.InvalidStateError` instead.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

try:
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        PendingWrite,
        get_checkpoint_id,
        get_checkpoint_metadata,
        writes_sort_key,
    )
except ImportError as error:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "mofa_persist.integrations.langgraph needs LangGraph's checkpoint package: "
        "pip install 'mofa-persist[langgraph]'"
    ) from error
from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .. import sql
from ..errors import ConflictError, InvalidInputError
from ..ids import uuid7
from ..models import (
    external_keys_table,
    langgraph_blobs_table,
    langgraph_checkpoints_table,
    langgraph_writes_table,
    sessions_table,
)
from ..repository.external import _check_external_id
from .langgraph_sql import (
    MAX_CHANNELS,
    CheckpointRow,
    Part,
    checkpoint_sql,
    pg_put_sql,
    read_checkpoint,
    sqlite_put,
    thread_session_sql,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence

    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.serde.base import SerializerProtocol
    from sqlalchemy import ColumnElement, Row
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..store import Store

__all__ = ["NAMESPACE", "MofaSaver"]

T = TypeVar("T")

#: The namespace of :meth:`mofa_persist.Store.session_for` that LangGraph thread ids live in.
NAMESPACE = "langgraph"

c_t = langgraph_checkpoints_table
b_t = langgraph_blobs_table
w_t = langgraph_writes_table
x_t = external_keys_table
s_t = sessions_table

#: Checkpoints read per transaction while listing.
_PAGE = 100
#: OR-ed key conditions per statement.
_CHUNK = 100

_LIMITS = {
    "checkpoint_ns": 300,
    "checkpoint_id": 100,
    "task_id": 150,
    "channel": 200,
    "channel version": 100,
    "write channel": 255,
    "run_id": 255,
}


#: The columns a checkpoint stored again replaces.
_CHECKPOINT_COLUMNS = (
    "checkpoint_ns",
    "checkpoint_id",
    "parent_checkpoint_id",
    "run_id",
    "checkpoint_type",
    "checkpoint",
    "metadata_type",
    "metadata",
)


def _bounded(what: str, value: object) -> str:
    text = str(value)
    limit = _LIMITS[what]
    if len(text) > limit:
        raise InvalidInputError(f"a LangGraph {what} must be at most {limit} characters")
    return text


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


class _NewThread(Exception):
    """The thread has no session yet: the write makes one, then runs again."""


class MofaSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints, pending writes and channel values in a :class:`~mofa_persist.Store`.

    ``serde`` is LangGraph's serializer protocol (``JsonPlusSerializer`` by default; pass an
    ``EncryptedSerializer`` to encrypt payloads at rest).
    """

    def __init__(self, store: Store, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.store = store
        self._statements: tuple[Any, Any] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    # ------------------------------------------------------------------ plumbing

    def _seen_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def _session(self, thread_id: object, *, create: bool) -> uuid.UUID | None:
        self._seen_loop()
        session = await self.store.session_for(NAMESPACE, str(thread_id), create=create)
        return None if session is None else session.id

    def _thread_session(self, thread_id: str) -> ColumnElement[Any]:
        """The id of the thread's session in the view, as a subquery: reads find the thread
        and its checkpoints in one statement (no separate look-up transaction)."""
        key_hash = self.store._key_hash(NAMESPACE, _check_external_id(thread_id))
        return (
            select(x_t.c.session_id)
            .join(s_t, s_t.c.id == x_t.c.session_id)
            .where(x_t.c.key_hash == key_hash, *self.store._scope_filter())
            .scalar_subquery()
        )

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        return await self.store._run(work, write=False, action=action)

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        return await self.store._run(work, write=True, action=action)

    def _in_view(self) -> ColumnElement[bool]:
        """Sessions of LangGraph threads in the store's view."""
        of_view = (
            select(x_t.c.session_id)
            .join(s_t, s_t.c.id == x_t.c.session_id)
            .where(x_t.c.namespace == NAMESPACE, *self.store._scope_filter())
        )
        return c_t.c.session_id.in_(of_view)

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop.is_closed() or running is loop:
            coro.close()
            if running is not None and running is loop:
                raise asyncio.InvalidStateError(
                    "MofaSaver's sync methods block until the store's event loop runs them, "
                    "so they cannot be called on that loop: use the async methods there "
                    "(aget_tuple, alist, aput, ...), or call from another thread"
                )
            raise asyncio.InvalidStateError(
                "MofaSaver does not know a running event loop of its store: create it inside "
                "a coroutine on the store's loop (or await one of its async methods first)"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    # ------------------------------------------------------------------ reading

    async def _tuples(
        self, conn: AsyncConnection, rows: Sequence[Row[Any]], threads: dict[uuid.UUID, str]
    ) -> list[tuple[CheckpointTuple, CheckpointMetadata]]:
        """Checkpoint tuples of ``rows``, with their channel values and pending writes."""
        loaded: list[tuple[Row[Any], Checkpoint]] = []
        wanted: set[tuple[uuid.UUID, str, str, str]] = set()
        for row in rows:
            checkpoint: Checkpoint = self.serde.loads_typed((row.checkpoint_type, row.checkpoint))
            loaded.append((row, checkpoint))
            for channel, version in checkpoint["channel_versions"].items():
                wanted.add((row.session_id, row.checkpoint_ns, channel, str(version)))
        blobs: dict[tuple[uuid.UUID, str, str, str], Any] = {}
        for part in _chunks(sorted(wanted)):
            stmt = select(
                b_t.c.session_id,
                b_t.c.checkpoint_ns,
                b_t.c.channel,
                b_t.c.version,
                b_t.c.value_type,
                b_t.c.value,
            ).where(
                or_(
                    *(
                        and_(
                            b_t.c.session_id == sid,
                            b_t.c.checkpoint_ns == ns,
                            b_t.c.channel == channel,
                            b_t.c.version == version,
                        )
                        for sid, ns, channel, version in part
                    )
                )
            )
            for blob in await conn.execute(stmt):
                if blob.value_type == "empty" or blob.value is None:
                    continue
                key = (blob.session_id, blob.checkpoint_ns, blob.channel, blob.version)
                blobs[key] = self.serde.loads_typed((blob.value_type, blob.value))
        keys = sorted({(row.session_id, row.checkpoint_ns, row.checkpoint_id) for row in rows})
        writes: dict[tuple[uuid.UUID, str, str], list[tuple[tuple[str, str, int], PendingWrite]]]
        writes = {key: [] for key in keys}
        for batch in _chunks(keys):
            stmt = select(
                w_t.c.session_id,
                w_t.c.checkpoint_ns,
                w_t.c.checkpoint_id,
                w_t.c.task_id,
                w_t.c.idx,
                w_t.c.channel,
                w_t.c.value_type,
                w_t.c.value,
                w_t.c.task_path,
            ).where(
                or_(
                    *(
                        and_(
                            w_t.c.session_id == sid,
                            w_t.c.checkpoint_ns == ns,
                            w_t.c.checkpoint_id == cid,
                        )
                        for sid, ns, cid in batch
                    )
                )
            )
            for w in await conn.execute(stmt):
                value = self.serde.loads_typed((w.value_type, w.value))
                order = writes_sort_key(w.task_path, w.task_id, w.idx)
                writes[(w.session_id, w.checkpoint_ns, w.checkpoint_id)].append(
                    (order, (w.task_id, w.channel, value))
                )
        result = []
        for row, checkpoint in loaded:
            values = {}
            for channel, version in checkpoint["channel_versions"].items():
                key = (row.session_id, row.checkpoint_ns, channel, str(version))
                if key in blobs:
                    values[channel] = blobs[key]
            pending = writes[(row.session_id, row.checkpoint_ns, row.checkpoint_id)]
            result.append(
                self._assemble(
                    threads[row.session_id],
                    CheckpointRow(*(row._mapping[name] for name in CheckpointRow._fields)),
                    checkpoint,
                    values,
                    pending,
                )
            )
        return result

    def _assemble(
        self,
        thread_id: str,
        row: CheckpointRow,
        checkpoint: Checkpoint,
        values: dict[str, Any],
        pending: list[tuple[tuple[str, str, int], PendingWrite]],
    ) -> tuple[CheckpointTuple, CheckpointMetadata]:
        """A checkpoint tuple from its row, decoded checkpoint, channel values and writes."""
        metadata: CheckpointMetadata = self.serde.loads_typed((row.metadata_type, row.metadata))
        pending.sort(key=lambda item: item[0])
        parent = (
            _config(thread_id, row.checkpoint_ns, row.parent_checkpoint_id)
            if row.parent_checkpoint_id
            else None
        )
        found = CheckpointTuple(
            config=_config(thread_id, row.checkpoint_ns, row.checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata,
            parent_config=parent,
            pending_writes=[write for _, write in pending],
        )
        return found, metadata

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (by ``checkpoint_id``), else the thread's latest."""
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = str(configurable.get("checkpoint_ns", ""))
        checkpoint_id = get_checkpoint_id(config)
        self._seen_loop()
        lean = await self._lean_tuple(thread_id, ns, checkpoint_id)
        if lean is not False:
            return lean
        stmt = select(c_t).where(
            c_t.c.session_id == self._thread_session(thread_id), c_t.c.checkpoint_ns == ns
        )
        if checkpoint_id:
            stmt = stmt.where(c_t.c.checkpoint_id == str(checkpoint_id))
        else:
            stmt = stmt.order_by(c_t.c.checkpoint_id.desc()).limit(1)

        async def work(conn: AsyncConnection) -> CheckpointTuple | None:
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            return (await self._tuples(conn, [row], {row.session_id: thread_id}))[0][0]

        return await self._read(work, "read a LangGraph checkpoint")

    async def _lean_tuple(
        self, thread_id: str, ns: str, checkpoint_id: str | None
    ) -> CheckpointTuple | Literal[False] | None:
        """:meth:`aget_tuple` in two driver-level statements (see langgraph_sql); ``False``
        when the checkpoint has too many channels for them."""
        store = self.store
        backend = store._backend
        by_id = bool(checkpoint_id)
        statement = checkpoint_sql(backend.lane.style, store._scope_shape(), by_id)
        key_hash = store._key_hash(NAMESPACE, _check_external_id(thread_id))
        params = [key_hash, *store._scope_params(), ns]
        if by_id:
            params.append(str(checkpoint_id))
        decoded: list[Checkpoint] = []

        def versions(row: CheckpointRow) -> list[tuple[str, str]] | None:
            checkpoint: Checkpoint = self.serde.loads_typed((row.checkpoint_type, row.checkpoint))
            decoded[:] = [checkpoint]
            pairs = [(c, str(v)) for c, v in checkpoint["channel_versions"].items()]
            return pairs if len(pairs) <= MAX_CHANNELS else None

        async def work(db: Any) -> tuple[CheckpointRow, list[Part] | None] | None:
            return await read_checkpoint(backend, db, statement, params, versions)

        found = await store._run(
            work,
            write=False,
            action="read a LangGraph checkpoint",
            lean=True,
            one_read=not backend.is_sqlite,  # PostgreSQL: two statements in autocommit
            own_transaction=backend.one_hop_writes,
        )
        if found is None:
            return None
        row, parts = found
        if parts is None:
            return False
        values: dict[str, Any] = {}
        pending: list[tuple[tuple[str, str, int], PendingWrite]] = []
        for kind, channel, name, idx, task_path, value_type, value in parts:
            if kind == 0:
                if value_type != "empty" and value is not None:
                    values[channel] = self.serde.loads_typed((value_type, value))
            else:
                loaded = self.serde.loads_typed((value_type, cast("bytes", value)))
                order = writes_sort_key(task_path, name, idx)
                pending.append((order, (name, channel, loaded)))
        return self._assemble(thread_id, row, decoded[0], values, pending)[0]

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace, and checkpoint id,
        where it names them), or of every thread in the store's view when ``config`` is None;
        only those whose metadata has every item of ``filter``, older than ``before``, at most
        ``limit``."""
        self._seen_loop()
        where: list[ColumnElement[bool]] = []
        if config is not None:
            configurable = config["configurable"]
            thread_id = str(configurable["thread_id"])
            where.append(c_t.c.session_id == self._thread_session(thread_id))
            if configurable.get("checkpoint_ns") is not None:
                where.append(c_t.c.checkpoint_ns == str(configurable["checkpoint_ns"]))
            if checkpoint_id := get_checkpoint_id(config):
                where.append(c_t.c.checkpoint_id == str(checkpoint_id))
        else:
            where.append(self._in_view())
        if before is not None and (before_id := get_checkpoint_id(before)):
            where.append(c_t.c.checkpoint_id < str(before_id))
        if limit is not None and limit <= 0:
            return
        remaining = limit
        last: tuple[str, uuid.UUID] | None = None
        while True:
            page_where = list(where)
            if last is not None:
                page_where.append(
                    or_(
                        c_t.c.checkpoint_id < last[0],
                        and_(c_t.c.checkpoint_id == last[0], c_t.c.id < last[1]),
                    )
                )
            size = _PAGE if filter or remaining is None else min(_PAGE, remaining)
            stmt = (
                select(c_t, x_t.c.external_id)
                .join(x_t, x_t.c.session_id == c_t.c.session_id)
                .where(*page_where)
                .order_by(c_t.c.checkpoint_id.desc(), c_t.c.id.desc())
                .limit(size)
            )

            async def work(
                conn: AsyncConnection, stmt: Any = stmt
            ) -> tuple[list[tuple[CheckpointTuple, CheckpointMetadata]], Row[Any] | None]:
                rows = list(await conn.execute(stmt))
                names = {row.session_id: str(row.external_id) for row in rows}
                return await self._tuples(conn, rows, names), (rows[-1] if rows else None)

            page, tail = await self._read(work, "list LangGraph checkpoints")
            for found, metadata in page:
                if filter and not all(metadata.get(k) == v for k, v in filter.items()):
                    continue
                yield found
                if remaining is not None:
                    remaining -= 1
                    if remaining <= 0:
                        return
            if tail is None or len(page) < size:
                return
            last = (tail.checkpoint_id, tail.id)

    # ------------------------------------------------------------------ writing

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` with ``metadata``; of its channel values only those of
        ``new_versions`` are written (the others are stored already)."""
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = _bounded("checkpoint_ns", configurable.get("checkpoint_ns", ""))
        parent = configurable.get("checkpoint_id")
        parent_id = None if parent is None else _bounded("checkpoint_id", parent)
        checkpoint_id = _bounded("checkpoint_id", checkpoint["id"])
        stored = checkpoint.copy()
        values: dict[str, Any] = stored.pop("channel_values")  # type: ignore[misc]
        full_metadata = get_checkpoint_metadata(config, metadata)
        run_id = full_metadata.get("run_id")
        run = None if run_id is None else _bounded("run_id", run_id)
        blobs: dict[tuple[str, str], tuple[str, bytes | None]] = {}
        for channel, version in new_versions.items():
            key = (_bounded("channel", channel), _bounded("channel version", version))
            blobs[key] = (
                self.serde.dumps_typed(values[channel]) if channel in values else ("empty", None)
            )
        checkpoint_type, checkpoint_bytes = self.serde.dumps_typed(stored)
        metadata_type, metadata_bytes = self.serde.dumps_typed(full_metadata)
        now = _now()
        row = {
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
            "parent_checkpoint_id": parent_id,
            "run_id": run,
            "checkpoint_type": checkpoint_type,
            "checkpoint": checkpoint_bytes,
            "metadata_type": metadata_type,
            "metadata": metadata_bytes,
        }

        if await self._lean_put(thread_id, ns, blobs, row, now):
            return _config(thread_id, ns, checkpoint_id)
        await self._write_thread(
            thread_id,
            lambda conn, sid: self._upsert(conn, sid, ns, blobs, row, now),
            "store a LangGraph checkpoint",
        )
        return _config(thread_id, ns, checkpoint_id)

    async def _lean_put(
        self,
        thread_id: str,
        ns: str,
        blobs: dict[tuple[str, str], tuple[str, bytes | None]],
        row: dict[str, Any],
        now: datetime,
    ) -> bool:
        """:meth:`aput` in driver-level SQL (see langgraph_sql): on SQLite one hop, on
        PostgreSQL one statement in autocommit. ``False``, having written nothing, when the
        thread has no session yet (its first write makes one on the SQLAlchemy path) or the
        dialect has no such path (MySQL)."""
        store = self.store
        backend = store._backend
        if not (backend.one_hop_writes or backend.one_statement):
            return False
        self._seen_loop()
        lane = backend.lane
        owner = [store._key_hash(NAMESPACE, _check_external_id(thread_id)), *store._scope_params()]
        work: Callable[[Any], Awaitable[bool]]
        if backend.one_hop_writes:
            lookup = thread_session_sql(lane.style, store._scope_shape())
            at = lane.time_in(now)
            blob_rows = [
                (uuid7().hex, ns, channel, version, value_type, value, at)
                for (channel, version), (value_type, value) in blobs.items()
            ]
            checkpoint = (uuid7().hex, *(row[name] for name in _CHECKPOINT_COLUMNS), at)

            async def in_thread(db: Any) -> bool:
                return await sql.sqlite_in_thread(
                    db, sqlite_put, lookup, owner, blob_rows, checkpoint
                )

            work = in_thread
        else:
            keys, values = list(blobs), list(blobs.values())
            columns = [
                [uuid7() for _ in keys],
                [channel for channel, _ in keys],
                [version for _, version in keys],
                [value_type for value_type, _ in values],
                [value for _, value in values],
            ]
            params = [*owner, ns, now, *columns, uuid7()]
            params += [row[name] for name in _CHECKPOINT_COLUMNS[1:]]
            statement = pg_put_sql(store._scope_shape())

            async def one_statement(db: Any) -> bool:
                return bool(await lane.fetch(db, statement, params))

            work = one_statement
        # Each is atomic on its own (one transaction in the thread, or one statement): no
        # BEGIN or COMMIT round trip from the runner.
        return await store._run(
            work,
            write=True,
            action="store a LangGraph checkpoint",
            lean=True,
            own_transaction=True,
        )

    def _upserts(self) -> tuple[Any, Any]:
        """The two statements of :meth:`aput`, built once per saver (and per dialect): blobs
        already stored are left as they are, a checkpoint stored again gets the new columns
        (``ON CONFLICT`` on PostgreSQL and SQLite, ``ON DUPLICATE KEY`` on MySQL)."""
        if self._statements is not None:
            return self._statements
        kind = self.store.url.kind
        blob_insert: Any
        upsert: Any
        if kind == "mysql":
            blob_insert = mysql_insert(b_t).on_duplicate_key_update(id=b_t.c.id)  # a no-op
            checkpoint_insert = mysql_insert(c_t)
            upsert = checkpoint_insert.on_duplicate_key_update(
                {name: checkpoint_insert.inserted[name] for name in _CHECKPOINT_COLUMNS}
            )
        else:
            blob_key = [b_t.c.session_id, b_t.c.checkpoint_ns, b_t.c.channel, b_t.c.version]
            checkpoint_key = [c_t.c.session_id, c_t.c.checkpoint_ns, c_t.c.checkpoint_id]
            if kind == "postgresql":
                blob_insert = pg_insert(b_t).on_conflict_do_nothing(index_elements=blob_key)
                pg_checkpoint = pg_insert(c_t)
                upsert = pg_checkpoint.on_conflict_do_update(
                    index_elements=checkpoint_key,
                    set_={name: pg_checkpoint.excluded[name] for name in _CHECKPOINT_COLUMNS},
                )
            else:
                blob_insert = sqlite_insert(b_t).on_conflict_do_nothing(index_elements=blob_key)
                lite_checkpoint = sqlite_insert(c_t)
                upsert = lite_checkpoint.on_conflict_do_update(
                    index_elements=checkpoint_key,
                    set_={name: lite_checkpoint.excluded[name] for name in _CHECKPOINT_COLUMNS},
                )
        self._statements = (blob_insert, upsert)
        return self._statements

    async def _upsert(
        self,
        conn: AsyncConnection,
        sid: uuid.UUID,
        ns: str,
        blobs: dict[tuple[str, str], tuple[str, bytes | None]],
        row: dict[str, Any],
        now: datetime,
    ) -> None:
        """:meth:`aput`'s writes as two statements, so no round trip asks what is stored."""
        blob_insert, upsert = self._upserts()
        if blobs:
            values = [
                {
                    "id": uuid7(),
                    "session_id": sid,
                    "checkpoint_ns": ns,
                    "channel": channel,
                    "version": version,
                    "value_type": value_type,
                    "value": value,
                    "created_at": now,
                }
                for (channel, version), (value_type, value) in blobs.items()
            ]
            await conn.execute(blob_insert, values)
        await conn.execute(upsert, {**row, "session_id": sid, "id": uuid7(), "created_at": now})

    async def _write_thread(
        self,
        thread_id: str,
        work: Callable[[AsyncConnection, uuid.UUID], Awaitable[None]],
        action: str,
    ) -> None:
        """``work`` on the thread's session, looked up in the write's own transaction; only a
        thread's first write makes the session first (a transaction of its own)."""
        self._seen_loop()
        lookup = select(self._thread_session(thread_id))

        async def found(conn: AsyncConnection) -> None:
            sid = (await conn.execute(lookup)).scalar()
            if sid is None:
                raise _NewThread
            await work(conn, sid)

        try:
            await self._write_retrying(found, action)
            return
        except _NewThread:
            pass
        made = await self._session(thread_id, create=True)
        assert made is not None

        async def on_made(conn: AsyncConnection) -> None:
            await work(conn, made)

        await self._write_retrying(on_made, action)

    async def _write_retrying(
        self, work: Callable[[AsyncConnection], Awaitable[None]], action: str
    ) -> None:
        """``work`` once more if a concurrent writer inserted the same key first: the second
        run sees that row and does not insert it again."""
        try:
            await self._write(work, action)
        except ConflictError:
            await self._write(work, action)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store the pending writes of task ``task_id`` against ``config``'s checkpoint.

        A write already stored under the same ``(task_id, index)`` is kept as it is; special
        channels (errors, interrupts, ...: ``WRITES_IDX_MAP``) replace the stored one."""
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = _bounded("checkpoint_ns", configurable.get("checkpoint_ns", ""))
        checkpoint_id = _bounded("checkpoint_id", configurable["checkpoint_id"])
        task = _bounded("task_id", task_id)
        items: dict[int, dict[str, Any]] = {}
        for index, (channel, value) in enumerate(writes):
            value_type, payload = self.serde.dumps_typed(value)
            items[WRITES_IDX_MAP.get(channel, index)] = {
                "channel": _bounded("write channel", channel),
                "value_type": value_type,
                "value": payload,
            }
        if not items:
            return

        async def work(conn: AsyncConnection, sid: uuid.UUID) -> None:
            key = [
                w_t.c.session_id == sid,
                w_t.c.checkpoint_ns == ns,
                w_t.c.checkpoint_id == checkpoint_id,
                w_t.c.task_id == task,
            ]
            have = set((await conn.execute(select(w_t.c.idx).where(*key))).scalars())
            replaced = [idx for idx in items if idx < 0 and idx in have]
            if replaced:
                await conn.execute(delete(w_t).where(*key, w_t.c.idx.in_(replaced)))
            now = _now()
            new = [
                {
                    "id": uuid7(),
                    "session_id": sid,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                    "task_id": task,
                    "idx": idx,
                    "task_path": str(task_path),
                    "created_at": now,
                    **item,
                }
                for idx, item in items.items()
                if idx < 0 or idx not in have
            ]
            if new:
                await conn.execute(insert(w_t), new)

        await self._write_thread(thread_id, work, "store LangGraph writes")

    # ------------------------------------------------------------------ deleting, copying

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete the thread's checkpoints, channel values and writes (its session stays,
        with anything else it holds; :meth:`mofa_persist.Store.delete_session` removes all)."""
        sid = await self._session(thread_id, create=False)
        if sid is None:
            return

        async def work(conn: AsyncConnection) -> None:
            for table in (w_t, b_t, c_t):
                await conn.execute(delete(table).where(table.c.session_id == sid))

        await self._write(work, "delete a LangGraph thread")

    async def _delete_checkpoints(
        self, conn: AsyncConnection, keys: Sequence[tuple[uuid.UUID, str, str]]
    ) -> None:
        for part in _chunks(keys):
            for table in (w_t, c_t):
                await conn.execute(
                    delete(table).where(
                        or_(
                            *(
                                and_(
                                    table.c.session_id == sid,
                                    table.c.checkpoint_ns == ns,
                                    table.c.checkpoint_id == cid,
                                )
                                for sid, ns, cid in part
                            )
                        )
                    )
                )

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that the given runs made, in every thread
        of the store's view."""
        self._seen_loop()
        runs = sorted({str(run) for run in run_ids})
        if not runs:
            return

        async def work(conn: AsyncConnection) -> None:
            for part in _chunks(runs):
                stmt = select(c_t.c.session_id, c_t.c.checkpoint_ns, c_t.c.checkpoint_id).where(
                    c_t.c.run_id.in_(part), self._in_view()
                )
                keys = [
                    (r.session_id, r.checkpoint_ns, r.checkpoint_id)
                    for r in await conn.execute(stmt)
                ]
                await self._delete_checkpoints(conn, keys)

        await self._write(work, "delete the LangGraph checkpoints of runs")

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, channel value and write of one thread to another (rows the
        target has already are left as they are)."""
        source = await self._session(source_thread_id, create=False)
        if source is None:
            return
        target = await self._session(target_thread_id, create=True)
        assert target is not None
        natural = {
            c_t: ("checkpoint_ns", "checkpoint_id"),
            b_t: ("checkpoint_ns", "channel", "version"),
            w_t: ("checkpoint_ns", "checkpoint_id", "task_id", "idx"),
        }

        async def work(conn: AsyncConnection) -> None:
            now = _now()
            for table in (c_t, b_t, w_t):
                names = natural[table]
                have = {
                    tuple(r)
                    for r in await conn.execute(
                        select(*(table.c[n] for n in names)).where(table.c.session_id == target)
                    )
                }
                rows = (
                    await conn.execute(
                        select(table).where(table.c.session_id == source).order_by(table.c.id)
                    )
                ).mappings()
                copies = [
                    {**row, "id": uuid7(), "session_id": target, "created_at": now}
                    for row in rows
                    if tuple(row[n] for n in names) not in have
                ]
                for part in _chunks(copies):
                    await conn.execute(insert(table), list(part))

        await self._write(work, "copy a LangGraph thread")

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep each namespace's latest checkpoint (with its writes and the
        channel values it uses) and delete the rest; ``"delete"``: delete the threads' data.

        Graphs with LangGraph's beta ``DeltaChannel`` rebuild values from older checkpoints'
        writes: do not prune their threads with ``"keep_latest"``."""
        if strategy not in ("keep_latest", "delete"):
            raise InvalidInputError(f"strategy must be 'keep_latest' or 'delete', not {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
                continue
            sid = await self._session(thread_id, create=False)
            if sid is not None:
                await self._keep_latest(sid)

    async def _keep_latest(self, sid: uuid.UUID) -> None:
        async def work(conn: AsyncConnection) -> None:
            latest = {
                r.checkpoint_ns: r.latest
                for r in await conn.execute(
                    select(c_t.c.checkpoint_ns, func.max(c_t.c.checkpoint_id).label("latest"))
                    .where(c_t.c.session_id == sid)
                    .group_by(c_t.c.checkpoint_ns)
                )
            }
            for ns, keep in latest.items():
                in_ns = [c_t.c.session_id == sid, c_t.c.checkpoint_ns == ns]
                kept = (
                    await conn.execute(
                        select(c_t.c.checkpoint_type, c_t.c.checkpoint).where(
                            *in_ns, c_t.c.checkpoint_id == keep
                        )
                    )
                ).one()
                checkpoint = self.serde.loads_typed((kept.checkpoint_type, kept.checkpoint))
                used = {(ch, str(v)) for ch, v in checkpoint["channel_versions"].items()}
                for table in (w_t, c_t):
                    await conn.execute(
                        delete(table).where(
                            table.c.session_id == sid,
                            table.c.checkpoint_ns == ns,
                            table.c.checkpoint_id != keep,
                        )
                    )
                unused = [
                    r.id
                    for r in await conn.execute(
                        select(b_t.c.id, b_t.c.channel, b_t.c.version).where(
                            b_t.c.session_id == sid, b_t.c.checkpoint_ns == ns
                        )
                    )
                    if (r.channel, r.version) not in used
                ]
                for part in _chunks(unused):
                    await conn.execute(delete(b_t).where(b_t.c.id.in_(part)))

        await self._write(work, "prune a LangGraph thread")

    # ------------------------------------------------------------------ versions, sync API

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions sort as strings: a zero-padded counter, then a random fraction (so two
        writers that fork one thread do not produce the same version)."""
        if current is None:
            counter = 0
        elif isinstance(current, (int, float)):
            counter = int(current)
        else:
            counter = int(current.split(".", 1)[0])
        return f"{counter + 1:032}.{random.random():016}"

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [
                found
                async for found in self.alist(config, filter=filter, before=before, limit=limit)
            ]

        yield from self._sync(collect())

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._sync(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(self.aprune(thread_ids, strategy=strategy))
