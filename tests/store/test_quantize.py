"""The one int8 quantiser and agreement measure, shared by ``store build`` and ``store add``."""

import subprocess
import sys

import pytest

from model_store.quantize import agreement, passes_agreement_gate


def test_store_add_quantises_without_torch() -> None:
    # Users' machines that only add models have the `store` extra, not torch: make it unimportable.
    code = "import sys; sys.modules['torch'] = None; import model_store.quantize, model_store.ingest"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("agreeing", "minimum", "passes"), [(95, 0.95, True), (94, 0.95, False), (90, 0.9, True)]
)
def test_gate_compares_top1_classes_on_the_same_images(agreeing: int, minimum: float, passes: bool) -> None:
    fp32 = list(range(100))
    int8 = fp32[:agreeing] + [-1] * (100 - agreeing)
    assert passes_agreement_gate("m-int8", "m-fp32", int8, fp32, minimum) is passes


def test_gate_refuses_predictions_that_do_not_pair_up() -> None:
    with pytest.raises(ValueError, match="same images"):
        passes_agreement_gate("m-int8", "m-fp32", [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="same images"):
        agreement([], [])


def test_agreement_is_the_share_of_images_with_the_same_top1() -> None:
    assert agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
