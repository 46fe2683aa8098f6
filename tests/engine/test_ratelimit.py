"""The API's per-caller token buckets."""

from engine.ratelimit import RateLimiter


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_rate_and_a_retry_hint_apply_per_caller() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=10, burst=5, clock=clock)
    assert [limiter.take("a") for _ in range(5)] == [0.0] * 5
    wait_s = limiter.take("a")
    assert 0.09 < wait_s <= 0.1
    assert limiter.take("b") == 0.0  # another caller has its own bucket
    clock.now += wait_s
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 60
    assert [limiter.take("a") for _ in range(5)] == [0.0] * 5  # refilled to the burst, not beyond
    assert limiter.take("a") > 0
