"""This device's frontier of the pool, against pools made up by hypothesis."""

from hypothesis import given
from hypothesis import strategies as st

from service.core.frontier import SPEED_STEP, Left, Point, beats, choose

point = st.builds(Point, top1=st.one_of(st.none(), st.floats(0.2, 0.9)), seconds=st.floats(0.001, 0.05))
pools = st.dictionaries(st.text(alphabet="abcdefgh", min_size=1, max_size=5), point, min_size=1, max_size=16)


def per_second(p: Point) -> float:
    assert p.top1 is not None
    return p.top1 / p.seconds


def dominated(left: dict[str, Left]) -> set[str]:
    return {name for name, why in left.items() if why.reason == "dominated"}


@given(pools, st.integers(1, 20))
def test_each_kept_is_a_step_faster_and_a_better_converter_and_each_dominated_names_why(pool, size) -> None:
    # Together these two say which candidates are dominated: going down from the most accurate,
    # each is either a step faster than all kept above it and gives more correct answers per
    # second than each, or one of them beats it.
    served, left = choose(pool, size)
    assert set(served) | set(left) == set(pool) and not set(served) & set(left)
    assert all(why.reason in ("dominated", "frontier_size") for why in left.values())
    undominated = set(pool) - dominated(left)
    known = [n for n in undominated if pool[n].top1 is not None]
    for a in known:
        for b in known:
            if a != b and pool[a].top1 >= pool[b].top1:
                assert pool[b].seconds * (1 + SPEED_STEP) < pool[a].seconds
                assert per_second(pool[b]) > per_second(pool[a])
    for name in dominated(left):
        by = left[name].detail.split(" is ")[0]
        assert by in known and by != name and beats(pool[by], pool[name])


def test_a_subnet_barely_faster_than_a_far_more_accurate_variant_is_not_served() -> None:
    # In a store of subnets the fastest is often faster than its full-depth neighbour by less
    # than this device's noise, and far less accurate.
    pool = {"lite-d9": Point(0.33, 0.0052), "lite": Point(0.52, 0.0056), "lite-fp32": Point(0.54, 0.0073)}
    served, left = choose(pool, 10)
    assert served == ["lite", "lite-fp32"]
    assert left["lite-d9"].reason == "dominated"
    assert left["lite-d9"].detail == (
        "lite is at least as accurate (52.0 % vs 33.0 %) and not 10 % slower here (5.60 ms vs 5.20 ms)"
    )


def test_a_faster_subnet_giving_fewer_correct_answers_per_second_is_not_served() -> None:
    # A step faster, but its accuracy falls by more than its time: under load, where the fallback
    # answers with the fastest, it would answer most requests and fewer of them correctly.
    pool = {"lite-d7": Point(0.36, 0.0040), "lite": Point(0.52, 0.0056), "lite-d5": Point(0.30, 0.0020)}
    served, left = choose(pool, 10)
    assert served == ["lite-d5", "lite"]
    assert left["lite-d7"].detail == (
        "lite is at least as accurate (52.0 % vs 36.0 %) and gives at least as many correct answers "
        "per second of a worker here (93 vs 90)"
    )


@given(pools, st.integers(1, 20))
def test_at_most_size_are_served_keeping_both_ends(pool, size) -> None:
    served, left = choose(pool, size)
    known = [n for n in served if pool[n].top1 is not None]
    unknown = [n for n in served if pool[n].top1 is None]
    assert len(known) <= max(size - len(unknown), 2)
    ranked = [n for n in set(pool) - dominated(left) if pool[n].top1 is not None]
    if ranked:
        assert min(ranked, key=lambda n: (pool[n].seconds, n)) in served
        best = max(pool[n].top1 for n in pool if pool[n].top1 is not None)
        assert max(pool[n].top1 for n in served if pool[n].top1 is not None) == best
    assert served == sorted(served, key=lambda n: (pool[n].seconds, n))


def test_thinning_drops_the_step_that_adds_least() -> None:
    pool = {
        "fast": Point(0.50, 0.002),
        "barely": Point(0.505, 0.003),
        "mid": Point(0.65, 0.004),
        "best": Point(0.75, 0.008),
        "slow-fp32": Point(0.74, 0.009),
    }
    served, left = choose(pool, 3)
    assert served == ["fast", "mid", "best"]
    assert left["barely"].reason == "frontier_size" and "+0.5 points" in left["barely"].detail
    assert left["slow-fp32"].reason == "dominated" and left["slow-fp32"].detail.startswith("best is")


def test_a_variant_of_unknown_accuracy_is_served_and_never_dominates() -> None:
    pool = {"mine": Point(None, 0.001), "lite": Point(0.7, 0.005)}
    served, left = choose(pool, 1)
    assert served == ["mine", "lite"] and left == {}
