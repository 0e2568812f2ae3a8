"""The per-address counter behind every cap on one host's connections."""

from __future__ import annotations

from netproto.addresses import CountPerAddress


def test_a_cap_admits_up_to_its_number_and_a_release_frees_a_slot() -> None:
    counts = CountPerAddress()
    assert [counts.admit("10.0.0.1", 2) for _ in range(3)] == [True, True, False]
    assert counts.admit("10.0.0.2", 2)
    counts.release("10.0.0.1")
    assert counts.admit("10.0.0.1", 2)
    assert counts == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_an_address_with_no_connection_left_is_forgotten() -> None:
    """The mapping is only as large as the set of hosts connected now."""
    counts = CountPerAddress()
    counts.take("10.0.0.1")
    counts.release("10.0.0.1")
    assert counts == {}


def test_no_cap_and_no_address_are_never_full() -> None:
    counts = CountPerAddress()
    assert all(counts.admit("10.0.0.1", 0) for _ in range(100))
    assert counts.admit(None, 1) and counts.admit(None, 1)
    counts.release(None)
    assert counts == {"10.0.0.1": 100}
