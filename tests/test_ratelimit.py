"""The per-connection rate limit, on a clock the test controls."""

from __future__ import annotations

from productflo.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_twice_the_rate_is_admitted_then_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock)
    assert sum(limiter.admit() for _ in range(25)) == 20


def test_tokens_come_back_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock)
    for _ in range(20):
        limiter.admit()
    clock.now += 0.5
    assert sum(limiter.admit() for _ in range(10)) == 5


def test_abuse_is_refusals_beyond_their_own_allowance() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock)
    verdicts = [limiter.refused_is_abuse() for _ in range(101)]
    assert verdicts[:100] == [False] * 100
    assert verdicts[100] is True


def test_a_client_that_slows_down_is_never_abusive() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock)
    for _ in range(1000):
        clock.now += 0.1
        assert not limiter.refused_is_abuse()
