"""What each of a worker's slots is doing, for push dispatch (migration 0012).

A slot runs one task chain at a time. Between chains it is either kept for the worker's own
dispatch rounds (idle) or offered in ``dispatch_slots``, where a start can lease a new run to it
and push the task over ``durable_push``. The database and this book change in separate steps, so
a slot passes through states that say which change is on its way:

    idle ──reserve──▶ reserved ──(a round leased a task)──▶ busy ──(its chain ended)──▶ reserved
    reserved ──(unused)──▶ idle or offering
    busy ──(its last checkpoint offers it)──▶ offering ──(committed)──▶ offered
    offering, offered ──(a push)──▶ busy
    offered ──withdraw──▶ withdrawing ──▶ idle, busy, or awaiting (a push is on its way) ──▶ busy

A push is accepted only for a slot the database may have offered (offering, offered,
withdrawing, awaiting), so a slot never runs a pushed task and a polled one at once. Every
method takes the book's lock; none touches the database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

IDLE, RESERVED, BUSY, OFFERING, OFFERED, WITHDRAWING, AWAITING = (
    "idle", "reserved", "busy", "offering", "offered", "withdrawing", "awaiting")
_PUSHABLE = frozenset({OFFERING, OFFERED, WITHDRAWING, AWAITING})


class SlotBook:
    def __init__(self, queues: dict[str, int]) -> None:
        self.queue_of: dict[int, str] = {}
        for queue, n in queues.items():
            for _ in range(n):
                self.queue_of[len(self.queue_of)] = queue
        self._state = dict.fromkeys(self.queue_of, IDLE)
        self._received: dict[int, int] = {}  # slot -> the last pushed task it accepted
        self._chain: dict[int, int] = {}  # slot -> the first task of the chain it runs
        self._awaited: dict[int, int] = {}  # slot -> the pushed task it waits for
        self._lock = threading.Lock()

    def state(self, slot: int) -> str:
        with self._lock:
            return self._state[slot]

    def count(self, queue: str, *states: str) -> int:
        with self._lock:
            return sum(1 for s, st in self._state.items() if st in states and self.queue_of[s] == queue)

    def _take(self, queue: str | None, old: str, new: str) -> list[int]:
        slots = [s for s, st in self._state.items() if st == old and (queue is None or self.queue_of[s] == queue)]
        for s in slots:
            self._state[s] = new
        return slots

    # -- the worker's own dispatch rounds -------------------------------------------------------

    def reserve(self, queue: str) -> list[int]:
        """Every idle slot of ``queue``, for a round to lease into; none stays idle meanwhile."""
        with self._lock:
            return self._take(queue, IDLE, RESERVED)

    def occupy(self, slot: int, task_id: int) -> None:
        """A reserved slot got a leased task."""
        with self._lock:
            self._state[slot] = BUSY
            self._chain[slot] = task_id

    def unreserve(self, slots: Iterable[int]) -> None:
        with self._lock:
            for s in slots:
                if self._state[s] == RESERVED:
                    self._state[s] = IDLE

    # -- offers -------------------------------------------------------------------------------------

    def begin_offer(self, slots: Iterable[int]) -> list[int]:
        """Reserved slots about to be offered; returns those that may be."""
        with self._lock:
            out = [s for s in slots if self._state[s] == RESERVED]
            for s in out:
                self._state[s] = OFFERING
            return out

    def offer_at_end(self, slot: int, chain: int) -> bool:
        """The chain that began with task ``chain`` is committing its last checkpoint, which may
        offer the slot in the same transaction: True when it may (the slot is offering from now)."""
        with self._lock:
            if self._state[slot] != BUSY or self._chain.get(slot) != chain:
                return False
            self._state[slot] = OFFERING
            return True

    def finish(self, slot: int, chain: int) -> str:
        """The chain that began with task ``chain`` ended. Returns 'free' when the slot is still
        ours to keep or offer (it is reserved from now), else what it is already: 'offered' (its
        last checkpoint offered it), or 'busy' (a push came for it)."""
        with self._lock:
            if self._chain.get(slot) != chain:
                return BUSY
            if self._state[slot] == OFFERING:
                self._state[slot] = OFFERED
                return OFFERED
            if self._state[slot] == BUSY:
                self._state[slot] = RESERVED
                return "free"
            return self._state[slot]

    def end_offer(self, slots: Iterable[int]) -> None:
        """The offer committed, or may have (a failed call): either way the slots count as offered
        until taken back, which tells. A slot pushed to meanwhile is busy already."""
        with self._lock:
            for s in slots:
                if self._state[s] == OFFERING:
                    self._state[s] = OFFERED

    def begin_withdraw(self, queue: str | None) -> list[int]:
        """The offered slots of ``queue`` (of all queues with None), about to be taken back."""
        with self._lock:
            return self._take(queue, OFFERED, WITHDRAWING)

    def end_withdraw(self, rows: Iterable[tuple[int, bool, int | None]]) -> None:
        """What the database said of each slot taken back: (slot, offered until now, last task pushed)."""
        with self._lock:
            for slot, was_free, task_id in rows:
                if self._state[slot] != WITHDRAWING:
                    continue  # its push arrived meanwhile: busy
                if was_free or task_id is None or task_id == self._received.get(slot):
                    self._state[slot] = IDLE  # still offered; or the offer never committed
                else:
                    self._state[slot] = AWAITING
                    self._awaited[slot] = task_id

    def abort_withdraw(self, slots: Iterable[int]) -> None:
        """The withdrawal failed: the slots may still be offered."""
        with self._lock:
            for s in slots:
                if self._state[s] == WITHDRAWING:
                    self._state[s] = OFFERED

    def awaited(self) -> dict[int, int]:
        with self._lock:
            return {s: t for s, t in self._awaited.items() if self._state[s] == AWAITING}

    def give_up(self, slots: Iterable[int]) -> None:
        """Awaited pushes that will never come (their task is gone or leased elsewhere)."""
        with self._lock:
            for s in slots:
                if self._state[s] == AWAITING:
                    self._state[s] = IDLE
                    self._awaited.pop(s, None)

    def forget_offers(self) -> None:
        """The database lost every offer (the worker registered again): nothing can be pushed."""
        with self._lock:
            for s, st in self._state.items():
                if st in (OFFERED, AWAITING):
                    self._state[s] = IDLE
            self._awaited.clear()

    # -- pushes and finished chains ------------------------------------------------------------

    def push(self, slot: int, task_id: int) -> bool:
        """A task pushed to ``slot``: True when the slot takes it (it is busy from now on)."""
        with self._lock:
            if self._state.get(slot) not in _PUSHABLE or self._received.get(slot) == task_id:
                return False
            self._state[slot] = BUSY
            self._received[slot] = task_id
            self._chain[slot] = task_id
            self._awaited.pop(slot, None)
            return True

    def received(self) -> list[int]:
        with self._lock:
            return list(self._received.values())
