"""peer.homing: the home region moves only for a clear, lasting win -- or a dead home."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peer.homing import HomeChooser, Hysteresis, fastest

REGIONS = [1, 2, 3]


def test_fastest_prefers_answered_then_map_order() -> None:
    assert fastest({2: 5.0, 3: 5.0}, REGIONS) == 2
    assert fastest({}, REGIONS) is None
    assert fastest({9: 1.0}, REGIONS) is None


def test_first_round_takes_the_fastest_or_the_first() -> None:
    c = HomeChooser()
    assert c.observe({2: 30.0, 3: 10.0}, REGIONS) == 3
    assert c.home == 3
    c = HomeChooser()
    assert c.observe({}, REGIONS) == 1
    assert HomeChooser().observe({1: 1.0}, []) is None


def test_a_challenger_must_win_by_both_margins_in_consecutive_rounds() -> None:
    c = HomeChooser(Hysteresis(margin_ms=10, margin_ratio=0.2, rounds=2))
    c.observe({1: 50.0}, REGIONS)
    assert c.observe({1: 50.0, 2: 39.0}, REGIONS) is None  # 11 ms but only 22 %: one round
    assert c.observe({1: 50.0, 2: 39.0}, REGIONS) == 2  # second round in a row: move
    assert c.home == 2


def test_noise_does_not_move_the_home() -> None:
    c = HomeChooser()
    c.observe({1: 20.0, 2: 21.0}, REGIONS)
    for a, b in [(20, 18), (22, 19), (19, 21), (25, 16)]:  # within 10 ms: never a move
        assert c.observe({1: float(a), 2: float(b)}, REGIONS) is None
    assert c.home == 1
    # 10 ms better but only 10 % (of 100 ms): not enough either
    c = HomeChooser()
    c.observe({1: 100.0}, REGIONS)
    for _ in range(5):
        assert c.observe({1: 100.0, 2: 89.0}, REGIONS) is None


def test_a_broken_streak_starts_over() -> None:
    c = HomeChooser(Hysteresis(rounds=3))
    c.observe({1: 100.0}, REGIONS)
    assert c.observe({1: 100.0, 2: 50.0}, REGIONS) is None
    assert c.observe({1: 100.0, 2: 50.0}, REGIONS) is None
    assert c.observe({1: 100.0, 2: 95.0}, REGIONS) is None  # streak broken
    assert c.observe({1: 100.0, 2: 50.0}, REGIONS) is None
    assert c.observe({1: 100.0, 3: 40.0}, REGIONS) is None  # another challenger: from 1
    assert c.observe({1: 100.0, 3: 40.0}, REGIONS) is None
    assert c.observe({1: 100.0, 3: 40.0}, REGIONS) == 3


def test_a_silent_home_is_not_left_by_probes_alone() -> None:
    c = HomeChooser()
    c.observe({1: 50.0}, REGIONS)
    for _ in range(3):
        assert c.observe({2: 1.0}, REGIONS) is None


def test_a_home_gone_from_the_map_is_left_at_once() -> None:
    c = HomeChooser()
    c.observe({1: 5.0}, REGIONS)
    assert c.observe({1: 5.0, 2: 50.0, 3: 40.0}, [2, 3]) == 3


def test_unreachable_home_moves_to_the_fastest_other_that_answered() -> None:
    c = HomeChooser()
    c.observe({1: 5.0}, REGIONS)
    assert c.unreachable({}, REGIONS) is None  # nowhere to go: stay
    assert c.home == 1
    assert c.unreachable({1: 1.0, 2: 80.0, 3: 60.0}, REGIONS) == 3  # no margin needed
    assert c.home == 3


@given(st.lists(st.dictionaries(st.sampled_from(REGIONS), st.floats(0, 1000), max_size=3),
                min_size=1, max_size=30))
def test_the_home_never_moves_to_a_region_that_did_not_clearly_win(
        rounds: list[dict[int, float]]) -> None:
    policy = Hysteresis()
    c = HomeChooser(policy)
    previous: dict[int, float] | None = None
    for latency in rounds:
        old = c.home
        new = c.observe(latency, REGIONS)
        if old is not None and new is not None:
            assert previous is not None
            assert policy.beats(latency[new], latency[old])
            assert policy.beats(previous[new], previous[old])
        previous = latency
