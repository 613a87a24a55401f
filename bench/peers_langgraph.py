"""``python -m bench.peers_langgraph``: kept for the command in docs/integrations; it runs the
shared harness (:mod:`bench.peers`) for langgraph only and writes
``bench/results/peers_langgraph.md``."""

from __future__ import annotations

import sys

from .peers.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--frameworks", "langgraph", *sys.argv[1:]]))
