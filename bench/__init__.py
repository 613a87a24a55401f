"""Benchmarks of mofa-persist against the raw drivers and plain SQLAlchemy Core.

Run ``python -m bench`` from the repository root (``--help`` for options). Every workload is
done three times in the same run, on the same database: by a hand-written raw-driver *floor*
(asyncpg / aiomysql / aiosqlite on a minimal equivalent schema), by plain SQLAlchemy *Core* on
the library's engine, and by the *library*; results are reported as ratios to the floor.
"""
