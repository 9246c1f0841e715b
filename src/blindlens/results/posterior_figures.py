"""Figures of a joint lens + source posterior: critical curves and caustics, source vs truth, lens corner plot.

All three read a blindlens InferenceData (:func:`blindlens.arviz_conversion.to_inference_data`)
through ``idata.posterior[name].values``, ``idata.posterior.attrs`` and the arcsec coordinates
(``image_x/image_y``, ``source_x/source_y``), which ArviZ 0.23 (``InferenceData``) and ArviZ >= 1
(``xarray.DataTree``) both provide; nothing here imports ArviZ or xarray. Matplotlib is imported
lazily inside the plotting functions.

* :func:`plot_critical_curves`: the data with the critical curves of posterior lens draws (thin)
  and of the posterior-median lens (bold), beside the posterior-mean source with the caustics;
* :func:`plot_source_comparison`: the true source (at its own pixel scale) beside the
  posterior-mean source on the same colour scale, and the posterior standard deviation;
* :func:`plot_lens_pair`: corner plot of the lens parameters, marginal histograms titled
  ``median +hi -lo`` (16-84%), and filled contours enclosing 39.3% and 86.5% of the draws (the
  1- and 2-sigma regions of a 2-D Gaussian, ``1 - exp(-k^2 / 2)``), see :func:`contour_levels`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import numpy as np

from ..physics.grid import PixelGrid

__all__ = [
    "SIGMA_MASSES",
    "contour_levels",
    "posterior_lens_curves",
    "plot_critical_curves",
    "plot_source_comparison",
    "plot_lens_pair",
]

SIGMA_MASSES = (1.0 - np.exp(-0.5), 1.0 - np.exp(-2.0))
"""Probability inside the 1- and 2-sigma contours of a 2-D Gaussian: 0.393 and 0.865."""

MIN_DRAWS_FOR_CONTOURS = 50
"""Below this many draws the corner plot's 2-D panels show the draws as points, not contours."""

SOURCE_SITE = "source"  # blindlens.numpyro_model.SOURCE_SITE (not imported: that pulls in NumPyro)


# --- reading the container ----------------------------------------------------------------------


def lens_parameter_names(idata) -> list[str]:
    """Lens-parameter variable names of a blindlens InferenceData (all scalar posterior variables)."""
    stored = idata.posterior.attrs.get("blindlens_lens_sites")
    if stored:
        return list(json.loads(stored))
    return [k for k, v in idata.posterior.data_vars.items() if v.ndim == 2]


def nuisance_parameter_names(idata) -> list[str]:
    """The lens-model sites stored as nuisance (e.g. the source grid's placement ``alpha_x, alpha_y``).

    Read from the ``blindlens_nuisance_sites`` attribute :func:`~blindlens.arviz_conversion.to_inference_data`
    writes (:func:`~blindlens.numpyro_model.nuisance_site_names`); ``[]`` when absent.
    """
    stored = idata.posterior.attrs.get("blindlens_nuisance_sites")
    return list(json.loads(stored)) if stored else []


def stored_truth(idata) -> dict[str, float] | None:
    """The truth stored by :func:`~blindlens.arviz_conversion.to_inference_data` (``None`` if none)."""
    raw = idata.posterior.attrs.get("truth")
    return None if not raw else {k: float(v) for k, v in json.loads(raw).items()}


def _flat_draws(idata, name: str) -> np.ndarray:
    """``(chain * draw, ...)`` float64 array of a posterior variable."""
    v = np.asarray(idata.posterior[name].values, float)
    return v.reshape(-1, *v.shape[2:])


def _grid_from_coords(group, prefix: str, pixel_scale: float | None = None) -> PixelGrid:
    """The :class:`PixelGrid` whose pixel centres are the ``{prefix}_x/_y`` coordinates (arcsec)."""
    x = np.asarray(group[f"{prefix}_x"].values, float)
    y = np.asarray(group[f"{prefix}_y"].values, float)
    if pixel_scale is None:
        pixel_scale = float(x[1] - x[0]) if x.size > 1 else float(y[1] - y[0]) if y.size > 1 else 1.0
    return PixelGrid((y.size, x.size), float(pixel_scale), (float(x.mean()), float(y.mean())))


