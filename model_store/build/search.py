"""Evolutionary search for a family's subnets on this device's accuracy/latency frontier (OFA-style).

A candidate is a resolution and a set of kept blocks; each is scored at both precisions, with the
latency the device table predicts (``model_store.build.latency_table``) and the top-1 on the
*search half* of the labelled sample (even positions). That figure picks the frontier and is never
recorded as a variant's ``top1``: the picked subnets are measured again on the held-out half (odd
positions) after export (``model_store.build.specialize``).

Evaluating a candidate reuses the activations of the longest prefix of decisions it shares with a
candidate seen before, so a child that differs from its parent in a late block costs only the
blocks after it.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model_store.build.latency_table import BlockTable
from model_store.build.subnets import SubnetModule, skippable_blocks, subnet_of
from model_store.evaluate import MAX_PIXELS, LabelledImage
from model_store.imaging import load_tensor
from model_store.manifest import Precision, Preprocessing

Progress = Callable[[str], None]
CHUNK = 25  # images per forward pass: bounds the memory of the expanded activations


@dataclass(frozen=True)
class Candidate:
    resolution: int
    precision: Precision
    kept_blocks: tuple[int, ...]
    predicted_ms: float
    # Top-1 on the search half (int8: the fp32 figure less the full network's measured int8 loss).
    search_top1: float
    full_depth: bool


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both latency and search accuracy, fastest first."""
    ordered = sorted(candidates, key=lambda c: (c.predicted_ms, -c.search_top1))
    front: list[Candidate] = []
    for candidate in ordered:
        if not front or candidate.search_top1 > front[-1].search_top1:
            front.append(candidate)
    return front


