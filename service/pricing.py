"""Pricing: what one request would cost on each served variant, on this device, now.

A variant's price for a request is a bound on its total that its answers exceed at about the
promised rate: the point prediction (this image's decode at its typical pace, plus the variant's
profiled inference scaled by how fast inferences run now) plus a margin calibrated on recent
answers (``service.core.calibration``). Every variant is priced the same way, whether it was
chosen lately or not, so comparing two variants compares like with like. Each answer teaches the
tables back (``learn``).

A confidence cascade plan is priced from its stages' prices (``price_plan``). One whose held-out
accuracy is below its big stage's by no more than ``MATCH_TOLERANCE`` ranks as that stage: the
store's matching plans (``model_store.cascades.match``) are as accurate as it on the search half,
and a difference that small on the held-out half is noise, not a reason to spend the compute
they save.

A candidate's queue wait is the queue played forward (``schedule.wait_at_place``), the dearest
part of a price with a queue: under load, played for every variant of every request, it made the
event loop the bottleneck, the more so the more variants a store serves. So it is played only for
the candidates that could fit the budget at all (their bound, or a looser one at
``selector.LIKELY_ON_TIME``, fits without any wait) and for the fastest; the others, which a
choice looks at only when nothing fits (and then at their chance of being on time, which the
fastest's wait may overstate), are given the fastest's wait.

A candidate's chance of being on time (``Calibration.on_time_share``, from the same answers as
its bound) is what a fallback goes by (``selector.select``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from model_store import imaging
from model_store.cascades import Plan
from model_store.manifest import Preprocessing, Variant
from service.core import schedule, selector
from service.core.calibration import Calibration
from service.core.latency import DecodeModel, DecodeWork, LatencyModel
from service.runtime.profiler import decode_work

# A typical value: the point prediction takes each part at its median.
TYPICAL = 0.5
# What the strict refusal asks ("could an idle server meet this budget?") prices at.
IDLE_QUANTILE = 0.95
# How far below its big stage's top1 a plan's may be and still rank as it: the paired tolerance
# a cascade is judged by, within the noise of a held-out half.
MATCH_TOLERANCE = 0.005


@dataclass(frozen=True)
class Price:
    """``candidate.predicted_seconds`` = point + the promise's margin: with the time spent and the
    predicted wait, the promised quantile of the request's total."""

    candidate: selector.Candidate
    point_seconds: float  # decode + inference, each at its typical value
    service_seconds: float  # point + service margin: the job's run time in the schedule
    wait_margin_seconds: float
    decode_seconds: float  # the point's decode
    # A cascade plan's second stage, at its typical value (its point is the first stage's).
    escalation_point_seconds: float = 0.0


@dataclass(frozen=True)
class Place:
    """Where a request's job would sit in the schedule, and what the workers hold now."""

    key: float  # its deadline order (``schedule.dispatch_key``)
    limits: tuple[float, ...]  # the capacity it must keep for tighter tiers (``schedule.ladder``)
    queue: Sequence[schedule.Job]
    busy: Sequence[float]
    workers: int
    budgeted: bool
    idle: bool  # nothing queued or running: the request is priced from idle answers (calibration)

    def job(self, run_seconds: float, typical_seconds: float | None = None) -> schedule.Job:
        """A job at this place that runs ``run_seconds`` at most (``typical_seconds`` typically)."""
        return schedule.Job(self.key, run_seconds, self.limits, self.budgeted, typical_seconds)


