"""``python -m bench.peers_openai_agents``: kept for the command in docs/integrations; it runs the
shared harness (:mod:`bench.peers`) for openai-agents only and writes
``bench/results/peers_openai_agents.md``."""

from __future__ import annotations

import sys

from .peers.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--frameworks", "openai-agents", *sys.argv[1:]]))