def _image_grid(idata, observation=None) -> PixelGrid:
    if observation is not None and getattr(observation, "image_grid", None) is not None:
        return observation.image_grid
    scale = idata.posterior.attrs.get("image_pixel_scale")
    pix2angle = idata.posterior.attrs.get("image_pix2angle")
    for group in ("observed_data", "posterior_predictive"):
        if group in idata:
            if pix2angle:  # a sky-frame grid: its coordinates are offsets along the pixel axes
                shape = (getattr(idata, group)["image_y"].size, getattr(idata, group)["image_x"].size)
                center = json.loads(idata.posterior.attrs.get("image_center", "[0, 0]"))
                return PixelGrid(shape, None, tuple(center), json.loads(pix2angle))
            return _grid_from_coords(getattr(idata, group), "image", None if scale is None else float(scale))
    raise ValueError("the InferenceData has no image coordinates (observed_data or posterior_predictive); "
                     "pass the observation.")


def _source_grid(idata) -> PixelGrid:
    scale = idata.posterior.attrs.get("source_pixel_scale")
    return _grid_from_coords(idata.posterior, "source", None if scale is None else float(scale))


def source_draws(idata) -> np.ndarray:
    """``(chain * draw, sy, sx)`` source draws in the source plane's frame: as stored, or moved by
    each draw's sampled grid placement (:mod:`blindlens.results.source_frame`)."""
    from .source_frame import placement_offsets, to_source_frame

    return to_source_frame(_flat_draws(idata, SOURCE_SITE), placement_offsets(idata), _source_grid(idata))


def _image_to_show(idata, observation=None) -> tuple[np.ndarray, str]:
    if observation is not None:
        return np.asarray(observation.image, float), "data"
    if "observed_data" in idata:
        return np.asarray(idata.observed_data["image"].values, float), "data"
    if "posterior_predictive" in idata:
        model = np.asarray(idata.posterior_predictive["model_image"].values, float)
        return model.mean(axis=(0, 1)), "posterior-mean model"
    raise ValueError("the InferenceData has neither observed_data nor posterior_predictive; pass the observation.")


def _default_lens_model(names) -> Callable:
    """The shipped lens model whose sites are ``names`` (what ``blindlens sample --lens-model`` offers)."""
    from ..inference import numpyro_model

    for model in (numpyro_model.sie_shear, numpyro_model.epl_shear, numpyro_model.epl_shear_multipole):
        if list(numpyro_model.lens_site_names(model)) == list(names):
            return model
    raise ValueError(
        f"no shipped lens model has the parameters {list(names)}; pass lens_model= (the NumPyro lens model "
        "the run used)."
    )


def _lens(lens_model: Callable, values: Mapping[str, float]):
    import jax.numpy as jnp

    from ..inference.numpyro_model import lens_from_values

    return lens_from_values(lens_model, {k: jnp.asarray(float(v)) for k, v in values.items()})


def _truth_lens(truth, names, lens_model, zero=()):
    """The true lens: ``truth["lens"]`` (a lens Module, as ``load_truth`` returns) or all lens sites' values
    (the sites in ``zero``, a sampled grid placement, at 0: the truth lives in the source plane's frame)."""
    if truth is None:
        return None
    if truth.get("lens") is not None:
        return truth["lens"]
    if all(n in truth for n in names):
        return _lens(lens_model, {**{n: truth[n] for n in names}, **dict.fromkeys(zero, 0.0)})
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label_axes(ax, title):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x [arcsec]")
    ax.set_ylabel("y [arcsec]")


# --- critical curves and caustics ---------------------------------------------------------------


