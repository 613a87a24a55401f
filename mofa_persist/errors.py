"""The exceptions the public API raises.

Every failure that reaches a caller is one of these; raw driver and SQLAlchemy exceptions are
translated at the store boundary and kept as ``__cause__``. Messages never contain passwords.
"""

from __future__ import annotations


class PersistenceError(Exception):
    """Base class of every error raised by mofa-persist."""


class NotFoundError(PersistenceError, LookupError):
    """The session (or state version) does not exist, or is outside the caller's scope."""


class ConflictError(PersistenceError):
    """A write lost a race: an ``expected_version`` that is no longer current, a duplicate id."""


class InvalidInputError(PersistenceError, ValueError):
    """An argument was refused before anything was written."""


class BackendError(PersistenceError):
    """The database could not be reached or failed a query.

    ``host`` and ``database`` name where the store points (never the password); the driver's
    exception is ``__cause__``. ``outcome_unknown`` is true when the connection was lost or
    timed out while committing a write: it may or may not be stored, so check before
    writing it again.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        database: str | None = None,
        outcome_unknown: bool = False,
    ):
        super().__init__(message)
        self.host = host
        self.database = database
        self.outcome_unknown = outcome_unknown
