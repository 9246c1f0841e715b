"""Calibration checks used by the studies: TARP expected coverage.

TARP (Lemos, Coogan, Hezaveh & Perreault-Levasseur 2023, ICML, "Sampling-based accuracy testing
of posterior estimators for general inference", Alg. 1): for each simulation ``i`` with truth
``theta_i``, posterior samples and a random reference point ``r_i``, let ``f_i`` be the fraction
of samples closer to ``r_i`` than ``theta_i`` is. A calibrated posterior makes ``f_i`` uniform,
so the expected coverage ``ECP(alpha) = mean_i [f_i < alpha]`` equals ``alpha``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tarp_coverage"]


def tarp_coverage(samples, truths, references, num_alpha: int = 50):
    """TARP expected coverage probability.

    Parameters
    ----------
    samples
        ``(n_sims, n_samples, d)`` posterior samples per simulation.
    truths
        ``(n_sims, d)`` true parameters.
    references
        ``(n_sims, d)`` reference points, one per simulation (drawn independently of the
        posteriors, e.g. uniformly in the box of the truths).
    num_alpha
        Number of credibility intervals on ``[0, 1]``.

    Returns
    -------
    ``(alpha, ecp, atc)``: credibility levels ``(num_alpha + 1,)``, expected coverage at each,
    and ``ATC = mean(ECP - alpha)`` (negative: overconfident; positive: underconfident).
    """
    samples, truths, references = (np.asarray(a, float) for a in (samples, truths, references))
    if samples.ndim != 3 or truths.shape != (samples.shape[0], samples.shape[2]) or references.shape != truths.shape:
        raise ValueError(
            f"tarp_coverage needs samples (n_sims, n_samples, d), truths and references (n_sims, d); got "
            f"{samples.shape}, {truths.shape}, {references.shape}."
        )
    d_samples = np.linalg.norm(samples - references[:, None, :], axis=-1)
    d_truth = np.linalg.norm(truths - references, axis=-1)
    f = np.mean(d_samples < d_truth[:, None], axis=1)
    alpha = np.linspace(0.0, 1.0, num_alpha + 1)
    ecp = np.array([np.mean(f < a) for a in alpha])
    return alpha, ecp, float(np.mean(ecp - alpha))
