import pytest

from service.core.params import parse_accuracy, parse_bool, parse_budget, parse_size, parse_top_k


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("0.02s", 0.02), ("20000us", 0.02), ("20", 0.02), ("1.5ms", 0.0015), ("60s", 60.0)],
)
def test_budget_units(text: str, seconds: float) -> None:
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0", "0ms", "-5ms", "61s", "20 parsecs", "ms", "1e3", "nan"])
def test_budget_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("6MB", 6_000_000), ("800KB", 800_000), ("5MiB", 5 * 2**20), ("1234", 1234), ("1.5kb", 1500)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1MB", "6 elephants", "MB"])
def test_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="max_size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [("0.75", 0.75), ("75%", 0.75), ("0", 0.0), ("100%", 1.0)])
def test_accuracy(text: str, value: float) -> None:
    assert parse_accuracy(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["75", "1.01", "-0.1", "abc", "nan"])
def test_accuracy_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="min_accuracy"):
        parse_accuracy(text)


def test_top_k_and_bool() -> None:
    assert parse_top_k("1") == 1 and parse_top_k("20") == 20
    for bad in ("0", "21", "x"):
        with pytest.raises(ValueError, match="top_k"):
            parse_top_k(bad)
    assert parse_bool("true") is True and parse_bool("False") is False
    with pytest.raises(ValueError, match="strict"):
        parse_bool("maybe")
