"""The data lifecycle: retention policies applied online, and erasure with an audit trail.

``policy`` says what is kept; ``retention`` applies a policy in bounded batches; ``erasure``
removes one user or tenant from every table the library owns; ``batches`` is the online
deletion both share. The store exposes them as ``apply_retention``, ``erase_user``,
``erase_tenant`` and ``list_erasures``; the CLI as ``prune --policy``, ``erase`` and
``erasures``. See docs/lifecycle.md.
"""

from .erasure import Erasure, ErasureKind, list_erasures, personal_tables
from .policy import RetentionPolicy, parse_age
from .retention import RetentionReport, apply_retention

__all__ = [
    "Erasure",
    "ErasureKind",
    "RetentionPolicy",
    "RetentionReport",
    "apply_retention",
    "list_erasures",
    "parse_age",
    "personal_tables",
]
