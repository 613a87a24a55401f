"""``python -m bench``: see :mod:`bench.cli`."""

from bench.cli import main

# Guarded: the 4-process workload spawns children that import this module as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
