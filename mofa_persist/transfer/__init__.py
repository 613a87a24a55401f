"""Operations on whole databases: export, import, copy, prune and stats.

These are what the ``mofa-persist`` command runs, usable from Python as well. They work at the
Core level on ``store.engine`` with the model tables, not through the repository API, so that
ids, ``seq`` numbers, state versions, timestamps and a session's counters move EXACTLY (the API
would hand out new ones). Everything streams in keyset pages, so memory stays flat however long
a history is.

The layout: ``common`` (tables, counts, selections, canonical rows) and ``reading`` (snapshots,
keyset pages, fingerprints) are shared; ``lines`` parses an export file and ``merging`` writes
rows that may already exist; ``export``, ``importing``, ``copying``, ``pruning`` and ``stats``
are one operation each. The export format is described in ``docs/export-format.md``.
"""

from .common import (
    DEFAULT_BATCH,
    FORMAT_NAME,
    FORMAT_VERSION,
    KINDS,
    TABLES,
    Counts,
    Kind,
    Selection,
    canonical_line,
    record_of,
)
from .copying import CopyReport, Outcome, copy_data
from .export import count_selection, dump_line, export_header, export_jsonl, iter_export
from .importing import ImportReport, import_jsonl, validate_file
from .lines import FIELDS, FieldCheck, Line, parse_line
from .pruning import PruneReport, count_prune_candidates, parse_age, prune
from .reading import Fingerprint, fingerprint
from .stats import Stats, collect_stats

__all__ = [
    "DEFAULT_BATCH",
    "FIELDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KINDS",
    "TABLES",
    "CopyReport",
    "Counts",
    "FieldCheck",
    "Fingerprint",
    "ImportReport",
    "Kind",
    "Line",
    "Outcome",
    "PruneReport",
    "Selection",
    "Stats",
    "canonical_line",
    "collect_stats",
    "copy_data",
    "count_prune_candidates",
    "count_selection",
    "dump_line",
    "export_header",
    "export_jsonl",
    "fingerprint",
    "import_jsonl",
    "iter_export",
    "parse_age",
    "parse_line",
    "prune",
    "record_of",
    "validate_file",
]
