"""When a load test's tier has missed its budget-met floor: pure, so tests import it without Locust."""

from __future__ import annotations

import math

# A tier misses its floor when a count that low would be this improbable at the floor's rate.
SIGNIFICANCE = 0.05


def below(met: int, answered: int, floor: float) -> bool:
    """Whether ``met`` of ``answered`` shows the tier's rate below ``floor``.

    A rate from few answers says little (a strict tier that sheds most of its requests may
    answer two, and one slow inference is then half of them), so a tier misses only when its
    count is improbably low for a rate of ``floor``: an exact one-sided binomial test at
    ``SIGNIFICANCE``. With hundreds of answers this is the plain comparison within a point or two.
    """
    if met >= floor * answered:
        return False
    if floor >= 1:
        return True
    n = answered
    log_terms = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(floor)
        + (n - k) * math.log1p(-floor)
        for k in range(met + 1)
    )
    return sum(math.exp(t) for t in log_terms) < SIGNIFICANCE
