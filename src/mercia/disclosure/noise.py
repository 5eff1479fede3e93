"""The geometric mechanism: differentially private counts, and what a budget of epsilon allows.

A count query's answer gets two-sided geometric ("discrete Laplace") noise: P(Z = z) is proportional to
alpha^|z| with alpha = exp(-epsilon / sensitivity). For a vector of counts whose L1 distance between
two neighbouring databases is at most `sensitivity`, adding independent noise of this kind to every
component is epsilon-differentially private (Ghosh, Roughgarden & Sundararajan 2009, "Universally
utility-maximizing privacy mechanisms"; the Laplace mechanism, Dwork & Roth 2014, "The Algorithmic
Foundations of Differential Privacy", sec. 3.3). Whatever is done with the noisy numbers afterwards
(clamping at zero, cumulative sums, a threshold, rounding) is post-processing and keeps the guarantee
(Dwork & Roth, Proposition 2.1), and releases compose: k answers at epsilon each cost k x epsilon in
all (Theorem 3.14 / 3.16), however adaptively the questions were chosen.

Neighbours here differ in one person's record (that person's data replaced): the change that an
attacker who asks "does this person have X?" is trying to detect.

The noise is derived, not drawn: HMAC-SHA256 of a secret key and a label gives the uniform numbers,
so the same question (same label) gets the same noise, and a repeat of it offers nothing to average.
"""

from __future__ import annotations

import hashlib
import hmac
import math

_TWO_64 = float(2**64)


def _uniform(key: bytes, label: str, i: int) -> float:
    """A number in (0, 1) from the keyed hash of (label, i): uniform for anyone without the key."""
    digest = hmac.new(key, f"{label}\x00{i}".encode(), hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / _TWO_64


def _geometric(u: float, alpha: float) -> int:
    """Failures before the first success, success probability 1 - alpha, by inversion of the CDF."""
    return math.floor(math.log(u) / math.log(alpha))


def two_sided_geometric(key: bytes, label: str, n: int, *, epsilon: float, sensitivity: float) -> list[int]:
    """`n` draws of two-sided geometric noise for `label` (the same label, the same draws).

    The difference of two independent geometric variables with parameter alpha is two-sided geometric
    with the same alpha."""
    if epsilon <= 0 or sensitivity <= 0:
        raise ValueError("the geometric mechanism needs epsilon > 0 and sensitivity > 0")
    alpha = math.exp(-epsilon / sensitivity)
    return [_geometric(_uniform(key, label, 2 * j), alpha) - _geometric(_uniform(key, label, 2 * j + 1), alpha)
            for j in range(n)]


def noise_sd(epsilon: float, sensitivity: float) -> float:
    """Standard deviation of two-sided geometric noise: sqrt(2 alpha) / (1 - alpha)."""
    alpha = math.exp(-epsilon / sensitivity)
    return math.sqrt(2 * alpha) / (1 - alpha)


def attribute_accuracy_bound(epsilon: float) -> float:
    """The best accuracy any attacker reaches, from epsilon-DP answers, on one binary attribute of one
    person that is a priori equally likely either way: e^eps / (1 + e^eps).

    Any test between the two neighbouring worlds has true and false positive rates with TPR <= e^eps FPR
    and 1 - FPR <= e^eps (1 - TPR) (Wasserman & Zhou 2010; Kairouz, Oh & Viswanath 2015); with equal
    priors the accuracy (TPR + 1 - FPR) / 2 is largest at e^eps / (1 + e^eps)."""
    return math.exp(epsilon) / (1.0 + math.exp(epsilon))
