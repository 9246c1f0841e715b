"""Whether chains are still settling: a trend test on each chain's fit between two windows.

A chain started away from the posterior's typical set changes its fit for as long as its
transient lasts, and the lens drifts with it: from a poor start (a pre-fit lens at the far end of
a degenerate ridge, a warm start in a poor basin) the fit improves; from a source that the
warm-up's guided descent fitted more closely than the posterior's typical draw, it worsens as
the source relaxes (held-out system 47: the potential of two of four chains rose by 2-3 of its sd
per 100 sweeps while their lens travelled towards the truth). A fixed warm-up that ends inside that transient leaves drifting draws
in the posterior: on the held-out lenstronomy systems of issue 14, chains that stopped short
along the ridge from a far start gave lens pulls of 4 posterior sd that three times the
warm-up removed (``docs/joint_inference.md``). :func:`settle_check` tells a chain that is still
changing from one that is not, from the potential energy (``-log`` density of the lens given
the source: half the residual chi^2 up to the lens prior) that every NumPyro kernel records,
so that :func:`~blindlens.chain_runner.run_chains` can go on warming up only the runs that need
it: a run whose chains have settled is sampled exactly as without the check.

The statistic compares the mean potential of a window of sweeps with that of the window before
it (or, with no earlier window, the two halves of one window), with a standard error from
batch means (:data:`BATCHES` per window, which absorbs autocorrelation shorter than a batch):

    z = (mean(before) - mean(after)) / sqrt(s_b^2 / B + s_a^2 / B),

positive when the fit improves, where ``s^2`` is the scatter of a window's batch means about a
straight line (``B - 2`` degrees of freedom): a trend inside the windows, the signal itself,
does not inflate the standard error that judges it. A chain is still settling when
``|z| > threshold``: two-sided, as transients go both ways (above).

Measured on AR(1) series of two windows of 100 (``tests/test_settling.py`` holds the exact and
the Monte Carlo checks): per chain, false alarms at the default ``threshold = 4`` for 0.7%
(white noise), 0.9% (lag-one autocorrelation 0.5), 1.3% (0.8) and 3.0% (0.9, an integrated
autocorrelation time of 19 sweeps) of stationary windows; a linear trend of one stationary sd per
100 sweeps is caught in 98%, 62%, 27% and 23% of windows, two sd in 100%, 100%, 88% and 73%, four
sd in all. (At 3 the false alarms are 2.4-7.9%; without the detrending, one-sided at 3, a trend of
one sd was caught in 91% to 27%, two sd in 100% to 67%.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Float

__all__ = ["BATCHES", "MIN_WINDOW", "SETTLE_THRESHOLD", "SettleCheck", "fit_trend", "settle_check"]


BATCHES = 5
"""Batch means per window."""

MIN_WINDOW = 2 * BATCHES
"""Fewest sweeps in a window for a trend test (two per batch); shorter windows are not judged."""

SETTLE_THRESHOLD = 4.0
"""``|z|`` of the trend above which a chain counts as still settling."""


class SettleCheck(NamedTuple):
    """The result of :func:`settle_check`.

    Attributes
    ----------
    z
        ``(chains,)`` trend z of each chain's fit (positive: improving; NaN: not judged).
    drifting
        ``(chains,)`` whether each chain's fit is still changing (``|z| > threshold``).
    threshold
        The threshold used.
    """

    z: np.ndarray
    drifting: np.ndarray
    threshold: float

    @property
    def settled(self) -> bool:
        """Whether no chain's fit is still changing."""
        return not bool(np.any(self.drifting))

    def describe(self) -> str:
        """One phrase naming the chains still settling and their z (empty when settled)."""
        parts = [f"chain {c} (z {self.z[c]:.1f})" for c in np.flatnonzero(self.drifting)]
        return ", ".join(parts)


def _batch_means(x: np.ndarray, batches: int) -> np.ndarray:
    """``(chains, batches)`` means of ``batches`` equal batches of the last sweeps of ``x``."""
    m = x.shape[-1] // batches
    return x[..., x.shape[-1] - batches * m:].reshape(x.shape[0], batches, m).mean(-1)


def _scatter_about_line(means: np.ndarray) -> np.ndarray:
    """``(chains,)`` residual variance of batch means about their least-squares line (``B - 2`` dof)."""
    t = np.arange(means.shape[-1]) - (means.shape[-1] - 1) / 2
    slope = (means * t).sum(-1, keepdims=True) / (t * t).sum()
    resid = means - means.mean(-1, keepdims=True) - slope * t
    return (resid * resid).sum(-1) / (means.shape[-1] - 2)


def fit_trend(
    before: Float[np.ndarray, "chains n_before"],
    after: Float[np.ndarray, "chains n_after"],
    *,
    batches: int = BATCHES,
) -> Float[np.ndarray, " chains"]:
    """Per chain, the z of the fall in mean potential energy from ``before`` to ``after``.

    Parameters
    ----------
    before, after
        Potential energy (``-log`` density, any units) per chain and sweep of two consecutive
        windows, each at least ``2 * batches`` sweeps long; rows of NaN are not judged.
    batches
        Batch means per window (>= 3: a line is fitted to them).

    Returns
    -------
    numpy.ndarray
        ``(chains,)``: ``(mean(before) - mean(after)) / se`` with the standard error from the
        scatter of each window's batch means about a line; ``+inf``/``-inf`` for a change between constant windows,
        0 for no change, NaN where a window has a non-finite value.
    """
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if before.ndim != 2 or after.ndim != 2 or before.shape[0] != after.shape[0]:
        raise ValueError(f"fit_trend needs (chains, sweeps) windows with as many chains, got {before.shape} and "
                         f"{after.shape}.")
    if batches < 3 or min(before.shape[1], after.shape[1]) < 2 * batches:
        raise ValueError(f"fit_trend needs windows of at least {2 * batches} sweeps ({batches} batches of 2), got "
                         f"{before.shape[1]} and {after.shape[1]}.")
    b, a = _batch_means(before, batches), _batch_means(after, batches)
    diff = b.mean(-1) - a.mean(-1)
    se = np.sqrt((_scatter_about_line(b) + _scatter_about_line(a)) / batches)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.sign(diff) * np.inf)
    z = np.where(diff == 0, 0.0, z)
    return np.where(np.isfinite(diff), z, np.nan)


def settle_check(
    after: Float[np.ndarray, "chains n"],
    before: Float[np.ndarray, "chains m"] | None = None,
    *,
    threshold: float = SETTLE_THRESHOLD,
) -> SettleCheck:
    """Whether each chain's fit is still changing from the window ``before`` to ``after``.

    Parameters
    ----------
    after
        Potential energy per chain and sweep of the newest window.
    before
        The window before it (e.g. the last warm-up sweeps), or ``None``: the two halves of
        ``after`` are compared instead. A window shorter than :data:`MIN_WINDOW` is not judged
        (every chain counts as settled).
    threshold
        ``|z|`` above which a chain is still settling.

    Returns
    -------
    SettleCheck
    """
    after = np.asarray(after, np.float64)
    if before is None:
        half = after.shape[1] // 2
        before, after = after[:, :half], after[:, after.shape[1] - half:]
    before = np.asarray(before, np.float64)
    if min(before.shape[1], after.shape[1]) < MIN_WINDOW:
        z = np.full(after.shape[0], np.nan)
    else:
        z = fit_trend(before, after)
    return SettleCheck(z, np.asarray(np.abs(z) > threshold), float(threshold))
