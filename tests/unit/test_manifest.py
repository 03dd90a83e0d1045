import pytest
from pydantic import ValidationError

from model_store.manifest import (
    Answers,
    Int8Check,
    Manifest,
    ModelInput,
    Preprocessing,
    Reference,
    Variant,
    check_safe_name,
)

PRE = Preprocessing(resize_shorter=256, crop=224, mean=(127, 127, 127), std=(128, 128, 128))


def variant(**overrides: object) -> Variant:
    size = overrides.get("resolution", 224)
    fields: dict[str, object] = dict(
        name="lite0-224-fp32",
        family="efficientnet_lite0",
        resolution=224,
        precision="fp32",
        file="lite0-224-fp32.abc.onnx",
        sha256="0" * 64,
        size_bytes=10,
        params=1,
        macs=2,
        input=ModelInput(name="image", shape=(-1, size, size, 3)),
        output_name="logits",
        preprocessing=PRE,
    )
    return Variant.model_validate({**fields, **overrides})


def test_round_trip() -> None:
    manifest = Manifest(variants=(variant(top1=0.751, top1_source="published"),))
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest
    assert manifest.schema_version == 6
    subnet = variant(name="lite0-224-d3-fp32", subnet={"kept_blocks": [0, 1, 3], "total_blocks": 4})
    assert Manifest.model_validate_json(Manifest(variants=(subnet,)).model_dump_json()).variants == (subnet,)


@pytest.mark.parametrize(
    "bad",
    [
        {"top1": 0.7},  # a figure without its source
        {"top1_source": "published"},  # a source without a figure
        {"top1": 0.7, "top1_source": "measured"},  # measured on what?
        {"top1": 0.7, "top1_source": "derived", "top1_dataset": "x"},  # derived from what?
        {"top1": 1.2, "top1_source": "published"},
        {"sha256": "xyz"},
        {"resolution": 192},  # crop disagrees with resolution
        {"input": {"name": "image", "shape": [-1, 192, 192, 3]}},  # input disagrees with resolution
        {"input": {"name": "image", "dtype": "float32", "shape": [-1, 224, 224, 3]}},
        {"input": {"name": "image", "layout": "NCHW", "shape": [-1, 224, 224, 3]}},
        {"subnet": {"kept_blocks": [3, 1], "total_blocks": 4}},
        {"subnet": {"kept_blocks": [0, 4], "total_blocks": 4}},
        {"subnet": {"kept_blocks": [0, 1, 3], "total_blocks": 4}},  # the name lacks "-d3-"
        {"subnet": {"kept_blocks": [], "total_blocks": 4}},
        {"precision": "fp16"},
        {"unexpected": 1},
    ],
)
def test_dishonest_or_malformed_entries_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        variant(**bad)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "UPPER", "", "a" * 65, "-lead", "a..b", "x y", "é"])
def test_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        check_safe_name(name)
    with pytest.raises(ValidationError):
        variant(name=name)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="duplicate"):
        Manifest(variants=(variant(), variant()))


def test_replace_keeps_order_and_adds() -> None:
    a, b = (
        variant(),
        variant(name="lite0-192-fp32", resolution=192, preprocessing=PRE.model_copy(update={"crop": 192})),
    )
    manifest = Manifest(variants=(a,)).replace(b, a.model_copy(update={"size_bytes": 11}))
    assert [v.name for v in manifest.variants] == ["lite0-224-fp32", "lite0-192-fp32"]
    assert manifest.variant("lite0-224-fp32").size_bytes == 11


ANSWERS = Answers(
    file="answers.0123456789ab.json", sha256="1" * 64, size_bytes=9, dataset="sample", images=20
)


def test_recorded_answers_round_trip_and_an_older_stores_plans_are_dropped() -> None:
    manifest = Manifest(variants=(variant(),), answers=ANSWERS)
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest
    # Replacing a variant keeps them: an entry counts only for the file it was recorded from.
    assert manifest.replace(variant(sha256="2" * 64)).answers == ANSWERS
    plan = {"small": "a", "big": "b", "threshold": 0.5}
    old = Manifest.model_validate(
        {"schema_version": 5, "variants": [variant().model_dump(mode="json")], "cascades": [plan]}
    )
    assert old.answers is None and [v.name for v in old.variants] == ["lite0-224-fp32"]
    with pytest.raises(ValidationError, match="cascades"):
        Manifest.model_validate({"variants": [], "cascades": [plan]})


def test_an_int8_check_needs_the_reference_set_it_was_recorded_on() -> None:
    check = Int8Check(twin="lite0-224-fp32", twin_answers=(1, 2, 3), answers=(1, 2, 4))
    assert check.agreed == 2
    with pytest.raises(ValidationError, match="its answer and its twin's"):
        Int8Check(twin="lite0-224-fp32", twin_answers=(1, 2, 3), answers=(1, 2))
    int8 = variant(name="lite0-224-int8", precision="int8", int8_check=check)
    reference = Reference(file="reference.0123456789ab.zip", sha256="0" * 64, size_bytes=10, images=3)
    assert Manifest(variants=(int8,), reference=reference).variants[0].int8_check == check
    with pytest.raises(ValidationError, match="need the reference set"):
        Manifest(variants=(int8,))
    with pytest.raises(ValidationError, match="an answer per reference image"):
        Manifest(variants=(int8,), reference=reference.model_copy(update={"images": 4}))
    with pytest.raises(ValidationError, match="only an int8 variant"):
        variant(int8_check=check)
