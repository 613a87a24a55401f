"""Portable column types, decided once for every dialect.

- ``UTCDateTime``: timezone-aware UTC on every dialect (TIMESTAMPTZ on PostgreSQL, DATETIME(6)
  on MySQL, ISO text on SQLite); naive datetimes are refused on write.
- ``JSONDocument``: JSONB on PostgreSQL, JSON elsewhere (on MariaDB an alias of LONGTEXT that
  keeps the text exactly as written).
- ``LongText``: TEXT, but LONGTEXT on MySQL/MariaDB so a 10 MB message fits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Text
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as UTC and always returned timezone-aware (``tzinfo=UTC``)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            # Plain DATETIME keeps whole seconds only; listing order needs microseconds.
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime refused: pass a timezone-aware value")
        value = value.astimezone(UTC)
        if dialect.name == "postgresql":
            return value
        # SQLite and MySQL have no zone in the column: store the UTC wall clock.
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONDocument: TypeEngine[Any] = JSON().with_variant(postgresql.JSONB(), "postgresql")
LongText: TypeEngine[str] = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