def posterior_lens_curves(
    idata,
    num_draws: int = 20,
    *,
    lens_model: Callable | None = None,
    grid: PixelGrid | None = None,
    supersampling: int = 4,
    truth: Mapping | None = None,
) -> dict:
    """Critical curves and caustics of posterior lens draws, the posterior-median lens and the truth.

    Returns ``{"index": flat draw indices, "draws": [(critical, caustics), ...], "median":
    (critical, caustics), "truth": (critical, caustics) or None}``, each a pair of lists of
    ``(n, 2)`` ``(x, y)`` arcsec polylines from
    :func:`blindlens.lens_models.critical_curves_and_caustics` on ``grid`` (default: the image
    grid of the InferenceData). The ``num_draws`` draws are spread evenly over the flattened
    ``(chain, draw)`` axis; the median lens takes the median of each parameter. Arguments as in
    :func:`plot_critical_curves`.
    """
    from ..inference.numpyro_model import nuisance_site_names
    from ..physics.lens_models import critical_curves_and_caustics
    from .source_frame import placement_offsets

    names = lens_parameter_names(idata)
    if not names:
        raise ValueError("the InferenceData has no lens parameters (a fixed-lens run?): no critical curves to draw.")
    nuisance = nuisance_parameter_names(idata)
    if lens_model is None:  # the shipped mass model: lenses without the placement, caustics in the source frame
        names = [n for n in names if n not in nuisance]
        lens_model = _default_lens_model(names)
    # a model with the placement puts the caustics on its grid: moved by +alpha into the source frame
    offsets = placement_offsets(idata) if set(nuisance) & set(nuisance_site_names(lens_model)) else None
    grid = _image_grid(idata) if grid is None else grid
    draws = {n: _flat_draws(idata, n) for n in names}
    n_total = draws[names[0]].shape[0]
    pick = np.unique(np.linspace(0, n_total - 1, max(min(int(num_draws), n_total), 0)).round().astype(int))

    def curves(lens, offset=None):
        critical, caustics = critical_curves_and_caustics(lens, grid, supersampling)
        if offset is not None:
            caustics = [line + np.asarray(offset, float) for line in caustics]
        return critical, caustics

    def offset(i):
        return None if offsets is None else offsets[i]

    true_lens = _truth_lens(truth, [n for n in names if n not in nuisance], lens_model,
                            zero=[n for n in names if n in nuisance])
    return {
        "index": pick,
        "draws": [curves(_lens(lens_model, {n: draws[n][i] for n in names}), offset(i)) for i in pick],
        "median": curves(_lens(lens_model, {n: np.median(draws[n]) for n in names}),
                         None if offsets is None else np.median(offsets, axis=0)),
        "truth": curves(true_lens) if true_lens is not None else None,
    }


