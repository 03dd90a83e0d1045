"""Subnets cut from the pretrained EfficientNet-Lite weights: export, names, fast scoring."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model_store.build.export import export_onnx, load_pretrained, parity_error
from model_store.build.recipes import LADDER, PARITY_TOLERANCE, lite_preprocessing, variant_name
from model_store.build.search import (
    Candidate,
    PrefixCachedAccuracy,
    pareto_front,
    picks_per_resolution,
    spread_picks,
)
from model_store.build.subnets import SubnetModule, skippable_blocks, subnet_of
from model_store.evaluate import MAX_PIXELS, held_out_half, labelled_images, search_half
from model_store.image_input import wrap_file
from model_store.imaging import load_tensor
from model_store.manifest import Subnet, depth_tag

LITE0, _, LITE2 = LADDER
RESOLUTION = 128  # the cheapest lite0 resolution of the ladder


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return load_pretrained(LITE0, RESOLUTION)


def test_the_skippable_blocks_are_the_identity_shortcut_ones(lite0: torch.nn.Module) -> None:
    # lite0: stages of 1, 2, 2, 3, 3, 4, 1 blocks; every block after a stage's first may go.
    assert skippable_blocks(lite0) == (2, 4, 6, 7, 9, 10, 12, 13, 14)
    assert len(skippable_blocks(load_pretrained(LITE2, 224))) == 14
    with pytest.raises(ValueError, match="cannot be skipped"):
        subnet_of(lite0, [3])
    with pytest.raises(ValueError, match="must be kept"):
        SubnetModule(lite0, Subnet(kept_blocks=(0, 1, 2), total_blocks=16))


def test_a_subnet_onnx_matches_its_pytorch_subnet(
    lite0: torch.nn.Module, tmp_path: Path, sample_dir: Path
) -> None:
    subnet = subnet_of(lite0, [2, 7, 13])
    module = SubnetModule(lite0, subnet)
    preprocessing = lite_preprocessing(RESOLUTION)
    path = tmp_path / "subnet.onnx"
    export_onnx(module, RESOLUTION, path)
    wrap_file(path, path, preprocessing, RESOLUTION)
    images = [
        load_tensor(i.path.read_bytes(), preprocessing, MAX_PIXELS) for i in labelled_images(sample_dir)[:4]
    ]
    assert parity_error(module, path, images, preprocessing) < PARITY_TOLERANCE
    # It is a different network from the full one: the check would see a full-depth export.
    assert parity_error(lite0, path, images, preprocessing) > 100 * PARITY_TOLERANCE


def test_names_carry_the_depth_tag_and_full_depth_names_are_unchanged() -> None:
    subnet = Subnet(kept_blocks=tuple(i for i in range(21) if i not in (3, 9, 14, 19)), total_blocks=21)
    assert variant_name("lite2", 224, "int8", subnet) == "lite2-224-d17-int8"
    assert depth_tag(subnet) == "d17" and depth_tag(None) == "full"
    assert variant_name("lite2", 224, "int8") == "lite2-224-int8"


def test_the_halves_split_the_sample(sample_dir: Path) -> None:
    images = labelled_images(sample_dir)
    search, held_out = search_half(images), held_out_half(images)
    assert not {i.path for i in search} & {i.path for i in held_out}
    assert len(search) + len(held_out) == len(images)


def test_prefix_cached_scoring_is_the_subnets_own_accuracy(lite0: torch.nn.Module, sample_dir: Path) -> None:
    images = search_half(labelled_images(sample_dir))[:30]
    preprocessing = lite_preprocessing(RESOLUTION)
    scorer = PrefixCachedAccuracy(lite0, images, preprocessing, RESOLUTION)
    pixels = np.concatenate([load_tensor(i.path.read_bytes(), preprocessing, MAX_PIXELS) for i in images])
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    labels = torch.tensor([i.class_id for i in images])
    # Sharing prefixes in this order: each scores from the cache of the one before.
    for skipped in ([], [13, 14], [12, 13, 14], [2, 13], [2, 4, 6, 7, 9, 10, 12, 13, 14]):
        subnet = subnet_of(lite0, skipped)
        with torch.no_grad():
            expected = float((SubnetModule(lite0, subnet)(x).argmax(1) == labels).float().mean())
        assert scorer.top1(subnet.kept_blocks) == pytest.approx(expected)


def _candidate(ms: float, top1: float, full: bool = False) -> Candidate:
    return Candidate(f"c{ms}", 224, "int8", tuple(range(int(ms))), ms, top1, top1, full)


def test_front_and_picks_span_the_latency_range() -> None:
    points = [_candidate(ms, top1) for ms, top1 in [(10, 0.7), (12, 0.69), (14, 0.75), (20, 0.8), (30, 0.82)]]
    points.append(_candidate(40, 0.9, full=True))
    front = pareto_front(points)
    assert [c.predicted_ms for c in front] == [10, 14, 20, 30, 40]
    picks = spread_picks(front, 2)
    assert [c.predicted_ms for c in picks] == [10, 30]  # the ends of the subnets' range
    assert all(not c.full_depth for c in spread_picks(front, 10))
    twins = [
        Candidate("i", 224, "int8", (0, 2), 10, 0.7, 0.7, False),
        Candidate("f", 224, "fp32", (0, 2), 12, 0.72, 0.72, False),
    ]
    assert [c.name for c in spread_picks(pareto_front(twins), 2)] == ["i"]
    # Two subnets keeping as many blocks at one resolution would get one name: the faster stands.
    namesakes = [
        Candidate("a", 160, "fp32", (0, 1, 2), 6, 0.5, 0.5, False),
        Candidate("b", 160, "fp32", (0, 1, 3), 7, 0.55, 0.55, False),
    ]
    assert [c.name for c in spread_picks(pareto_front(namesakes), 5)] == ["a"]


def test_picks_are_shared_out_among_resolutions() -> None:
    """A pool wants depth steps at every resolution: each gets its share of k from the front of
    its own fp32 subnets; a share one resolution has no subnets for goes to the others."""

    def at(resolution: int, blocks: int, ms: float, top1: float, precision: str = "fp32") -> Candidate:
        kept = tuple(range(blocks))
        name = f"{resolution}-d{blocks}-{precision}"
        return Candidate(name, resolution, precision, kept, ms, top1, top1, False)  # type: ignore[arg-type]

    scored = [
        *(at(128, blocks, blocks / 10, blocks / 20) for blocks in range(5, 12)),
        *(at(160, blocks, blocks / 5, 0.1 + blocks / 20) for blocks in range(5, 12)),
        at(192, 10, 9.0, 0.9),
        at(192, 10, 3.0, 0.9, "int8"),  # its int8 twin: one pick, not two
        Candidate("192-full", 192, "fp32", tuple(range(16)), 12.0, 0.95, 0.95, True),
    ]
    picks = picks_per_resolution(scored, (192, 160, 128), 6)
    # Two each; 192 px has one subnet, so its second goes to the next resolution, 160 px.
    assert sorted((c.resolution, len(c.kept_blocks)) for c in picks) == [
        (128, 5), (128, 11), (160, 5), (160, 7), (160, 11), (192, 10),
    ]  # fmt: skip
    assert all(c.precision == "fp32" and not c.full_depth for c in picks)
    assert [c.predicted_ms for c in picks] == sorted(c.predicted_ms for c in picks)
    assert picks_per_resolution(scored, (192, 160, 128), 2) == [scored[7], scored[14]]
