"""Framework session stores against this library, in one run: ``python -m bench.peers``.

See :mod:`bench.peers.harness` for the workloads and :mod:`bench.peers.__main__` for the
command; each framework's stores live in a module of their own, imported only when present.
"""
