"""The slot book's states (``durable.slots``): a slot never takes a pushed task and a polled one at
once, and a push is taken only by a slot the database may have offered."""

from __future__ import annotations

from durable.slots import BUSY, IDLE, OFFERED, RESERVED, SlotBook


def test_slots_are_numbered_per_queue() -> None:
    book = SlotBook({"a": 2, "b": 1})
    assert book.queue_of == {0: "a", 1: "a", 2: "b"}
    assert book.count("a", IDLE) == 2 and book.count("b", IDLE) == 1


def test_a_round_reserves_idle_slots_and_offers_what_it_did_not_fill() -> None:
    book = SlotBook({"a": 3})
    slots = book.reserve("a")
    assert slots == [0, 1, 2] and book.reserve("a") == []  # reserved: no second round gets them
    book.occupy(0, task_id=7)
    assert book.begin_offer(slots[1:]) == [1, 2]
    assert book.push(1, 100) is True  # the offer committed and a start used it before end_offer
    book.end_offer([1, 2])
    assert [book.state(s) for s in (0, 1, 2)] == [BUSY, BUSY, OFFERED]


def test_no_push_for_a_slot_that_was_never_offered() -> None:
    book = SlotBook({"a": 2})
    assert book.push(0, 5) is False  # idle: kept for rounds
    book.reserve("a")
    book.occupy(0, task_id=1)
    assert book.push(0, 5) is False  # busy with a polled task
    assert book.push(1, 5) is False  # reserved by a round


def test_taking_back_an_offer_tells_a_pushed_slot_from_a_free_one() -> None:
    book = SlotBook({"a": 3})
    book.begin_offer(book.reserve("a"))
    book.end_offer([0, 1, 2])
    assert book.push(2, 40) is True
    assert book.begin_withdraw("a") == [0, 1]
    # Slot 0 was still offered; slot 1 got task 41 whose notification has not arrived yet.
    book.end_withdraw([(0, True, None), (1, False, 41)])
    assert book.state(0) == IDLE and book.awaited() == {1: 41}
    assert book.push(1, 41) is True and book.state(1) == BUSY and book.awaited() == {}


def test_an_offer_that_never_committed_is_taken_back_as_idle() -> None:
    book = SlotBook({"a": 1})
    book.begin_offer(book.reserve("a"))
    assert book.push(0, 9) is True  # an earlier push, received and run
    assert book.finish(0, chain=9) == "free"
    book.begin_offer([0])
    book.end_offer([0])  # unsure: the call failed
    book.begin_withdraw("a")
    book.end_withdraw([(0, False, 9)])  # not offered, and its last push is the one received
    assert book.state(0) == IDLE


def test_a_push_that_arrives_while_the_slot_is_being_taken_back_wins() -> None:
    book = SlotBook({"a": 1})
    book.begin_offer(book.reserve("a"))
    book.end_offer([0])
    book.begin_withdraw("a")
    assert book.push(0, 3) is True
    book.end_withdraw([(0, False, 3)])
    assert book.state(0) == BUSY


def test_a_chain_that_offered_its_slot_at_its_last_checkpoint() -> None:
    book = SlotBook({"a": 1})
    book.reserve("a")
    book.occupy(0, task_id=1)
    assert book.offer_at_end(0, chain=1) is True
    assert book.finish(0, chain=1) == OFFERED
    # The next run pushed to it, even before the previous chain's thread was done with it.
    book2 = SlotBook({"a": 1})
    book2.reserve("a")
    book2.occupy(0, task_id=1)
    assert book2.offer_at_end(0, chain=1) is True
    assert book2.push(0, 2) is True
    assert book2.finish(0, chain=1) == BUSY  # the old chain leaves the slot to the new one
    assert book2.state(0) == BUSY
    assert book2.offer_at_end(0, chain=1) is False  # the old chain cannot offer it again
    assert book2.finish(0, chain=2) == "free" and book2.state(0) == RESERVED


def test_stale_offers_are_forgotten_when_the_registration_is_lost() -> None:
    book = SlotBook({"a": 2})
    book.begin_offer(book.reserve("a"))
    book.end_offer([0, 1])
    book.begin_withdraw("a")
    book.end_withdraw([(0, False, 5), (1, False, 6)])
    assert book.awaited() == {0: 5, 1: 6}
    book.give_up([0])
    assert book.state(0) == IDLE and book.awaited() == {1: 6}
    book.forget_offers()
    assert book.state(1) == IDLE and book.awaited() == {}
    assert book.received() == []
