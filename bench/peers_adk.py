"""``python -m bench.peers_adk``: kept for the command in docs/integrations; it runs the
shared harness (:mod:`bench.peers`) for adk only and writes
``bench/results/peers_adk.md``."""

from __future__ import annotations

import sys

from .peers.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--frameworks", "adk", *sys.argv[1:]]))
