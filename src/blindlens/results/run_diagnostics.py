"""Is this run trustworthy? One check of a finished blindlens run: :func:`check_run`.

``check_run(idata)`` reads a blindlens InferenceData (``arviz.InferenceData`` of ArviZ 0.23 or
the xarray ``DataTree`` of ArviZ >= 1.0: only ``idata.<group>[name].values`` and ``.attrs`` are
used) and checks, in one place:

* **mixing** of the lens parameters: max rank-normalised split R-hat <= 1.01 and min bulk ESS >=
  100 (the current Stan/ArviZ guidance, Vehtari et al. 2021, Bayesian Analysis 16, 667), computed
  on NumPy arrays by :func:`blindlens.inference.mixing_diagnostics.split_rhat_and_ess`, the
  definition of the summary table's R-hat and of the ``--target-ess`` stopping rule.
  Nuisance sites of the lens model (the source grid's placement ``alpha_x, alpha_y`` of
  ``--source-shift sampled``) are not judged: their R-hat is reported in
  :attr:`RunReport.nuisance_rhat` and printed, since chains that sit at different placements are
  fine as long as the lens parameters agree;
* **divergent** lens-NUTS transitions (``sample_stats.diverging``): any is reported;
* **goodness of fit**: the median residual ``chi^2 / N`` over draws (from
  :func:`blindlens.arviz_conversion.residual_chi2`, the package's own per-draw chi^2) against its
  expected spread ``1 +- sqrt(2 / N)`` for ``N`` unmasked pixels; more than ``chi2_sigma`` (5)
  of those from 1, either way, is reported;
* **chains in a worse mode**: per chain, the median total ``chi^2``; a chain whose median exceeds
  the best chain's by more than ``max(chain_chi2_gap, 5 x`` the within-chain sd of ``chi^2)`` sits
  at a fit far worse than another chain found (blind lensing is multi-modal: a wrong lens with a
  contorted source). It is named in :attr:`RunReport.worse_chains` so callers can exclude it
  (``idata.posterior.sel(chain=...)``); never average it into the posterior silently;
* **draws that left the fit**: a chain whose median is fine but more than ``WORSE_DRAW_FRACTION``
  (5%) of whose draws sit above the best chain's median by that same threshold jumped into a
  worse state during the run (seen on a lenstronomy system: one chain's last 27 of 100 draws at
  chi^2/N 1.46-1.52 against 1.02, its median unmoved). Named in
  :attr:`RunReport.chains_with_worse_draws`;
* **a source that reaches its grid's edge**: the brightest border pixel of the posterior-mean
  source (outer ``max(1, n // 32)`` pixels), where it lies above its posterior sd, as a fraction of
  the source's peak; above ``SOURCE_EDGE_FRACTION`` (20%) the source's light runs past the field,
  where the model has none (a misfit, and a lens that bends to make up for it). Grids under 16
  pixels a side are not judged. :attr:`RunReport.source_edge_fraction`;
* **non-finite values** anywhere in the posterior (a blown-up source step) and in the model
  images.

Every problem becomes a line in :attr:`RunReport.warnings` and, unless ``warn=False``, a
:class:`BlindLensRunWarning`. The CLI (``blindlens sample``, ``blindlens demo``) prints the report
after every run, and exits with status 3 under ``--strict`` when a check fails.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BlindLensRunWarning", "RunReport", "check_run", "source_edge_fraction"]

RHAT_MAX = 1.01
"""Largest acceptable split R-hat (Vehtari et al. 2021)."""
ESS_MIN = 100.0
"""Smallest acceptable effective sample size (Vehtari et al. 2021: 100, i.e. 50 per chain for 2+ chains)."""
CHI2_SIGMA = 5.0
"""Distance of the median residual chi^2/N from 1, in units of sqrt(2/N), that is reported."""
CHAIN_CHI2_GAP = 25.0
"""Smallest total-chi^2 gap between a chain's and the best chain's median that marks a worse mode."""
CHAIN_CHI2_SIGMA = 5.0
"""... in units of the within-chain sd of chi^2, whichever is larger."""
WORSE_DRAW_FRACTION = 0.05
"""Fraction of a chain's draws beyond the worse-mode threshold that is reported."""
SOURCE_EDGE_FRACTION = 0.2
"""Largest brightness of the posterior-mean source on its grid's border, as a fraction of its peak, that
is not reported. Measured on 16 four-chain cold-start runs of lenstronomy systems (64 x 64 at 0.05"):
at most 0.02 on the 14 whose source fits in the field (broad 19, 21, 22, 24-29, 31-33; XDF 1, 2), 0.30
and 0.52 on the two whose knots reach its edge (broad 23 and 30, residual chi^2/N +0.03 and +0.07
above the true source's, unflagged and flagged by the fit check)."""
SOURCE_EDGE_MIN_SIDE = 16
"""Smallest source grid side (pixels) on which the edge check is made."""


