"""The audience rule without any I/O: who sees a stored event, along a user's membership."""

from __future__ import annotations

from productflo.audience import Audience, Visibility, audience_of


def test_room_events_reach_the_room_and_user_events_the_user() -> None:
    assert audience_of("chat", "room:r", "u1") == Audience("room", "r")
    assert audience_of("notification", "user:u2", "u1") == Audience("user", "u2")
    assert audience_of("idea", "room:r", "u1") == Audience("user", "u1")
    assert audience_of("rejected", "user:u1", "u1") is None


def test_a_joiner_sees_their_own_join_and_a_leaver_their_own_leave() -> None:
    alice = Visibility("alice", set())
    seen = [
        alice.sees("chat", "room:r", "bob"),
        alice.sees("join", "room:r", "alice"),
        alice.sees("chat", "room:r", "bob"),
        alice.sees("leave", "room:r", "alice"),
        alice.sees("chat", "room:r", "bob"),
    ]
    assert seen == [False, True, True, True, False]
    assert alice.rooms == set()


def test_someone_elses_join_changes_nothing_of_ones_own_rooms() -> None:
    alice = Visibility("alice", {"r"})
    assert alice.sees("join", "room:s", "bob") is False
    assert alice.sees("leave", "room:r", "bob") is True
    assert alice.rooms == {"r"}
