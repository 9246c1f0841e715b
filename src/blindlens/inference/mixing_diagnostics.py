"""Have the chains mixed? Rank-normalised split R-hat and bulk ESS of MCMC draws.

One definition serves every verdict a run gives: the ``--target-ess`` stopping rule
(:func:`blindlens.chain_runner.convergence_check`), ``check_run`` and the summary table (whose
R-hat and bulk ESS ArviZ computes the same way). It is the R-hat of Vehtari et al. (2021,
Bayesian Analysis 16, 667, "Rank-normalization, folding, and localization"), for which their
threshold 1.01 is meant: each chain split in two halves, all draws replaced by their normal
scores (ranks mapped through the inverse normal CDF), and the larger of the R-hat of those scores
(bulk) and of the scores of the distance to the median (tails). Unlike the classic split R-hat
(Gelman et al. 2013, BDA3 §11.4) it is bounded where chains do not overlap at all (about 2.5 for
two such chains), and it is unchanged by any monotone transform of a parameter. The bulk ESS is the
effective sample size (Geyer's initial monotone sequence, ``numpyro.diagnostics``) of the split
chains' normal scores.
"""

from __future__ import annotations

import numpy as np

from .._types import Float

__all__ = ["split_rhat_and_ess", "rank_normalized_split_rhat", "bulk_ess"]


def _split(x: np.ndarray) -> np.ndarray:
    """``(2 chain, draw // 2)``: the first and last halves of every chain (a middle draw dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Each draw's rank among all draws (ties averaged), mapped to a standard normal quantile
    with Blom's offsets, ``Phi^-1((r - 3/8) / (S + 1/4))``."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    ranks = rankdata(x, method="average").reshape(x.shape)
    return ndtri((ranks - 0.375) / (x.size + 0.25))


def _rhat(y: np.ndarray) -> float:
    """The potential scale reduction of ``(chain, draw)`` draws (each row one chain)."""
    n = y.shape[1]
    within = y.var(axis=1, ddof=1).mean()
    between = n * y.mean(axis=1).var(ddof=1)
    if not within > 0:
        return float("nan")
    return float(np.sqrt(((n - 1) / n * within + between / n) / within))


def _usable(draws) -> np.ndarray | None:
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4 or not np.all(np.isfinite(x)):
        return None
    return x


def rank_normalized_split_rhat(draws: Float[np.ndarray, "chain draw"]) -> float:
    """Rank-normalised split R-hat: the larger of its bulk and tail (folded) versions.

    Parameters
    ----------
    draws
        ``(chain, draw)`` draws of one scalar, any units.

    Returns
    -------
    float
        1 for mixed chains; NaN when a chain has fewer than 4 draws, a draw is not finite, or
        every draw is the same.
    """
    x = _usable(draws)
    if x is None:
        return float("nan")
    split = _split(x)
    return max(_rhat(_normal_scores(split)), _rhat(_normal_scores(np.abs(split - np.median(split)))))


def bulk_ess(draws: Float[np.ndarray, "chain draw"]) -> float:
    """Bulk effective sample size: the ESS of the split chains' normal scores (NaN as above)."""
    from numpyro.diagnostics import effective_sample_size

    x = _usable(draws)
    if x is None:
        return float("nan")
    scores = _normal_scores(_split(x))
    return float(effective_sample_size(scores)) if scores.std() > 0 else float("nan")


def split_rhat_and_ess(draws: Float[np.ndarray, "chain draw"]) -> tuple[float, float]:
    """``(rank-normalised split R-hat, bulk ESS)`` of ``(chain, draw)`` draws of one scalar.

    NaN for both when a chain has fewer than 4 draws or a draw is not finite.
    """
    return rank_normalized_split_rhat(draws), bulk_ess(draws)
