"""A real model through the generic door: Lite0 exported as users export, added with ``store add``.

The built-in ladder exports Lite0 once per resolution; a user exports once, with dynamic height
and width, and lets ``store add`` make the ladder. Measured on the same sample, both must agree:
the generic path (dynamic export, uint8 input wrapping, presets, evaluation) loses nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from model_store.add_request import AddRequest
from model_store.build.export import load_pretrained
from model_store.build.recipes import LADDER, variant_name
from model_store.ingest import add
from model_store.presets import PRESETS
from model_store.store import open_store

torch = pytest.importorskip("torch", reason="the export extra is installed by make setup")

LITE0 = LADDER[0]
# The ladder's two ends: evaluating all 1000 sample images per resolution is what costs here.
RESOLUTIONS = (224, 128)
# Points of top-1 on the sample by which the added variants may differ from the built-in ones.
TOLERANCE = 0.002


def test_dynamic_axes_lite0_matches_the_built_in_variants(
    tmp_path: Path, store_dir: Path, sample_dir: Path
) -> None:
    source = tmp_path / "lite0.onnx"
    model = load_pretrained(LITE0, LITE0.native_resolution)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, LITE0.native_resolution, LITE0.native_resolution),),
            str(source),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
        )
    request = AddRequest(
        prefix="user-lite0",
        family="user_lite0",
        resolutions=RESOLUTIONS,
        preprocess=PRESETS["lite"],
        evaluate_dir=sample_dir,
    )
    added = add(tmp_path / "store", source, request)
    built_in = open_store(store_dir).manifest
    dataset = sample_dir.name
    for resolution in RESOLUTIONS:
        ours = added.manifest.variant(request.name(resolution, "fp32"))
        theirs = built_in.variant(variant_name(LITE0.arch, resolution, "fp32"))
        assert (ours.top1_source, ours.top1_dataset) == ("measured", dataset)
        assert ours.top1 == pytest.approx(theirs.evaluations[dataset], abs=TOLERANCE), resolution
        assert ours.macs == pytest.approx(theirs.macs, rel=0.01)
