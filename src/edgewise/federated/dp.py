"""What client-level differential privacy a run gives: the Gaussian mechanism's epsilon via Renyi DP.

Each round releases the average of n clipped updates (each clipped to L2 norm C, unweighted) plus
Gaussian noise of standard deviation z*C/n. Replacing one client changes that average by at most 2C/n
under replace-one, C/n under add/remove-one; we state the add/remove (client-level) guarantee, the usual
one in federated DP. T rounds compose: RDP(alpha) = T * alpha / (2 z^2); converted to (epsilon, delta) by
epsilon = min_alpha RDP(alpha) + log(1/delta) / (alpha - 1). No amplification by client sampling is
claimed, so the figure is conservative when only part of the fleet trains each round.
"""

from __future__ import annotations

import math


def epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5) -> float:
    if noise_multiplier <= 0:
        return math.inf
    if not 0 < delta < 1 or rounds < 1:
        raise ValueError("delta must be in (0, 1) and rounds >= 1")
    alphas = [1 + x / 100 for x in range(1, 100)] + [2 + x / 10 for x in range(0, 980)] + list(range(100, 2049))
    return min(rounds * a / (2 * noise_multiplier**2) + math.log(1 / delta) / (a - 1) for a in alphas)
