import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.admission import predicted_wait, retry_after
from service.core.latency import DecodeModel, LatencyModel, Profile, Recent, quantile


def test_quantile_is_an_observed_value() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.95) == 5.0
    assert quantile(values, 0.0) == 1.0


def test_profile_of_timings() -> None:
    profile = Profile.of([0.001 * i for i in range(1, 101)])
    assert profile.p50 == pytest.approx(0.050)
    assert profile.p95 == pytest.approx(0.095)


def _model() -> LatencyModel:
    profiles = {"a": Profile(0.010, 0.012), "b": Profile(0.020, 0.025)}
    return LatencyModel(profiles, window=16, fresh_seconds=5.0)


def test_idle_prediction_is_the_profile() -> None:
    model = _model()
    assert model.predict("a", 0.95, now=100.0) == pytest.approx(0.012)
    assert model.slowdown(100.0) == 1.0


def test_contention_on_one_variant_slows_the_prediction_of_all() -> None:
    model = _model()
    for i in range(4):
        model.observe("a", 0.030, now=100.0 + i * 0.1)  # 3x slower than profiled
    assert model.slowdown(101.0) == pytest.approx(3.0)
    assert model.predict("b", 0.95, now=101.0) == pytest.approx(0.075)


def test_enough_fresh_samples_speak_for_themselves_and_then_age_out() -> None:
    model = _model()
    for i in range(10):
        model.observe("a", 0.015 + 0.001 * i, now=100.0)
    assert model.predict("a", 0.5, now=100.0) == pytest.approx(0.019)
    # Five seconds later they are stale: back to the profile (no recent slowdown either).
    assert model.predict("a", 0.5, now=106.0) == pytest.approx(0.010)


# Fixed part, per byte, per decoded pixel, per input pixel: roughly this machine's JPEG figures.
JPEG_COST = (1.7e-4, 7e-9, 3e-9, 2.7e-9)
LARGE = (1.0, 100_000.0, 175_000.0, 260.0**2)  # a ~100 KB photo decoded at 1/2 for a 260 px model


def test_decode_model_scales_its_idle_cost_by_the_recent_slowdown_and_forgets_bursts() -> None:
    model = DecodeModel({"JPEG": JPEG_COST}, window=16, fresh_seconds=5.0)
    idle = model.idle("JPEG", LARGE)
    assert idle == pytest.approx(1.7e-4 + 7e-4 + 5.25e-4 + 2.7e-9 * 260**2)
    assert model.slowdown("JPEG", 0.95, now=100.0) == 1.0
    for _ in range(8):
        model.observe("JPEG", LARGE, 2 * idle, now=100.0)  # twice as slow, under contention
    assert model.slowdown("JPEG", 0.95, now=101.0) == pytest.approx(2.0)
    assert model.slowdown("JPEG", 0.95, now=106.0) == 1.0


@pytest.mark.parametrize(
    ("queued", "running", "workers", "expected"),
    [(0, 0, 2, 0.0), (0, 1, 2, 0.0), (0, 2, 2, 0.005), (4, 2, 2, 0.025), (3, 1, 1, 0.04)],
)
def test_predicted_wait(queued: int, running: int, workers: int, expected: float) -> None:
    assert predicted_wait(queued, running, workers, 0.010) == pytest.approx(expected)


def test_retry_after_is_whole_seconds() -> None:
    assert retry_after(0.01) == 1
    assert retry_after(2.2) == 3


@given(
    st.lists(
        st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 1.0), st.booleans()),
        max_size=60,
    ),
    st.integers(1, 12),
    st.sampled_from([0.0, 0.5, 0.95, 1.0]),
)
def test_recent_quantile_is_that_of_the_fresh_samples_in_the_window(
    steps: list[tuple[float, float, bool]], window: int, q: float
) -> None:
    """Kept sorted incrementally, it answers what sorting the fresh samples would."""
    recent = Recent(window=window, fresh_seconds=5.0)
    added: list[tuple[float, float]] = []
    now = 0.0
    for advance, value, ask in steps:
        now += advance
        if ask:
            fresh = [v for t, v in added[-window:] if now - t <= 5.0]
            assert recent.quantile(q, now) == (quantile(fresh, q) if fresh else None)
        else:
            recent.add(value, now)
            added.append((now, value))
    assert recent.last() == (added[-1][0] if added else None)
