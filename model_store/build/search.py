"""Evolutionary search for a family's subnets on the accuracy/latency frontier (OFA-style).

A candidate is a resolution and a set of kept blocks; each is scored at both precisions, with the
latency the device table predicts (``model_store.build.latency_table``) and the top-1 on the
*search half* of the labelled sample (even positions). That figure picks the subnets and is never
recorded as a variant's ``top1``: the picked subnets are measured again on the held-out half (odd
positions) after export (``model_store.build.specialize``).

Evaluating a candidate reuses the activations of the longest prefix of decisions it shares with a
candidate seen before, so a child that differs from its parent in a late block costs only the
blocks after it.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from model_store.build.export import OPSET
from model_store.build.latency_table import BlockTable
from model_store.build.recipes import variant_name
from model_store.build.subnets import SubnetModule, skippable_blocks, subnet_of
from model_store.evaluate import MAX_PIXELS, LabelledImage
from model_store.imaging import load_tensor
from model_store.manifest import Precision, Preprocessing, Subnet
from model_store.runner import session_options

Progress = Callable[[str], None]
CHUNK = 25  # images per forward pass: bounds the memory of the expanded activations


@dataclass(frozen=True)
class Candidate:
    name: str
    resolution: int
    precision: Precision
    kept_blocks: tuple[int, ...]
    predicted_ms: float
    search_top1: float  # on the search half
    # On the store's scale: the full network's recorded top1 at this resolution and precision,
    # plus (this subnet - the full network) on the search half.
    estimated_top1: float
    full_depth: bool


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both latency and estimated top-1, fastest first."""
    ordered = sorted(candidates, key=lambda c: (c.predicted_ms, -c.estimated_top1))
    front: list[Candidate] = []
    for candidate in ordered:
        if not front or candidate.estimated_top1 > front[-1].estimated_top1:
            front.append(candidate)
    return front


def spread_picks(front: Sequence[Candidate], k: int) -> list[Candidate]:
    """At most ``k`` searched subnets of ``front`` spanning their latency range (log-spaced);
    a subnet on the front at both precisions counts once, at its faster one. A name carries the
    number of kept blocks, not which: of two subnets keeping as many blocks at one resolution,
    only the faster is picked."""
    subnets: list[Candidate] = []
    for c in front:
        seen = {(s.resolution, len(s.kept_blocks)) for s in subnets}
        if not c.full_depth and (c.resolution, len(c.kept_blocks)) not in seen:
            subnets.append(c)
    if len(subnets) <= k:
        return subnets
    low, high = math.log(subnets[0].predicted_ms), math.log(subnets[-1].predicted_ms)
    picks: list[Candidate] = []
    for step in range(k):
        target = low + (high - low) * step / max(1, k - 1)
        remaining = [c for c in subnets if c not in picks]
        picks.append(min(remaining, key=lambda c: abs(math.log(c.predicted_ms) - target)))
    return sorted(picks, key=lambda c: c.predicted_ms)


