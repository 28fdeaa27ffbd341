"""SystemClock absorbs wall-clock steps: it never jumps, never runs backwards, and catches up with
the wall clock at a bounded rate, so leases renewed on time stay live and the schedule fires at
most one run per tick whatever an operator or NTP does to the wall clock."""

from __future__ import annotations

import logging

from backends.base import SystemClock

MS = 1_000_000  # nanoseconds
DAY = 86_400_000 * MS
LEASE = 3_000 * MS


class Clocks:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 1_780_000_000_000 * MS
        self.mono = 5_000 * MS

    def tick(self, ns: int) -> None:
        self.wall += ns
        self.mono += ns

    def clock(self) -> SystemClock:
        return SystemClock(wall_ns=lambda: self.wall, monotonic_ns=lambda: self.mono)


def renewals_survive(clocks: Clocks, clock: SystemClock, seconds: int) -> bool:
    """Renew a lease every third of its length for `seconds`, judging it by `clock` as the
    store would: True if it never lapsed."""
    expires = clock.now_ns() + LEASE
    for _ in range(seconds):  # a third of the 3 s lease is one second
        clocks.tick(LEASE // 3)
        now = clock.now_ns()
        if now >= expires:
            return False
        expires = now + LEASE
    return True


def test_without_steps_it_is_the_wall_clock():
    clocks = Clocks()
    clock = clocks.clock()
    for step in (1, 7 * MS, 1_000 * MS, 3_600_000 * MS):
        clocks.tick(step)
        assert clock.now_ns() == clocks.wall


def test_ntp_slewing_is_followed_exactly():
    clocks = Clocks()
    clock = clocks.clock()
    for _ in range(1000):  # the wall clock runs 0.05 % fast, as NTP may slew it
        clocks.mono += 1_000 * MS
        clocks.wall += 1_000 * MS + 500_000
        assert clock.now_ns() == clocks.wall


def test_a_forward_step_is_caught_up_at_a_bounded_speed_without_expiring_a_lease(caplog):
    clocks = Clocks()
    clock = clocks.clock()
    before = clock.now_ns()
    with caplog.at_level(logging.INFO, logger="backends.clock"):
        clocks.wall += DAY  # an operator's `date -s tomorrow`
        clocks.mono += 1 * MS
        after = clock.now_ns()
        assert after - before <= 1.25 * MS  # no jump: at most 1.25 times the elapsed millisecond
        assert abs(clock.offset_seconds() - 86_400) < 0.01  # what /metrics shows meanwhile
        assert renewals_survive(clocks, clock, 600)
        previous = clock.now_ns()
        for _ in range(100):
            clocks.tick(1_000 * MS)
            now = clock.now_ns()
            assert 1_000 * MS <= now - previous <= 1_250 * MS  # never slower, never past 1.25x
            previous = now
        clocks.tick(4 * DAY)  # four days later it has caught up for good
        assert clock.now_ns() == clocks.wall
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Wall clock stepped: job times follow a steady clock catching up with it") == 1
    assert messages.count("Job times have caught up with the wall clock") == 1
    [step] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert abs(step.stepSeconds - 86400) < 0.01


def test_a_backward_step_never_runs_the_clock_backwards_and_is_absorbed_at_a_bounded_speed():
    clocks = Clocks()
    clock = clocks.clock()
    clocks.tick(10 * MS)
    previous = clock.now_ns()
    clocks.wall -= 3_600_000 * MS  # an hour back
    for _ in range(3600):
        clocks.tick(1_000 * MS)
        now = clock.now_ns()
        assert 800 * MS <= now - previous <= 1_000 * MS  # forwards, at least 0.8 times as fast
        previous = now
    assert renewals_survive(clocks, clock, 600)  # a slower clock only lengthens a lease
    clocks.tick(5 * 3_600_000 * MS)  # absorbed within five times the step
    assert clock.now_ns() == clocks.wall


def test_schedule_periods_advance_at_most_one_per_tick_after_a_forward_step():
    clocks = Clocks()
    clock = clocks.clock()
    interval = 1_800_000 * MS  # the 30-minute schedule; PeriodicCallback ticks on monotonic time
    periods = [clock.now_ns() // interval]
    clocks.wall += 7 * DAY
    for _ in range(48):
        clocks.tick(interval)
        periods.append(clock.now_ns() // interval)
    steps = [b - a for a, b in zip(periods, periods[1:], strict=False)]
    assert max(steps) <= 2
    assert min(steps) >= 1
