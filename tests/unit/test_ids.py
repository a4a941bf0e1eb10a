"""Run ids are UUIDs of version 7: time-ordered, so new runs' index entries land together."""

from __future__ import annotations

import time
import uuid

from durable.ids import new_run_id


def test_a_run_id_is_a_version_7_uuid_led_by_its_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(new_run_id())
    after = time.time_ns() // 1_000_000
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_run_ids_made_later_sort_after_earlier_ones_and_never_repeat() -> None:
    earlier = [new_run_id() for _ in range(1000)]
    time.sleep(0.002)
    later = [new_run_id() for _ in range(1000)]
    assert max(earlier) < min(later)  # as text, as PostgreSQL's uuid order, and as bytes
    assert max(uuid.UUID(i).bytes for i in earlier) < min(uuid.UUID(i).bytes for i in later)
    assert len(set(earlier + later)) == 2000