def plot_critical_curves(
    idata,
    path,
    observation=None,
    truth: Mapping | None = None,
    num_draws: int = 20,
    *,
    lens_model: Callable | None = None,
    supersampling: int = 4,
):
    """Critical curves on the data and caustics on the posterior-mean source, from posterior lens draws.

    Left: the data (``observation``, else ``observed_data``, else the posterior-mean model image)
    with the critical curves of ``num_draws`` lens draws spread evenly over all chains (thin,
    semi-transparent) and of the posterior-median lens (bold; the median of each parameter).
    Right: the posterior-mean source with the corresponding caustics. Curves come from
    :func:`blindlens.lens_models.critical_curves_and_caustics` on the image grid supersampled
    ``supersampling`` times.

    Parameters
    ----------
    idata
        A blindlens InferenceData of a joint run (lens parameters in ``posterior``).
    path
        Output image file.
    observation
        Optional :class:`~blindlens.observation.Observation` (its image and grid are shown).
    truth
        Optional truth, drawn dashed: a mapping with ``"lens"`` (a lens Module, e.g.
        :func:`blindlens.simulation.load_truth`'s dict) or with a value for every lens parameter.
    num_draws
        Posterior draws whose curves are drawn.
    lens_model
        The NumPyro lens model of the run (to rebuild lenses from the draws); default: the shipped
        model (``sie_shear``, ``epl_shear``, ``epl_shear_multipole``) with the stored parameters.
    supersampling
        Supersampling of the image grid on which ``det A = 0`` is contoured.

    Returns
    -------
    ``path``.
    """
    plt = _pyplot()
    image_grid = _image_grid(idata, observation)
    curves = posterior_lens_curves(idata, num_draws, lens_model=lens_model, grid=image_grid,
                                   supersampling=supersampling, truth=truth)
    sampled, median, true = curves["draws"], curves["median"], curves["truth"]
    image, image_title = _image_to_show(idata, observation)
    source_grid = _source_grid(idata)
    source_mean = source_draws(idata).mean(axis=0)

    fig, (ax_i, ax_s) = plt.subplots(1, 2, figsize=(10.5, 4.8))
    panels = ((ax_i, image, image_grid, 0, f"{image_title} and critical curves", "cyan"),
              (ax_s, source_mean, source_grid, 1, "posterior-mean source and caustics", "lime"))
    for ax, img, grid, k, title, colour in panels:
        im = grid.show(ax, img, cmap="magma")  # pcolormesh for a rotated sky-frame image grid
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        for lines in sampled:
            for line in lines[k]:
                ax.plot(line[:, 0], line[:, 1], color=colour, lw=0.6, alpha=0.35)
        for j, line in enumerate(median[k]):
            ax.plot(line[:, 0], line[:, 1], color=colour, lw=2.0, label="posterior median" if j == 0 else None)
        if true is not None:
            for j, line in enumerate(true[k]):
                ax.plot(line[:, 0], line[:, 1], color="white", lw=1.4, ls="--", label="truth" if j == 0 else None)
        x0, x1, y0, y1 = grid.extent if grid.is_axis_aligned else grid.bounds
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        _label_axes(ax, title)
    ax_i.plot([], [], color="cyan", lw=0.6, alpha=0.6, label=f"{len(sampled)} posterior draws")
    ax_i.legend(loc="upper right", fontsize=7, framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- source vs truth ----------------------------------------------------------------------------


def plot_source_comparison(idata, path, true_source, true_pixel_scale: float, true_center=(0.0, 0.0)):
    """The true source beside the posterior-mean source (same colour scale: the truth's range), and the std.

    The true source is drawn at its own pixel scale (``true_pixel_scale`` arcsec, centred on
    ``true_center``), the posterior on its source grid; all panels share arcsec axes (the union
    of both extents). Sources are surface brightness, so the colour scales are comparable across
    pixel scales. Returns ``path``.
    """
    plt = _pyplot()
    true_source = np.asarray(true_source, float)
    if true_source.ndim != 2:
        raise ValueError(f"the true source must be a 2-D array, got shape {true_source.shape}.")
    true_grid = PixelGrid(true_source.shape, float(true_pixel_scale), (float(true_center[0]), float(true_center[1])))
    src = source_draws(idata)
    mean, std = src.mean(axis=0), src.std(axis=0)
    grid = _source_grid(idata)
    # the true source's range: a posterior mean that over- or undershoots it shows as saturated
    vmin, vmax = float(np.nanmin(true_source)), float(np.nanmax(true_source))
    if not vmax > vmin:
        vmin, vmax = float(min(vmin, np.nanmin(mean))), float(max(vmax, np.nanmax(mean)))
    (a0, a1, a2, a3), (b0, b1, b2, b3) = true_grid.extent, grid.extent
    limits = (min(a0, b0), max(a1, b1), min(a2, b2), max(a3, b3))

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    panels = (
        (axes[0], true_source, true_grid, f"true source ({true_pixel_scale:g}\"/pixel)", dict(vmin=vmin, vmax=vmax)),
        (axes[1], mean, grid, f"posterior-mean source ({grid.pixel_scale:g}\"/pixel)", dict(vmin=vmin, vmax=vmax)),
        (axes[2], std, grid, "posterior std", dict(cmap="viridis", vmin=0.0)),
    )
    for ax, img, g, title, kw in panels:
        im = ax.imshow(img, origin="lower", extent=g.extent, **{"cmap": "magma", **kw})
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[2], limits[3])
        _label_axes(ax, title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- corner plot --------------------------------------------------------------------------------


def contour_levels(density, masses=SIGMA_MASSES) -> np.ndarray:
    """Density thresholds of the highest-density regions holding ``masses`` of a 2-D histogram.

    For each mass ``m`` the threshold ``t`` is the largest value such that the bins with
    ``density >= t`` hold at least the fraction ``m`` of the total (bins are added from the
    densest down, so the region is the smallest set of bins that reaches ``m``). With the
    default :data:`SIGMA_MASSES` the regions are the 2-D 1- and 2-sigma regions (39.3%, 86.5%).

    Parameters
    ----------
    density
        Non-negative array of bin counts or densities (equal-area bins).
    masses
        Fractions in ``(0, 1]``.

    Returns
    -------
    Array of thresholds, one per mass (decreasing when the masses increase).
    """
    h = np.asarray(density, float).ravel()
    if h.size == 0 or not np.all(np.isfinite(h)) or np.any(h < 0) or h.sum() <= 0:
        raise ValueError("contour_levels needs a non-empty, finite, non-negative histogram with positive total.")
    masses = np.atleast_1d(np.asarray(masses, float))
    if np.any(masses <= 0) or np.any(masses > 1):
        raise ValueError(f"masses must lie in (0, 1], got {masses}.")
    order = np.sort(h)[::-1]
    cumulative = np.cumsum(order) / order.sum()
    index = np.minimum(np.searchsorted(cumulative, masses * (1 - 1e-12)), order.size - 1)
    return order[index]


def _smooth(h: np.ndarray, passes: int) -> np.ndarray:
    """``passes`` separable [1, 2, 1] / 4 passes (a binomial kernel; zero beyond the edges)."""
    kernel = np.array([0.25, 0.5, 0.25])
    for _ in range(passes):
        h = np.apply_along_axis(np.convolve, 0, h, kernel, mode="same")
        h = np.apply_along_axis(np.convolve, 1, h, kernel, mode="same")
    return h


def _quantile_title(name: str, lo: float, med: float, hi: float) -> str:
    """``name = median +(hi - median) -(median - lo)`` with two significant digits of the smaller error."""
    err = min(hi - med, med - lo)
    decimals = int(np.clip(1 - np.floor(np.log10(err)), 0, 8)) if err > 0 and np.isfinite(err) else 3
    return f"{name} = {med:.{decimals}f} +{hi - med:.{decimals}f} -{med - lo:.{decimals}f}"


def _padded_range(v: np.ndarray, *extra: float) -> tuple[float, float]:
    lo, hi = float(min(np.min(v), *extra, np.inf)), float(max(np.max(v), *extra, -np.inf))
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(lo) * 1e-3, 1e-6)
    return lo - pad, hi + pad


