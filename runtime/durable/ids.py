"""Run ids: UUIDs of version 7 (RFC 9562), whose leading 48 bits are the creation time in ms.

A run's id is the key of ``executions`` and leads ``steps_by_run``; each start inserts one of each
and each step another ``steps`` entry. Random (version 4) ids spread those inserts over every leaf
page of both indexes, so as history grows every insert dirties a page no recent insert touched: more
pages to keep in memory, and after each checkpoint a full-page image in the WAL for nearly every
insert. Time-ordered ids put them on the few rightmost pages. They stay ordinary UUIDs, unique by
their 74 random bits.
"""

from __future__ import annotations

import os
import time
import uuid


def new_run_id() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, of which 74 are kept
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & (1 << 62) - 1
    return str(uuid.UUID(int=value))
