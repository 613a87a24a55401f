"""The ``mofa-persist`` command: migrations, inspection, rewind/fork, export/import, copy,
retention, erasure.

Typer builds the commands from typed functions; Rich draws the tables and progress bars (on
stderr, so ``--json`` output and exports to stdout stay clean). Each command is a thin shell
around :mod:`mofa_persist.transfer` or the store API (retention policies and erasure).

Errors are one line on stderr, ``error: ...``, with exit code 1 (2 for usage errors, 130 when
interrupted, 143 when stopped by SIGTERM); ``--verbose`` adds the traceback. Documented in
``docs/cli.md``.

The layout: ``app`` holds the Typer app and what every command shares (options, output,
error handling), ``database`` opens stores for commands and ``views`` turns ``--tenant``,
``--user`` and ``--agent`` into the view a command runs on; the commands register on the app
in ``schema``, ``inspection``, ``timeline`` (rewind, fork), ``data``, ``lifecycle`` and
``demo``, imported here in the order ``--help`` lists them.
"""

from .app import app

# Importing a command module registers its commands; --help lists them in this order.
# isort: off
from . import schema, inspection, timeline, search, data, frameworks, lifecycle, demo  # noqa: F401
# isort: on


def main() -> None:
    """The ``mofa-persist`` console script."""
    app(prog_name="mofa-persist")


__all__ = ["app", "main"]
