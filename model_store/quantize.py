"""fp32 ONNX -> int8 ONNX, and how often an int8 variant agrees with its fp32 twin.

One quantiser and one agreement measure for every way into the store: the builder (``store
build``, ``store specialize``) records the agreement of every int8 variant of its pool in the log
and keeps them all (a server checks agreement again on its own device); ``store add`` keeps an
int8 variant only if it passes the gate. Needs onnx and onnxruntime (the ``store`` extra), never torch.

Quantisation is onnxruntime static quantisation: QDQ format, per-channel 7-bit weights, ``uint8``
activations calibrated on real cropped images. The input prefix (``model_store.image_input``)
stays in float.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from model_store.image_input import prefix_node_names

log = logging.getLogger(__name__)

# The share of images on which an int8 variant's top-1 class must equal its fp32 twin's
# (``store add``'s gate).
DEFAULT_MIN_AGREEMENT = 0.95


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, input_name: str, tensors: Sequence[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{input_name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(
    fp32_path: Path, int8_path: Path, input_name: str, calibration: Sequence[np.ndarray]
) -> None:
    """Calibrate activation ranges on ``calibration`` (real, cropped ``uint8`` images) and quantise.

    ``fp32_path`` takes the served ``uint8`` NHWC input. The input prefix (cast, normalisation,
    transpose) stays in float: the first quantisation is then that of the normalised image,
    exactly as for the model before it took ``uint8``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Folds and infers shapes first, as onnxruntime recommends before static quantisation.
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(int8_path),
            _Calibration(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 with 16-bit saturation
            # (vpmaddubsw), which costs full-range int8 its agreement with fp32; with 7-bit
            # weights no pair saturates (DEVELOPERS.md has the figures). VNNI and ARM kernels
            # do not saturate either way, and a store may be built on any of them.
            reduce_range=True,
            nodes_to_exclude=prefix_node_names(onnx.load(str(prepared))),
        )


def agreement(int8_predictions: Sequence[int], fp32_predictions: Sequence[int]) -> float:
    """The share of the same images on which an int8 variant and its fp32 twin give the same
    top-1 class. Raises ``ValueError`` if the predictions do not pair up."""
    if len(int8_predictions) != len(fp32_predictions) or not fp32_predictions:
        raise ValueError("agreement needs both variants' predictions on the same images")
    return float(np.mean(np.asarray(int8_predictions) == np.asarray(fp32_predictions)))


def passes_agreement_gate(
    name: str,
    twin: str,
    int8_predictions: Sequence[int],
    fp32_predictions: Sequence[int],
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> bool:
    """Whether int8 variant ``name`` agrees with its fp32 ``twin`` often enough to be stored
    (:func:`agreement`); the outcome is logged either way. Raises ``ValueError`` if the
    predictions do not pair up."""
    share = agreement(int8_predictions, fp32_predictions)
    if share < min_agreement:
        log.warning(
            "%s: top-1 agrees with %s on %.1f%% of %d images (< %.0f%%); not written",
            name,
            twin,
            100 * share,
            len(fp32_predictions),
            100 * min_agreement,
        )
        return False
    log.info(
        "%s: top-1 agrees with %s on %.1f%% of %d images", name, twin, 100 * share, len(fp32_predictions)
    )
    return True
