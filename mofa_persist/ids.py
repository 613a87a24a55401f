"""Time-ordered UUIDv7 ids (RFC 9562), generated in Python so a row's key is known before INSERT.

Python 3.14 ships ``uuid.uuid7``; on 3.11-3.13 we use the short generator below rather than a
dependency. It follows RFC 9562 section 6.2 method 1: a 42-bit counter seeded randomly each
millisecond keeps ids strictly increasing within one process, even for many ids per millisecond.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7, greater than every one this process returned before."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Seed with the top bit clear so a burst in one millisecond has room to count up.
            _counter = int.from_bytes(os.urandom(6), "big") >> (48 - _COUNTER_BITS + 1)
        else:
            _counter += 1
            if _counter > _COUNTER_MAX:  # exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    tail = int.from_bytes(os.urandom(4), "big")  # 32 random bits after the counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= (counter >> 30) << 64  # rand_a: counter's top 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= (counter & 0x3FFF_FFFF) << 32  # counter's low 30 bits
    value |= tail
    return uuid.UUID(int=value)
