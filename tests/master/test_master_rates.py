"""Requests and bytes per second over the last ten seconds (beoboot.master.rates), on a clock the test
moves."""

from beoboot.master.rates import WINDOW, Rates


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_are_over_the_last_window_not_since_start():
    clock = Clock()
    rates = Rates(clock)
    for _ in range(30):  # 30 s of 100 requests and 1 MB a second
        clock.now += 1
        rates.requests += 100
        rates.answered(1_000_000)
        rates.sample()
    assert rates.per_second() == (100.0, 1_000_000.0)
    for _ in range(int(WINDOW)):  # then 10 s of silence
        clock.now += 1
        rates.sample()
    assert rates.per_second() == (0.0, 0.0)


def test_a_rate_right_at_start_is_over_what_has_passed():
    clock = Clock()
    rates = Rates(clock)
    assert rates.per_second() == (0.0, 0.0)
    clock.now += 2
    rates.requests += 10
    assert rates.per_second() == (5.0, 0.0)