class Pricer:
    """The latency tables of one served store; not thread-safe (the event loop's)."""

    def __init__(
        self,
        variants: Mapping[str, Variant],
        latency: LatencyModel,
        decode: DecodeModel,
        calibration: Calibration,
    ) -> None:
        self.variants = variants
        self.latency = latency
        self.decode = decode
        self.calibration = calibration

    def price(
        self,
        names: Sequence[str],
        header: imaging.ImageHeader,
        budget_seconds: float | None,
        place: Place,
        now: float,
        elapsed_seconds: float = 0.0,
    ) -> dict[str, Price]:
        """Each named variant's price for this image, with its queue wait at ``place``, for a
        request that has spent ``elapsed_seconds`` here (see the module's note on waits)."""
        slowdown = self.latency.slowdown(now)
        decode_slowdown = self.decode.slowdown(header.format, TYPICAL, now)
        wait_margin = self.calibration.wait_margin(budget_seconds, now)
        idle_decode: dict[Preprocessing, float] = {}
        parts = {}
        for name in names:
            v = self.variants[name]
            decoding = idle_decode.get(v.preprocessing)
            if decoding is None:
                decoding = idle_decode[v.preprocessing] = self.decode.idle(
                    header.format, decode_work(header, v.preprocessing)
                )
            point = decoding * decode_slowdown + self.latency.idle(name, TYPICAL) * slowdown
            service = point + self.calibration.service_margin(
                name, point, budget_seconds, now, idle=place.idle
            )
            parts[name] = (
                decoding,
                point,
                place.job(service, point),
                self.calibration.promise_margin(name, point, budget_seconds, now, idle=place.idle),
            )
        # How much lower a bound at LIKELY_ON_TIME is: the same for every variant (their locations
        # cancel), so worked out once a request.
        name, (_, point, _, margin) = next(iter(parts.items()))
        relief = margin - self.calibration.promise_margin(
            name, point, budget_seconds, now, selector.LIKELY_ON_TIME, idle=place.idle
        )
        fastest = min(parts, key=lambda n: parts[n][1] + parts[n][3])
        shared_wait = schedule.wait_at_place(parts[fastest][2], place.queue, place.busy, now)
        prices = {}
        for name, (decoding, point, job, margin) in parts.items():
            could_fit = budget_seconds is None or elapsed_seconds + point + margin - relief <= budget_seconds
            wait = (
                schedule.wait_at_place(job, place.queue, place.busy, now)
                if could_fit and name != fastest
                else shared_wait
            )
            candidate = selector.Candidate(
                name=name,
                top1=self.variants[name].top1,
                size_bytes=self.variants[name].size_bytes,
                predicted_seconds=point + margin,
                idle_seconds=decoding + self.latency.idle(name, IDLE_QUANTILE),
                wait_seconds=wait,
                blocks=schedule.blocks(job, place.workers),
                on_time=None
                if budget_seconds is None
                else self.calibration.on_time_share(
                    name, point, budget_seconds - elapsed_seconds - wait, budget_seconds, now, idle=place.idle
                ),
            )
            prices[name] = Price(candidate, point, job.run_seconds, wait_margin, decoding * decode_slowdown)
        return prices

    def price_plan(
        self,
        plan: Plan,
        prices: Mapping[str, Price],
        budget_seconds: float | None,
        place: Place,
        now: float,
        elapsed_seconds: float = 0.0,
    ) -> Price:
        """A cascade plan's price from its stages' ``prices`` (at ``place``), with the first stage
        as its job: the image decoded once, for the stage that needs more pixels, and the small
        variant's inference within its bound. Its wait is played only when it could fit (else:
        the small stage's).

        Its worst case is the point of both stages plus one margin calibrated on the plan's own
        answers (``learn``), not the two stages' bounds stacked: their spreads come from the
        same shared cores, and a sum of two 0.99 quantiles would price every plan out. Its mean
        adds the rest of the worst case at the recorded escalation rate."""
        small, big = prices[plan.small], prices[plan.big]
        decoding = max(small.decode_seconds, big.decode_seconds)
        point = decoding + small.point_seconds - small.decode_seconds
        second_point = big.point_seconds - big.decode_seconds
        worst = point + second_point
        worst += self.calibration.service_margin(plan.name, worst, budget_seconds, now, idle=place.idle)
        first = decoding + small.service_seconds - small.decode_seconds
        wait_margin = small.wait_margin_seconds
        # What is queued now is the first stage; the second is priced and scheduled on its own.
        job = place.job(first, point)
        predicted = max(worst, first) + wait_margin
        could_fit = budget_seconds is None or elapsed_seconds + predicted <= budget_seconds
        matched = big.candidate.top1
        candidate = selector.Candidate(
            name=plan.name,
            top1=plan.top1,
            ranked_top1=matched
            if matched is not None and matched - MATCH_TOLERANCE <= plan.top1 < matched
            else None,
            size_bytes=max(small.candidate.size_bytes, big.candidate.size_bytes),
            predicted_seconds=predicted,
            idle_seconds=small.candidate.idle_seconds + big.candidate.idle_seconds,
            wait_seconds=schedule.wait_at_place(job, place.queue, place.busy, now)
            if could_fit
            else small.candidate.wait_seconds,
            blocks=schedule.blocks(job, place.workers),
            mean_seconds=first + plan.escalation_rate * max(0.0, worst - first) + wait_margin,
        )
        return Price(candidate, point, first, wait_margin, decoding, second_point)

    def inference_seconds(self, name: str, now: float, budget_seconds: float | None = None) -> float:
        """One inference on ``name`` without a decode (``/v2`` tensors, probes, a cascade's second
        stage), priced like a request's service: its point as things run now plus its calibrated
        margin at the budget's level."""
        point = self.latency.idle(name, TYPICAL) * self.latency.slowdown(now)
        return point + self.calibration.service_margin(name, point, budget_seconds, now)

    def learn(
        self,
        name: str,
        budget_seconds: float | None,
        *,
        image_format: str,
        work: DecodeWork,
        decode_seconds: float,
        inferences: Sequence[tuple[str, float]],
        service_residual: float,
        wait_error: float | None,
        late: bool | None,
        now: float,
        idle: bool,
    ) -> None:
        """What an answer of ``name`` (a variant, or a cascade plan) teaches the tables: its decode,
        each inference that ran (``(variant, seconds)``), how much longer than its point
        prediction its service took, how much longer than predicted it waited (None: queued past
        hope), whether it came after both its budget and its price (None: pinned, no budget,
        or a miss no choice would have avoided), and whether it was priced ``idle``."""
        for variant, seconds in inferences:
            self.latency.observe(variant, seconds, now)
        self.decode.observe(image_format, work, decode_seconds, now)
        self.calibration.observe(name, service_residual, budget_seconds, wait_error, late, now, idle=idle)