def picks_per_resolution(
    candidates: Sequence[Candidate], resolutions: Sequence[int], k: int
) -> list[Candidate]:
    """At most ``k`` searched subnets, shared out among ``resolutions`` in turn (the first ones
    get one more when ``k`` does not divide evenly, and the share a resolution has no subnets for
    goes to the others), each resolution's spanning the front of its own fp32 subnets
    (``spread_picks``); fastest first. A pool needs depth steps at every resolution, not only
    where one machine's frontier across resolutions has them."""
    fronts = {
        r: pareto_front(
            [c for c in candidates if c.resolution == r and c.precision == "fp32" and not c.full_depth]
        )
        for r in resolutions
    }
    available = {r: len(spread_picks(front, len(front))) for r, front in fronts.items()}
    shares = {
        r: min(available[r], k // len(resolutions) + (1 if i < k % len(resolutions) else 0))
        for i, r in enumerate(resolutions)
    }
    for r in resolutions:
        shares[r] += min(available[r] - shares[r], k - sum(shares.values()))
    picks = [c for r in resolutions for c in spread_picks(fronts[r], shares[r])]
    return sorted(picks, key=lambda c: c.predicted_ms)


class PrefixCachedAccuracy:
    """Search-half top-1 of one network's subnets at one resolution.

    The cache maps a prefix of keep/skip decisions (one per skippable block, in order) to the
    activations at the next skippable block's input; it holds at most ``cache_bytes``.
    """

    def __init__(
        self,
        model: nn.Module,
        images: Sequence[LabelledImage],
        preprocessing: Preprocessing,
        resolution: int,
        cache_bytes: int = 400 << 20,
    ) -> None:
        self._skippable = skippable_blocks(model)
        self.total_blocks: int = len(model._blocks)  # type: ignore[arg-type]
        self._labels = np.array([i.class_id for i in images])
        self._cache: OrderedDict[tuple[bool, ...], list[np.ndarray]] = OrderedDict()
        self._cache_bytes = cache_bytes
        # Each piece (stem, every block, head) runs as its own onnxruntime session: several
        # times faster than PyTorch's eager depthwise convolutions on a small CPU.
        self._pieces = _export_pieces(
            SubnetModule(model, subnet_of(model, ())), resolution, self.total_blocks
        )
        mean = np.asarray(preprocessing.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(preprocessing.std, np.float32).reshape(1, 3, 1, 1)
        self._root = []
        for start in range(0, len(images), CHUNK):
            pixels = np.concatenate(
                [
                    load_tensor(i.path.read_bytes(), preprocessing, MAX_PIXELS)
                    for i in images[start : start + CHUNK]
                ]
            )
            x = (pixels.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std
            self._root.append(self._run(["stem", *range(self._skippable[0])], x))
        self.evaluations = 0

    @property
    def skippable(self) -> tuple[int, ...]:
        return self._skippable

    def _remember(self, key: tuple[bool, ...], chunks: list[np.ndarray]) -> None:
        self._cache[key] = chunks
        used = sum(sum(t.nbytes for t in v) for v in self._cache.values())
        while used > self._cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            used -= sum(t.nbytes for t in dropped)

    def top1(self, kept_blocks: Sequence[int]) -> float:
        kept = set(kept_blocks)
        decisions = tuple(s in kept for s in self._skippable)
        depth = next(d for d in range(len(decisions), -1, -1) if d == 0 or decisions[:d] in self._cache)
        chunks = self._root if depth == 0 else self._cache[decisions[:depth]]
        if depth:
            self._cache.move_to_end(decisions[:depth])
        for position in range(depth, len(decisions)):
            block = self._skippable[position]
            until = self._skippable[position + 1] if position + 1 < len(decisions) else self.total_blocks
            pieces = ([block] if decisions[position] else []) + list(range(block + 1, until))
            chunks = [self._run(pieces, x) for x in chunks]
            if position + 1 < len(decisions):
                self._remember(decisions[: position + 1], chunks)
        predictions = np.concatenate([self._run(["head"], x).argmax(1) for x in chunks])
        self.evaluations += 1
        return float(np.mean(predictions == self._labels))

    def _run(self, pieces: Sequence[int | str], x: np.ndarray) -> np.ndarray:
        for piece in pieces:
            (x,) = self._pieces[piece].run(None, {"x": x})
        return x


class _Piece(nn.Module):
    """One piece of a network (``"stem"``, a block index, ``"head"``) as a module to export."""

    def __init__(self, module: SubnetModule, part: int | str) -> None:
        super().__init__()
        self.module = module
        self.part = part
        self.eval()  # see SubnetModule: the exporter restores the mode it found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.part == "stem":
            return self.module.stem(x)
        if self.part == "head":
            return self.module.head(x)
        return self.module.block(int(self.part), x)


def _export_pieces(
    module: SubnetModule, resolution: int, total_blocks: int
) -> dict[int | str, ort.InferenceSession]:
    import warnings

    options = session_options(os.cpu_count() or 1)
    sessions: dict[int | str, ort.InferenceSession] = {}
    x = torch.zeros(1, 3, resolution, resolution)
    with warnings.catch_warnings(), torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, as in export.py
        for part in ["stem", *range(total_blocks), "head"]:
            piece = _Piece(module, part)
            path = Path(tmp) / f"{part}.onnx"
            torch.onnx.export(
                piece, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["x"],
                output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            )  # fmt: skip
            sessions[part] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            x = piece(x)
    return sessions


@dataclass(frozen=True)
class SearchSpace:
    """What the search may combine for one family."""

    arch: str
    accuracy: dict[int, PrefixCachedAccuracy]  # by resolution
    # (resolution, precision) -> table, where the store has the full network with a top1.
    tables: dict[tuple[int, Precision], BlockTable]
    full_top1: dict[tuple[int, Precision], float]  # the store's top1 of those full networks


class Evolution:
    """The state of one search: the subnets scored so far and the moves that make children.

    Every random draw comes from ``rng``, in a fixed order, so a seed repeats a search.
    """

    def __init__(self, space: SearchSpace, rng: random.Random) -> None:
        self.space = space
        self.rng = rng
        self.resolutions = sorted(space.accuracy)
        # (resolution, kept blocks) -> search-half top-1
        self.scored: dict[tuple[int, tuple[int, ...]], float] = {}

    def full(self, resolution: int) -> tuple[int, ...]:
        return tuple(range(self.space.accuracy[resolution].total_blocks))

    def score(self, resolution: int, kept: tuple[int, ...]) -> None:
        if (resolution, kept) not in self.scored:
            self.scored[resolution, kept] = self.space.accuracy[resolution].top1(kept)

    def candidates(self) -> list[Candidate]:
        """Every scored subnet at every precision the device has a table for."""
        result = []
        for (resolution, kept), top1 in self.scored.items():
            total = self.space.accuracy[resolution].total_blocks
            full = self.scored[resolution, self.full(resolution)]
            subnet = None if len(kept) == total else Subnet(kept_blocks=kept, total_blocks=total)
            for (table_resolution, precision), table in self.space.tables.items():
                if table_resolution != resolution:
                    continue
                result.append(
                    Candidate(
                        variant_name(self.space.arch, resolution, precision, subnet),
                        resolution,
                        precision,
                        kept,
                        table.predict_ms(kept),
                        top1,
                        self.space.full_top1[resolution, precision] + top1 - full,
                        subnet is None,
                    )
                )
        return result

    def initial_population(self, population: int) -> list[tuple[int, tuple[int, ...]]]:
        """The full networks first: scoring them caches every prefix of the keep-all path, which
        makes the children that skip one late block cheap. Then a few random subnets."""
        seeds = [(r, self.full(r)) for r in self.resolutions]
        per_resolution = max(1, population // len(self.resolutions))
        return seeds + [(r, self.random_subnet(r)) for r in self.resolutions for _ in range(per_resolution)]

    def random_subnet(self, resolution: int) -> tuple[int, ...]:
        evaluator = self.space.accuracy[resolution]
        skippable = evaluator.skippable
        # Few skips: a subnet missing most of its blocks is far below every frontier.
        skips = set(self.rng.sample(skippable, self.rng.randint(1, max(1, len(skippable) // 3))))
        return tuple(i for i in range(evaluator.total_blocks) if i not in skips)

    def child(self) -> tuple[int, tuple[int, ...]]:
        """A parent from the current front, sometimes crossed with another of its resolution or
        moved to another resolution, then mutated."""
        parents = pareto_front(self.candidates())
        parent = self.rng.choice(parents)
        resolution, kept = parent.resolution, parent.kept_blocks
        roll = self.rng.random()
        if roll < 0.2 and len(self.resolutions) > 1:
            resolution = self.rng.choice([r for r in self.resolutions if r != resolution])
        elif roll < 0.5:
            same = [p for p in parents if p.resolution == resolution]
            kept = self.crossover(kept, self.rng.choice(same).kept_blocks, resolution)
        return resolution, self.mutate(resolution, kept)

    def mutate(self, resolution: int, kept: tuple[int, ...]) -> tuple[int, ...]:
        """Each skippable block flips with probability 1/n; at least one flips."""
        skippable = self.space.accuracy[resolution].skippable
        flips = {s for s in skippable if self.rng.random() < 1 / len(skippable)} or {
            self.rng.choice(skippable)
        }
        return tuple(sorted(set(kept) ^ flips))

    def crossover(self, a: tuple[int, ...], b: tuple[int, ...], resolution: int) -> tuple[int, ...]:
        total = self.space.accuracy[resolution].total_blocks
        return tuple(i for i in range(total) if (i in a if self.rng.random() < 0.5 else i in b))


def evolve(
    space: SearchSpace,
    budget_seconds: float,
    progress: Progress,
    seed: int = 0,
    population: int = 4,
) -> tuple[list[Candidate], list[Candidate]]:
    """Evolve subnets until ``budget_seconds`` have passed; return (all scored, their Pareto
    front).

    Each round takes the family's current front as parents and makes a child of them
    (:meth:`Evolution.child`); children already scored are not scored again.
    """
    search = Evolution(space, random.Random(seed))  # noqa: S311 -- a search, not a secret: seeded
    started = time.monotonic()
    seeds = search.initial_population(population)
    for number, (resolution, kept) in enumerate(seeds, 1):
        search.score(resolution, kept)
        progress(f"initial population {number}/{len(seeds)} ({time.monotonic() - started:.0f} s)")
    rounds = repeats = 0
    # A small space can be exhausted before the budget is: stop after many children seen before.
    while time.monotonic() - started < budget_seconds and repeats < 200:
        rounds += 1
        resolution, child = search.child()
        if (resolution, child) in search.scored:
            repeats += 1
            continue
        repeats = 0
        search.score(resolution, child)
        front = pareto_front(search.candidates())
        progress(
            f"round {rounds}: {len(search.scored)} subnets scored, front of {len(front)} "
            f"({time.monotonic() - started:.0f}/{budget_seconds:.0f} s)"
        )
    everything = search.candidates()
    return everything, pareto_front(everything)