class BlindLensRunWarning(UserWarning):
    """A diagnostic of a finished run is out of range (:func:`check_run`)."""


@dataclass(frozen=True)
class RunReport:
    """The numbers and verdicts of :func:`check_run`.

    Attributes
    ----------
    ok
        ``True`` when no check failed (``warnings`` is empty).
    warnings
        One readable line per problem.
    lens_parameters
        The lens parameters checked for mixing.
    rhat, ess
        Split R-hat and effective sample size per lens parameter (NaN when undefined, e.g. fewer
        than 4 draws per chain).
    max_rhat, min_ess
        Their worst values (``None`` without lens parameters, e.g. a fixed-lens run).
    nuisance_rhat
        Split R-hat per nuisance site (not judged; see the module docs); for the grid placement,
        of its phase within a pixel (chains a whole pixel apart are at the same placement).
    num_divergent, num_transitions
        Divergent lens-NUTS transitions and all transitions (``None`` without ``diverging``).
    num_pixels
        ``N``, the unmasked pixels in the residual (``None`` without residuals).
    chi2_per_pixel
        Median residual ``chi^2 / N`` over all draws.
    chi2_expected_sd
        ``sqrt(2 / N)``, the spread of ``chi^2 / N`` for a correct model.
    chi2_sigma
        ``(chi2_per_pixel - 1) / chi2_expected_sd``.
    chain_chi2_per_pixel
        Median residual ``chi^2 / N`` of each chain.
    chain_chi2_threshold
        The total-chi^2 gap above the best chain that marked a chain as in a worse mode.
    worse_chains
        Indices of the chains in a worse mode; exclude them (:attr:`kept_chains` are the others).
    chains_with_worse_draws
        Chain index -> number of its draws beyond the worse-mode threshold, for chains not in a
        worse mode by their median but with more than ``WORSE_DRAW_FRACTION`` of such draws.
    nonfinite
        Variable -> number of non-finite values (only variables that have some).
    source_edge_fraction
        Brightest significant border pixel of the posterior-mean source over its peak
        (:func:`source_edge_fraction`; ``None`` without source draws or on a grid under
        ``SOURCE_EDGE_MIN_SIDE`` pixels a side).
    """

    ok: bool
    warnings: tuple[str, ...]
    lens_parameters: tuple[str, ...] = ()
    rhat: dict = field(default_factory=dict)
    ess: dict = field(default_factory=dict)
    max_rhat: float | None = None
    min_ess: float | None = None
    nuisance_rhat: dict = field(default_factory=dict)
    num_chains: int = 0
    num_draws: int = 0
    num_divergent: int | None = None
    num_transitions: int | None = None
    num_pixels: int | None = None
    chi2_per_pixel: float | None = None
    chi2_expected_sd: float | None = None
    chi2_sigma: float | None = None
    chain_chi2_per_pixel: tuple[float, ...] = ()
    chain_chi2_threshold: float | None = None
    worse_chains: tuple[int, ...] = ()
    chains_with_worse_draws: dict = field(default_factory=dict)
    nonfinite: dict = field(default_factory=dict)
    source_edge_fraction: float | None = None

    @property
    def kept_chains(self) -> tuple[int, ...]:
        """The chain indices not in a worse mode: ``idata.sel(chain=list(report.kept_chains))`` is the
        posterior without the chains :attr:`worse_chains` names."""
        return tuple(k for k in range(self.num_chains) if k not in self.worse_chains)

    def __str__(self) -> str:
        lines = ["run diagnostics (blindlens.check_run)", "-" * 37]
        lines.append(f"chains {self.num_chains}, draws per chain {self.num_draws}")
        if self.lens_parameters:
            worst = max(self.rhat, key=lambda k: _nan_as(self.rhat[k], np.inf))
            least = min(self.ess, key=lambda k: _nan_as(self.ess[k], -np.inf))
            lines.append(
                f"max split R-hat {_fmt(self.max_rhat, 3)} ({worst}; want <= {RHAT_MAX}), "
                f"min ESS {_fmt(self.min_ess, 0)} ({least}; want >= {ESS_MIN:.0f})"
            )
        else:
            lines.append("no lens parameters in the posterior (fixed lens): R-hat and ESS not checked")
        if self.nuisance_rhat:
            rhats = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in self.nuisance_rhat.items())
            lines.append("nuisance split R-hat (not judged: chains may sit at different source grid placements; "
                         f"of the phase within a pixel): {rhats}")
        if self.num_divergent is not None:
            lines.append(f"divergent lens transitions: {self.num_divergent} of {self.num_transitions}")
        if self.chi2_per_pixel is not None:
            lines.append(
                f"residual chi^2/N (median over draws, N = {self.num_pixels}): {self.chi2_per_pixel:.4f}, "
                f"expected 1 +- {self.chi2_expected_sd:.4f} ({self.chi2_sigma:+.1f} sigma)"
            )
            if len(self.chain_chi2_per_pixel) > 1:
                per_chain = ", ".join(f"{v:.4f}" for v in self.chain_chi2_per_pixel)
                lines.append(f"per-chain median chi^2/N: {per_chain}")
        else:
            lines.append("no normalized residuals in posterior_predictive: fit and per-chain checks skipped")
        if self.source_edge_fraction is not None:
            lines.append(f"source at its grid's edge: {self.source_edge_fraction:.0%} of its peak "
                         f"(want <= {SOURCE_EDGE_FRACTION:.0%})")
        if self.nonfinite:
            lines.append("non-finite values: " + ", ".join(f"{k} {v}" for k, v in self.nonfinite.items()))
        if self.ok:
            lines.append("all checks passed")
        else:
            lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def source_edge_fraction(source: np.ndarray) -> float | None:
    """How bright the posterior-mean source is on its grid's border, as a fraction of its peak.

    Parameters
    ----------
    source
        Source draws ``(chain, draw, ny, nx)`` (surface brightness, image units).

    Returns
    -------
    The largest posterior mean over the border pixels (the outer ``max(1, min(ny, nx) // 32)``)
    whose mean exceeds its posterior sd, divided by the largest posterior mean anywhere; 0.0 when
    no border pixel is significant; ``None`` for a grid under ``SOURCE_EDGE_MIN_SIDE`` pixels a
    side or a posterior mean with no positive peak.
    """
    source = np.asarray(source)
    if source.ndim < 3 or min(source.shape[-2:]) < SOURCE_EDGE_MIN_SIDE:
        return None
    ny, nx = source.shape[-2:]
    flat = source.reshape(-1, ny, nx)
    mean, sd = flat.mean(axis=0, dtype=np.float64), flat.std(axis=0, dtype=np.float64)
    peak = float(np.max(mean))
    if not np.isfinite(peak) or peak <= 0:
        return None
    w = max(1, min(ny, nx) // 32)
    border = np.zeros((ny, nx), bool)
    border[:w], border[-w:], border[:, :w], border[:, -w:] = True, True, True, True
    significant = border & (mean > sd)
    return float(np.max(mean[significant]) / peak) if significant.any() else 0.0


def _nan_as(x: float, value: float) -> float:
    return value if np.isnan(x) else x


def _fmt(x, digits: int) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _nuisance_rhat(posterior, name: str) -> float:
    """Split R-hat of a nuisance site; for the source grid's placement, of its phase within a pixel.

    ``alpha_x, alpha_y ~ U(-p, p)`` span two periods of the grid: chains one pixel apart sit at
    the same placement, so R-hat is taken of ``cos`` and ``sin`` of ``2 pi alpha / p`` (the larger).
    """
    from ..inference.mixing_diagnostics import split_rhat_and_ess
    from ..inference.source_shift_model import SOURCE_SHIFT_SITES

    values = np.asarray(posterior[name].values, float)
    period = posterior.attrs.get("source_pixel_scale")
    if name not in SOURCE_SHIFT_SITES or period is None:
        return split_rhat_and_ess(values)[0]
    phase = 2 * np.pi * values / float(period)
    return max(split_rhat_and_ess(np.cos(phase))[0], split_rhat_and_ess(np.sin(phase))[0])


def _group(idata, name: str):
    """A group of an InferenceData / DataTree, or ``None``."""
    try:
        group = getattr(idata, name)
    except (AttributeError, KeyError):
        return None
    return group


def _has_var(group, name: str) -> bool:
    return group is not None and name in group.data_vars


def _unmasked_pixels(idata, observation, resid: np.ndarray) -> int:
    const = _group(idata, "constant_data")
    if _has_var(const, "mask"):
        return int(np.sum(np.asarray(const["mask"].values, bool)))
    if observation is not None:
        mask = getattr(observation, "mask", None)
        shape = np.shape(observation.image)
        return int(np.prod(shape)) if mask is None else int(np.sum(np.asarray(mask) > 0))
    return int(np.sum(np.isfinite(resid[0, 0])))  # masked pixels are NaN in the residual


def check_run(
    idata,
    observation=None,
    *,
    rhat_max: float = RHAT_MAX,
    ess_min: float = ESS_MIN,
    chi2_sigma: float = CHI2_SIGMA,
    chain_chi2_gap: float = CHAIN_CHI2_GAP,
    warn: bool = True,
) -> RunReport:
    """Check a finished run's InferenceData; see the module docs for what is checked.

    Parameters
    ----------
    idata
        A blindlens InferenceData (:func:`blindlens.to_inference_data`, ``blindlens sample``'s
        netCDF, ``arviz.from_numpyro`` of a :class:`~blindlens.BlindLensGibbs` run: the fit checks
        need ``posterior_predictive.normalized_residual``, which blindlens's converters add).
    observation
        Optional :class:`~blindlens.Observation`: its mask gives ``N`` when ``idata`` has no
        ``constant_data.mask``.
    rhat_max, ess_min, chi2_sigma, chain_chi2_gap
        Thresholds (defaults: 1.01, 100, 5 sigma, 25 chi^2 units).
    warn
        Also emit one :class:`BlindLensRunWarning` per problem.

    Returns
    -------
    :class:`RunReport`; ``print(report)`` for a readable summary, ``report.ok`` for the verdict,
    ``report.worse_chains`` for chains to exclude.
    """
    posterior = _group(idata, "posterior")
    if posterior is None:
        raise ValueError("check_run needs an InferenceData with a posterior group.")
    from .arviz_conversion import (  # the package's own readers
        lens_parameter_names,
        nuisance_parameter_names,
        residual_chi2,
    )

    problems: list[str] = []
    nuisance = [n for n in nuisance_parameter_names(idata) if n in posterior.data_vars]
    names = [n for n in lens_parameter_names(idata) if n in posterior.data_vars and n not in nuisance]
    sizes = dict(posterior.sizes)
    n_chain, n_draw = int(sizes.get("chain", 0)), int(sizes.get("draw", 0))

    # --- non-finite values anywhere in the posterior (and the model images) ---
    nonfinite = {}
    for name, var in posterior.data_vars.items():
        values = np.asarray(var.values)
        if np.issubdtype(values.dtype, np.number):
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                nonfinite[name] = bad
    pp = _group(idata, "posterior_predictive")
    if _has_var(pp, "model_image"):
        bad = int(np.size(pp["model_image"].values) - np.count_nonzero(np.isfinite(pp["model_image"].values)))
        if bad:
            nonfinite["model_image"] = bad
    for name, count in nonfinite.items():
        problems.append(
            f"{count} non-finite values in '{name}': the sampler blew up (e.g. too few diffusion steps); "
            "do not use this run."
        )

    # --- mixing of the lens parameters ---
    from ..inference.mixing_diagnostics import split_rhat_and_ess

    rhat, ess = {}, {}
    for name in names:
        r, e = split_rhat_and_ess(posterior[name].values)
        rhat[name], ess[name] = r, e
    nuisance_rhat = {name: _nuisance_rhat(posterior, name) for name in nuisance} if n_draw >= 4 else {}
    max_rhat = min_ess = None
    if names:
        finite_r = [v for v in rhat.values() if np.isfinite(v)]
        finite_e = [v for v in ess.values() if np.isfinite(v)]
        max_rhat = max(finite_r) if len(finite_r) == len(names) else float("nan")
        min_ess = min(finite_e) if len(finite_e) == len(names) else float("nan")
        if n_draw < 4:
            problems.append(f"only {n_draw} draws per chain: R-hat and ESS need at least 4; run longer.")
        elif not np.isfinite(max_rhat):
            undefined = [n for n in names if not np.isfinite(rhat[n])]
            problems.append(f"R-hat undefined for {undefined} (non-finite or constant draws: a stuck chain).")
        else:
            if max_rhat > rhat_max:
                worst = max(rhat, key=rhat.get)
                problems.append(
                    f"max split R-hat {max_rhat:.3f} ({worst}) > {rhat_max}: the chains have not mixed; run longer "
                    "(more --warmup/--draws) or more chains."
                )
            if min_ess < ess_min:
                least = min(ess, key=ess.get)
                problems.append(
                    f"min ESS {min_ess:.0f} ({least}) < {ess_min:.0f}: too few effective draws for reliable "
                    "means and intervals; run longer."
                )

    # --- divergences ---
    num_div = num_tr = None
    stats = _group(idata, "sample_stats")
    if _has_var(stats, "diverging"):
        div = np.asarray(stats["diverging"].values)
        num_div, num_tr = int(np.sum(div)), int(div.size)
        if num_div:
            problems.append(
                f"{num_div} of {num_tr} lens transitions diverged: the lens posterior is not explored reliably "
                "(run longer warm-up, or raise target_accept_prob)."
            )

    # --- goodness of fit and chains in a worse mode ---
    n_pix = chi2_med = chi2_sd = chi2_z = threshold = None
    chain_med: tuple[float, ...] = ()
    worse: tuple[int, ...] = ()
    worse_draws: dict = {}
    if _has_var(pp, "normalized_residual"):
        resid = np.asarray(pp["normalized_residual"].values)
        n_pix = _unmasked_pixels(idata, observation, resid)
        per_pixel = np.asarray(residual_chi2(idata), float)  # the package's per-draw chi^2/N, (chain, draw)
        # a draw with a non-finite residual on an unmasked pixel does not fit at all
        finite_pixels = np.sum(np.isfinite(resid), axis=(-2, -1))
        per_pixel = np.where((finite_pixels >= n_pix) & np.isfinite(per_pixel), per_pixel, np.inf)
        chi2_med = float(np.median(per_pixel))
        chi2_sd = float(np.sqrt(2.0 / max(n_pix, 1)))
        chi2_z = (chi2_med - 1.0) / chi2_sd if np.isfinite(chi2_med) else float("inf")
        if not np.isfinite(chi2_med):
            problems.append("residual chi^2 is not finite for most draws: the model images blew up.")
        elif abs(chi2_z) > chi2_sigma:
            hint = (
                "the model does not fit the data (a wrong lens mode, a source the prior cannot represent, "
                "or a misspecified PSF/noise)"
                if chi2_z > 0
                else "the residuals are smaller than the stated noise (noise overestimated, or overfitting)"
            )
            problems.append(
                f"residual chi^2/N {chi2_med:.4f} is {chi2_z:+.1f} sigma from 1 (expected 1 +- {chi2_sd:.4f} for "
                f"N = {n_pix}): {hint}."
            )
        if per_pixel.shape[0] > 1:
            total = per_pixel * n_pix
            chain_med = tuple(float(np.median(c)) for c in per_pixel)
            medians = np.median(total, axis=1)
            finite = np.isfinite(medians)
            best = int(np.argmin(np.where(finite, medians, np.inf)))
            # within-chain spread of chi^2 (robust: MAD), pooled as the median over chains
            spreads = [1.4826 * np.median(np.abs(c[np.isfinite(c)] - np.median(c[np.isfinite(c)])))
                       for c in total if np.any(np.isfinite(c))]
            spread = float(np.median(spreads)) if spreads else 0.0
            threshold = float(max(chain_chi2_gap, CHAIN_CHI2_SIGMA * spread))
            worse = tuple(int(k) for k in range(len(medians)) if not finite[k] or medians[k] - medians[best] > threshold)
            kept = [k for k in range(len(medians)) if k not in worse]
            for k in worse:
                problems.append(
                    f"chain {k} is in a worse mode (chi^2/N {chain_med[k]:.4f} vs {chain_med[best]:.4f} of chain "
                    f"{best}; total chi^2 worse by {medians[k] - medians[best]:.0f} > {threshold:.0f}): exclude it "
                    f"(idata.sel(chain={kept}) keeps the others: report.kept_chains) or rerun; never average it "
                    "into the posterior."
                )
            for k in range(len(medians)):
                bad = np.flatnonzero(~(total[k] - medians[best] <= threshold))  # NaN/inf count as bad
                if k not in worse and bad.size > WORSE_DRAW_FRACTION * total.shape[1]:
                    worse_draws[k] = int(bad.size)
                    problems.append(
                        f"chain {k} left the fit for {bad.size} of {total.shape[1]} draws (first at draw {bad[0]}; "
                        f"chi^2/N up to {np.nanmax(np.where(np.isfinite(per_pixel[k]), per_pixel[k], np.nan)):.4f} "
                        f"vs {chain_med[best]:.4f}): drop those draws or rerun; never average them in."
                    )

    # --- a source whose light runs past its grid ---
    edge = source_edge_fraction(posterior["source"].values) if "source" in posterior.data_vars else None
    if edge is not None and edge > SOURCE_EDGE_FRACTION:
        ny, nx = posterior["source"].shape[-2:]
        scale = posterior.attrs.get("source_pixel_scale")
        fov = f'{nx * float(scale):.2g}" x {ny * float(scale):.2g}"' if scale is not None else f"{nx} x {ny}-pixel"
        problems.append(
            f"the source reaches its grid's edge (a border pixel at {edge:.0%} of its peak > "
            f"{SOURCE_EDGE_FRACTION:.0%}): light beyond the {fov} field is not modelled, which costs fit and can "
            f"bias the lens; look at the source mean and widen the grid (--source-size {-(-3 * nx // 16) * 8}, or "
            "auto) or recentre it (--source-center X Y)."
        )

    report = RunReport(
        ok=not problems,
        warnings=tuple(problems),
        lens_parameters=tuple(names),
        rhat=rhat,
        ess=ess,
        max_rhat=max_rhat,
        min_ess=min_ess,
        nuisance_rhat=nuisance_rhat,
        num_chains=n_chain,
        num_draws=n_draw,
        num_divergent=num_div,
        num_transitions=num_tr,
        num_pixels=n_pix,
        chi2_per_pixel=chi2_med,
        chi2_expected_sd=chi2_sd,
        chi2_sigma=chi2_z,
        chain_chi2_per_pixel=chain_med,
        chain_chi2_threshold=threshold,
        worse_chains=worse,
        chains_with_worse_draws=worse_draws,
        nonfinite=nonfinite,
        source_edge_fraction=edge,
    )
    if warn:
        for line in problems:
            warnings.warn(line, BlindLensRunWarning, stacklevel=2)
    return report