def _contour_panel(ax, x, y, bins, smooth):
    """Filled 1- and 2-sigma regions of the draws ``(x, y)``; ``False`` if they cannot be drawn."""
    h, xe, ye = np.histogram2d(x, y, bins=bins, range=(_padded_range(x), _padded_range(y)))
    h = _smooth(h, smooth)
    t1, t2 = contour_levels(h, SIGMA_MASSES)
    top = float(h.max())
    if not (0 < t2 < t1 < top):  # degenerate (e.g. all draws in a few bins)
        return False
    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
    ax.plot(x, y, ".", ms=1.5, color="0.55", alpha=0.35, zorder=0, rasterized=True)
    ax.contourf(xc, yc, h.T, levels=[t2, t1, top * (1 + 1e-9)], colors=["#9ecae1", "#2171b5"], alpha=0.85, zorder=1)
    ax.contour(xc, yc, h.T, levels=[t2, t1], colors=["#08519c"], linewidths=0.8, zorder=2)
    return True


def plot_lens_pair(idata, path, truth: Mapping[str, float] | None = None, *, bins: int | None = None, smooth: int = 1):
    """Corner plot of the lens parameters with the truth overlaid (if known). Returns ``path``.

    Diagonal: marginal histograms titled ``median +hi -lo`` (the 16-84% interval). Below it:
    filled contours of the regions holding 39.3% and 86.5% of the draws (2-D 1- and 2-sigma,
    :func:`contour_levels` on a 2-D histogram smoothed by ``smooth`` binomial passes) over the
    draws as faint points; with fewer than :data:`MIN_DRAWS_FOR_CONTOURS` draws, the draws as
    points. The truth (``truth``, else the one stored in the InferenceData) is drawn in red.
    Drawn with Matplotlib from the stored draws, so it is the same with every ArviZ version.
    """
    plt = _pyplot()
    names = lens_parameter_names(idata)
    truth = dict(truth) if truth is not None else (stored_truth(idata) or {})
    ref = {k: float(v) for k, v in truth.items() if k in names and np.isscalar(v)}
    draws = {n: _flat_draws(idata, n) for n in names}
    n_draws = draws[names[0]].size if names else 0
    bins = bins if bins is not None else int(np.clip(np.sqrt(n_draws) / 1.5, 10, 30))
    limits = {n: _padded_range(draws[n], *([ref[n]] if n in ref else [])) for n in names}
    k = len(names)
    contoured = 0
    fig, axes = plt.subplots(k, k, figsize=(2.2 * k + 1, 2.2 * k + 1), squeeze=False)
    for i, ni in enumerate(names):
        for j, nj in enumerate(names):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                v = draws[ni]
                lo, med, hi = np.quantile(v, [0.16, 0.5, 0.84])
                ax.hist(v, bins=min(30, max(5, v.size // 5)), color="#6baed6", histtype="stepfilled", alpha=0.8)
                ax.hist(v, bins=min(30, max(5, v.size // 5)), color="#08519c", histtype="step")
                for q in (lo, hi):
                    ax.axvline(q, color="0.3", ls=":", lw=0.9)
                ax.axvline(med, color="0.2", lw=1.0)
                ax.set_title(_quantile_title(ni, lo, med, hi), fontsize=8)
                ax.set_yticks([])
                if ni in ref:
                    ax.axvline(ref[ni], color="C3", lw=1.3)
            else:
                x, y = draws[nj], draws[ni]
                if n_draws >= MIN_DRAWS_FOR_CONTOURS and _contour_panel(ax, x, y, bins, smooth):
                    contoured += 1
                else:
                    ax.plot(x, y, "o", ms=3, color="#2171b5", alpha=0.6, mew=0)
                if nj in ref:
                    ax.axvline(ref[nj], color="C3", lw=1.0)
                if ni in ref:
                    ax.axhline(ref[ni], color="C3", lw=1.0)
                if nj in ref and ni in ref:
                    ax.plot(ref[nj], ref[ni], "s", color="C3", ms=4)
            if i == k - 1:
                ax.set_xlabel(nj)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(ni)
            elif i != j:
                ax.set_yticklabels([])
            ax.set_xlim(*limits[nj])
            if i != j:
                ax.set_ylim(*limits[ni])
            ax.tick_params(labelsize=7)
            if i == k - 1:
                for label in ax.get_xticklabels():
                    label.set_rotation(45)
    if contoured or k > 1:
        note = ("filled: 39.3% and 86.5% of the draws (2-D 1 and 2 sigma)" if contoured else
                f"{n_draws} draws (contours from {MIN_DRAWS_FOR_CONTOURS} draws)")
        fig.text(0.98, 0.98, f"{note}; titles: median and 16-84%", ha="right", va="top", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
