"""search: the SQLite rowid map holds each message's created_at; PostgreSQL analyzes messages

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

- SQLite (and memory): ``messages_search_map`` gains ``created_at``, copied from the message
  and kept in step by the insert trigger and a new trigger ``messages_search_moved`` (on an
  update of ``created_at``). Every match is then sorted by (rank, created_at, id) from the
  FTS5 table and the map alone, and ``messages`` is read for one page. SQLite cannot add a
  NOT NULL column without a default, so the map is rebuilt: renamed aside, created again,
  filled with the same ids (they are the FTS5 rowids: the FTS5 table is not touched and
  keeps pointing at the same messages) and the old one dropped. Its triggers are dropped
  first and made again after, as the rename would otherwise rewrite them.
- PostgreSQL: ``ANALYZE messages``, so the planner has statistics for migration 0008's
  ``search_vector`` now, not when autovacuum gets to it (without them it guesses 500
  matches for every word). Harmless when repeated.
- MySQL/MariaDB: nothing.

Upgrading also works on a database whose map already has the column (made by an unreleased
edit of migration 0008): the map is rebuilt the same way. Downgrading rebuilds the map of
revision 0008 (the same ids, no ``created_at``) and its insert trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MAP_0008 = (
    "CREATE TABLE messages_search_map ("
    " id INTEGER PRIMARY KEY, message_id CHAR(32) NOT NULL UNIQUE)"
)
_MAP_0009 = (
    "CREATE TABLE messages_search_map ("
    " id INTEGER PRIMARY KEY, message_id CHAR(32) NOT NULL UNIQUE, created_at DATETIME NOT NULL)"
)
_INSERT_0008 = (
    "CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN"
    " INSERT INTO messages_search_map (message_id) VALUES (new.id);"
    " INSERT INTO messages_search (rowid, content) VALUES (last_insert_rowid(), new.content);"
    " END"
)
_INSERT_0009 = (
    "CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN"
    " INSERT INTO messages_search_map (message_id, created_at) VALUES (new.id, new.created_at);"
    " INSERT INTO messages_search (rowid, content) VALUES (last_insert_rowid(), new.content);"
    " END"
)
# As migration 0008 made them; made again after the map is rebuilt.
_DELETE = (
    "CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN"
    " INSERT INTO messages_search (messages_search, rowid, content)"
    " SELECT 'delete', id, old.content FROM messages_search_map WHERE message_id = old.id;"
    " DELETE FROM messages_search_map WHERE message_id = old.id;"
    " END"
)
_UPDATE = (
    "CREATE TRIGGER messages_search_update AFTER UPDATE OF content ON messages BEGIN"
    " INSERT INTO messages_search (messages_search, rowid, content)"
    " SELECT 'delete', id, old.content FROM messages_search_map WHERE message_id = old.id;"
    " INSERT INTO messages_search (rowid, content)"
    " SELECT id, new.content FROM messages_search_map WHERE message_id = new.id;"
    " END"
)
_MOVED = (
    "CREATE TRIGGER messages_search_moved AFTER UPDATE OF created_at ON messages BEGIN"
    " UPDATE messages_search_map SET created_at = new.created_at WHERE message_id = new.id;"
    " END"
)
_DROP_TRIGGERS = [
    "DROP TRIGGER IF EXISTS messages_search_moved",
    "DROP TRIGGER IF EXISTS messages_search_update",
    "DROP TRIGGER IF EXISTS messages_search_delete",
    "DROP TRIGGER IF EXISTS messages_search_insert",
]
_ASIDE = "messages_search_map_0009"

_SQLITE_UP = [
    *_DROP_TRIGGERS,
    f"DROP TABLE IF EXISTS {_ASIDE}",
    f"ALTER TABLE messages_search_map RENAME TO {_ASIDE}",
    _MAP_0009,
    # Every map row has its message (the delete trigger removes the row with it).
    "INSERT INTO messages_search_map (id, message_id, created_at)"
    f" SELECT k.id, k.message_id, m.created_at FROM {_ASIDE} k"
    " JOIN messages m ON m.id = k.message_id ORDER BY k.id",
    f"DROP TABLE {_ASIDE}",
    _INSERT_0009,
    _DELETE,
    _UPDATE,
    _MOVED,
]
_SQLITE_DOWN = [
    *_DROP_TRIGGERS,
    f"DROP TABLE IF EXISTS {_ASIDE}",
    f"ALTER TABLE messages_search_map RENAME TO {_ASIDE}",
    _MAP_0008,
    "INSERT INTO messages_search_map (id, message_id)"
    f" SELECT id, message_id FROM {_ASIDE} ORDER BY id",
    f"DROP TABLE {_ASIDE}",
    _INSERT_0008,
    _DELETE,
    _UPDATE,
]


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute("ANALYZE messages")
    elif dialect in ("mysql", "mariadb"):
        pass
    else:
        for statement in _SQLITE_UP:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect in ("postgresql", "mysql", "mariadb"):
        return  # statistics are not undone
    for statement in _SQLITE_DOWN:
        op.execute(statement)
