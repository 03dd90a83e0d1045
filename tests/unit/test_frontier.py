"""This device's frontier of the pool, against pools made up by hypothesis."""

from hypothesis import given
from hypothesis import strategies as st

from service.core.frontier import Point, choose

point = st.builds(Point, top1=st.one_of(st.none(), st.floats(0.2, 0.9)), seconds=st.floats(0.001, 0.05))
pools = st.dictionaries(st.text(alphabet="abcdefgh", min_size=1, max_size=5), point, min_size=1, max_size=16)


def beats(a: Point, b: Point) -> bool:
    if a.top1 is None or b.top1 is None:
        return False
    return a.top1 >= b.top1 and a.seconds <= b.seconds and (a.top1 > b.top1 or a.seconds < b.seconds)


@given(pools, st.integers(1, 20))
def test_nothing_served_is_dominated_and_every_candidate_is_served_or_said_why(pool, size) -> None:
    served, left = choose(pool, size)
    assert set(served) | set(left) == set(pool) and not set(served) & set(left)
    for name in served:
        assert not any(beats(pool[other], pool[name]) for other in pool)
    for name, why in left.items():
        if why.reason == "dominated":
            assert any(beats(pool[other], pool[name]) for other in pool)
        else:
            assert why.reason == "frontier_size"
            assert not any(beats(pool[other], pool[name]) for other in pool)


@given(pools, st.integers(1, 20))
def test_at_most_size_are_served_keeping_both_ends(pool, size) -> None:
    served, _ = choose(pool, size)
    known = [n for n in served if pool[n].top1 is not None]
    unknown = [n for n in served if pool[n].top1 is None]
    assert len(known) <= max(size - len(unknown), 2)
    undominated = [n for n in pool if not any(beats(pool[o], pool[n]) for o in pool)]
    ranked = [n for n in undominated if pool[n].top1 is not None]
    if ranked:
        assert min(ranked, key=lambda n: (pool[n].seconds, n)) in served
        best = max(pool[n].top1 for n in ranked)
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
