"""The load test's per-tier verdict: a floor is missed only when the count shows it."""

import pytest

from loadtest.verdict import below


@pytest.mark.parametrize(
    ("met", "answered", "floor", "missed"),
    [
        (2, 2, 0.5, False),  # at or above the floor: never a miss
        (0, 2, 0.5, False),  # two answers cannot show a rate below one half (p = 0.25)
        (0, 5, 0.5, True),  # five can (p = 0.03)
        (480, 500, 0.97, False),  # 96 % of 500 is within chance of 97 %
        (470, 500, 0.97, True),  # 94 % of 500 is not
        (4800, 5000, 0.99, True),  # large counts do not overflow, and 96 % is far below 99 %
        (99, 100, 1.0, True),  # a floor of 100 % is missed by any late answer
        (100, 100, 1.01, True),  # an unreachable floor is always missed
    ],
)
def test_a_floor_is_missed_only_when_the_count_shows_it(
    met: int, answered: int, floor: float, missed: bool
) -> None:
    assert below(met, answered, floor) is missed