def spread_picks(front: Sequence[Candidate], k: int) -> list[Candidate]:
    """At most ``k`` subnets of ``front`` spanning its subnets' latency range (log-spaced)."""
    subnets = [c for c in front if not c.full_depth]
    if len(subnets) <= k:
        return subnets
    low, high = math.log(subnets[0].predicted_ms), math.log(subnets[-1].predicted_ms)
    picks: list[Candidate] = []
    for step in range(k):
        target = low + (high - low) * step / max(1, k - 1)
        remaining = [c for c in subnets if c not in picks]
        picks.append(min(remaining, key=lambda c: abs(math.log(c.predicted_ms) - target)))
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
        cache_bytes: int = 400 << 20,
    ) -> None:
        self._skippable = skippable_blocks(model)
        self.total_blocks: int = len(model._blocks)  # type: ignore[arg-type]
        self._module = SubnetModule(model, subnet_of(model, ()))
        self._labels = torch.tensor([i.class_id for i in images])
        self._cache: OrderedDict[tuple[bool, ...], list[torch.Tensor]] = OrderedDict()
        self._cache_bytes = cache_bytes
        mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), CHUNK):
                pixels = np.concatenate(
                    [
                        load_tensor(i.path.read_bytes(), preprocessing, MAX_PIXELS)
                        for i in images[start : start + CHUNK]
                    ]
                )
                x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - mean) / std
                x = self._module.stem(x)
                for index in range(self._skippable[0]):
                    x = self._module.block(index, x)
                chunks.append(x)
        self._root = chunks
        self.evaluations = 0

    @property
    def skippable(self) -> tuple[int, ...]:
        return self._skippable

    def _remember(self, key: tuple[bool, ...], chunks: list[torch.Tensor]) -> None:
        self._cache[key] = chunks
        used = sum(sum(t.numel() * t.element_size() for t in v) for v in self._cache.values())
        while used > self._cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            used -= sum(t.numel() * t.element_size() for t in dropped)

    def top1(self, kept_blocks: Sequence[int]) -> float:
        kept = set(kept_blocks)
        decisions = tuple(s in kept for s in self._skippable)
        depth = next(d for d in range(len(decisions), -1, -1) if d == 0 or decisions[:d] in self._cache)
        chunks = self._root if depth == 0 else self._cache[decisions[:depth]]
        if depth:
            self._cache.move_to_end(decisions[:depth])
        with torch.no_grad():
            for position in range(depth, len(decisions)):
                block = self._skippable[position]
                until = self._skippable[position + 1] if position + 1 < len(decisions) else self.total_blocks
                indices = ([block] if decisions[position] else []) + list(range(block + 1, until))
                chunks = [self._run(indices, x) for x in chunks]
                if position + 1 < len(decisions):
                    self._remember(decisions[: position + 1], chunks)
            predictions = torch.cat([self._module.head(x).argmax(1) for x in chunks])
        self.evaluations += 1
        return float((predictions == self._labels).float().mean())

    def _run(self, indices: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        for index in indices:
            x = self._module.block(index, x)
        return x


@dataclass(frozen=True)
class SearchSpace:
    """What the search may combine for one family."""

    accuracy: dict[int, PrefixCachedAccuracy]  # by resolution
    tables: dict[tuple[int, Precision], BlockTable]  # (resolution, precision) -> table
    # Top-1 points the full network loses at int8 at each resolution (measured on the store's
    # evaluation set); int8 is searched only where the store has a full-depth int8 variant.
    int8_loss: dict[int, float]


def evolve(
    space: SearchSpace,
    budget_seconds: float,
    progress: Progress,
    seed: int = 0,
    population: int = 8,
) -> tuple[list[Candidate], list[Candidate]]:
    """Evolve subnets until ``budget_seconds`` have passed; return (all scored, Pareto front).

    Each round takes the current front as parents, mutates (each skippable block flips with
    probability 1/n, at least one flips) and sometimes crosses two parents of one resolution or
    moves a child to another resolution; children already scored are not scored again.
    """
    rng = random.Random(seed)  # noqa: S311 -- a search, not a secret: seeded to be repeatable
    started = time.monotonic()
    scored: dict[tuple[int, tuple[int, ...]], float] = {}
    resolutions = sorted(space.accuracy)

    def candidates() -> list[Candidate]:
        result = []
        for (resolution, kept), top1 in scored.items():
            full = len(kept) == space.accuracy[resolution].total_blocks
            for (table_resolution, precision), table in space.tables.items():
                if table_resolution != resolution:
                    continue
                loss = space.int8_loss.get(resolution, 0.0) if precision == "int8" else 0.0
                result.append(
                    Candidate(resolution, precision, kept, table.predict_ms(kept), top1 - loss, full)
                )
        return result

    def score(resolution: int, kept: tuple[int, ...]) -> None:
        if (resolution, kept) not in scored:
            scored[resolution, kept] = space.accuracy[resolution].top1(kept)

    def random_subnet(resolution: int) -> tuple[int, ...]:
        evaluator = space.accuracy[resolution]
        skippable = evaluator.skippable
        skips = set(rng.sample(skippable, rng.randint(1, len(skippable))))
        return tuple(i for i in range(evaluator.total_blocks) if i not in skips)

    def mutate(resolution: int, kept: tuple[int, ...]) -> tuple[int, ...]:
        skippable = space.accuracy[resolution].skippable
        flips = {s for s in skippable if rng.random() < 1 / len(skippable)} or {rng.choice(skippable)}
        return tuple(sorted(set(kept) ^ flips))

    def crossover(a: tuple[int, ...], b: tuple[int, ...], resolution: int) -> tuple[int, ...]:
        total = space.accuracy[resolution].total_blocks
        return tuple(i for i in range(total) if (i in a if rng.random() < 0.5 else i in b))

    for resolution in resolutions:
        score(resolution, tuple(range(space.accuracy[resolution].total_blocks)))
    for resolution in resolutions:
        for _ in range(max(1, population // len(resolutions))):
            score(resolution, random_subnet(resolution))
    rounds = repeats = 0
    # A small space can be exhausted before the budget is: stop after many children seen before.
    while time.monotonic() - started < budget_seconds and repeats < 200:
        rounds += 1
        parents = pareto_front(candidates())
        parent = rng.choice(parents)
        resolution, kept = parent.resolution, parent.kept_blocks
        roll = rng.random()
        if roll < 0.2 and len(resolutions) > 1:
            resolution = rng.choice([r for r in resolutions if r != resolution])
        elif roll < 0.5:
            same = [p for p in parents if p.resolution == resolution]
            kept = crossover(kept, rng.choice(same).kept_blocks, resolution)
        child = mutate(resolution, kept)
        if (resolution, child) in scored:
            repeats += 1
            continue
        repeats = 0
        score(resolution, child)
        front = pareto_front(candidates())
        progress(
            f"round {rounds}: {len(scored)} subnets scored, front of {len(front)} "
            f"({time.monotonic() - started:.0f}/{budget_seconds:.0f} s)"
        )
    everything = candidates()
    return everything, pareto_front(everything)
