"""How a run sets up its source model from the data: which prior, and where its grid sits.

* ``--prior auto`` (the default): the shipped prior whose source pixels are nearest the
  data's (:func:`~blindlens.score_prior.choose_shipped_prior`); :func:`resolve_prior_spec` turns the spec
  into a shipped name for one observation, :func:`load_source_prior` loads a resolved spec.
* ``--source-center auto`` (the default): :func:`source_grid_center` runs the Sérsic + shapelet
  lens pre-fit and centres the source grid on its source; the chains' starts reuse that pre-fit.
  A resumed run takes the centre from its checkpoint instead (:func:`checkpointed_center`), so it
  never re-runs the pre-fit nor resumes draws on a moved grid.
* ``--source-size auto``: :func:`fitted_source_size` widens the grid (at the prior's pixel scale) when
  the data's light, traced back through the pre-fit's lens, reaches past the prior's stamp; the
  checkpoint records the size like the centre.

Used by :mod:`blindlens.pipeline` (``blindlens sample``), :mod:`blindlens.fixed_lens`,
:mod:`blindlens.batch_pipeline` and :mod:`blindlens.catalogue`. Heavy libraries are imported inside
the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["GRID_CENTER", "GRID_SIZE", "AUTO_SIZE_STEPS", "PlacedGrid", "is_prior_file", "resolve_prior_spec",
           "load_source_prior", "configure_prior", "sized_prior", "source_grid_center", "grid_size_for_reach",
           "fitted_source_size", "checkpointed_center"]


def is_prior_file(spec) -> bool:
    """Whether a prior spec names a file (not ``"auto"``, a shipped prior's name or a prior object)."""
    from .prior.score_prior import AUTO_PRIOR, SHIPPED_PRIORS

    return isinstance(spec, (str, Path)) and str(spec) not in SHIPPED_PRIORS and str(spec) != AUTO_PRIOR


def resolve_prior_spec(spec, observation):
    """``spec`` with ``"auto"`` replaced by the shipped prior nearest ``observation``'s pixel scale.

    See :func:`~blindlens.score_prior.choose_shipped_prior`; other specs are returned unchanged.
    """
    from .prior.score_prior import AUTO_PRIOR, choose_shipped_prior

    if isinstance(spec, str) and spec == AUTO_PRIOR:
        return choose_shipped_prior(float(observation.pixel_scale))
    return spec


def load_source_prior(spec):
    """A source prior from a spec: ``"default"``, ``"highres"``, a prior file, or a prior object (returned).

    ``"auto"`` depends on the data: resolve it first with :func:`resolve_prior_spec`.
    """
    if not isinstance(spec, (str, Path)):
        return spec
    from .prior.score_prior import AUTO_PRIOR, SHIPPED_PRIORS, ScorePrior

    if str(spec) == AUTO_PRIOR:
        raise ValueError("the prior 'auto' is chosen by the data's pixel scale: resolve it with "
                         "resolve_prior_spec(spec, observation) before loading.")
    return ScorePrior.shipped(spec) if spec in SHIPPED_PRIORS else ScorePrior.load(spec)


def configure_prior(prior, options):
    """``prior`` with the run's ``--flux-scale`` and ``--source-size`` applied (each when given).

    ``--source-size N`` puts the prior on an ``N`` x ``N`` source grid at its own pixel scale (a
    wider field for a source that runs past the prior's stamp; ``ScorePrior.with_grid_size``).
    A prior without a grid to resize (a Gaussian prior object) is refused with a one-line error.
    """
    if getattr(options, "flux_scale", None) is not None:
        prior = prior.with_flux_scale(options.flux_scale)
    size = getattr(options, "source_size", None)
    return prior if size is None or size == "auto" else sized_prior(prior, size)


def sized_prior(prior, size: int):
    """``prior`` on a ``size`` x ``size`` source grid (itself when that is its grid already).

    A prior without a grid to resize (a Gaussian prior object) is refused with a one-line error.
    """
    if int(size) == prior.shape[0]:
        return prior
    if not hasattr(prior, "with_grid_size"):
        raise ValueError(f"--source-size needs a score prior (a network prior file or a shipped name); "
                         f"this {type(prior).__name__} has a fixed {prior.shape[0]}x{prior.shape[1]} grid.")
    return prior.with_grid_size(size)


_PREFIT_STREAM = 0x50F1
"""PRNG stream (folded into the run's seed) of the lens pre-fit that places the source grid."""


def source_grid_center(options, lens_model, observation, *, prefit_config=None, verbose: bool = False):
    """The source grid's centre [arcsec] and the lens pre-fit the chains start from.

    With ``options.source_center == "auto"`` and the Sérsic pre-fit on, the pre-fit is run here
    (:func:`~blindlens.parametric_prefit.prefit_lens_with_sersic`, seeded by ``options.seed``) and
    the grid is centred on its best run's Sérsic centre: a source off the field's centre then
    keeps the whole prior field (a (0, 0)-centred grid costs chi^2 for an off-centre source,
    issue 14). The pre-fit is returned so the kernel's chain starts reuse it rather than fit
    again. Without a pre-fit ``"auto"`` is the origin; an explicit ``(x, y)`` is kept.

    Parameters
    ----------
    options
        The run's :class:`SampleOptions` (``source_center``, ``lens_prefit``, ``seed``).
    lens_model
        The NumPyro lens model.
    observation
        The :class:`~blindlens.observation.Observation`.
    prefit_config
        :class:`~blindlens.parametric_prefit.SersicPrefitConfig` (default: its defaults).
    verbose
        Print the chosen centre.

    Returns
    -------
    center, prefit
        ``(x, y)`` [arcsec] and the :class:`~blindlens.parametric_prefit.SersicPrefitResult`
        (already run), the config (to run in the chain starts) or ``None`` (no pre-fit).
    """
    import math
    import time

    import jax

    from .inference.parametric_prefit import SersicPrefitConfig, prefit_lens_with_sersic

    prefit = None
    if options.lens_prefit == "sersic":
        prefit = SersicPrefitConfig() if prefit_config is None else prefit_config
    if not isinstance(options.source_center, str):
        return tuple(options.source_center), prefit
    if prefit is None:
        return (0.0, 0.0), None
    if verbose:
        robust = prefit.num_robust
        print(f"lens pre-fit: {prefit.num_starts} Sérsic + shapelet fits from prior draws"
              f"{f' ({robust} on a loss that tolerates compact knots)' if robust else ''}, to place the source "
              "grid (--source-center auto) ...", flush=True)
    t0 = time.time()
    key = jax.random.fold_in(jax.random.key(options.seed), _PREFIT_STREAM)
    found = prefit_lens_with_sersic(key, lens_model, observation, prefit)
    # rounded to 0.1 mas: the value the checkpoint records and a resumed run reads back
    center = (round(float(found.source["center_x"][0]), 4), round(float(found.source["center_y"][0]), 4))
    if not all(math.isfinite(c) for c in center):
        center = (0.0, 0.0)
    if verbose:
        print(f"source grid centred on the lens pre-fit's source at ({center[0]:+.3f}, {center[1]:+.3f})\" "
              f"(pre-fit {time.time() - t0:.0f} s)", flush=True)
    return center, found


AUTO_SIZE_STEPS = (1.5, 2.0)
"""The wider grids ``--source-size auto`` may choose, as multiples of the prior's stamp side (96 and 128
pixels for the 64-pixel ``highres`` prior): few distinct shapes, so few compilations in a catalogue."""
_AUTO_SIZE_MARGIN = 4
"""Source pixels kept between the traced light's reach and the grid's edge by ``--source-size auto``."""


def grid_size_for_reach(prior, reach: float, *, verbose: bool = False) -> int:
    """The source grid side [pixels, at ``prior``'s pixel scale] that holds light reaching ``reach``
    [arcsec] from the grid's centre with a 4-pixel margin: the prior's own side when it does, else
    the first of :data:`AUTO_SIZE_STEPS` times it that does (the largest if none does, with a note).
    A prior of fixed grid (a Gaussian prior object) keeps its own."""
    import math

    own, scale = int(prior.shape[0]), float(prior.pixel_scale)
    need = 2.0 * (reach / scale + _AUTO_SIZE_MARGIN)  # pixels across
    size = own
    if need > own and hasattr(prior, "with_grid_size"):
        multiple = getattr(prior, "grid_multiple", 1)
        steps = [int(math.ceil(own * f / multiple)) * multiple for f in AUTO_SIZE_STEPS]
        size = next((n for n in steps if n >= need), steps[-1])
    if verbose:
        field = f"{own * scale:.2f}\""
        if size == own:
            print(f"source grid {own}x{own} ({field}): the lensed light traced back through the lens reaches "
                  f"{reach:.2f}\" from its centre (--source-size auto)", flush=True)
        else:
            print(f"source grid widened to {size}x{size} ({size * scale:.2f}\" at {scale:g}\"/pixel): the lensed "
                  f"light traced back through the lens reaches {reach:.2f}\" from its centre, past the prior's "
                  f"{field} stamp (--source-size auto)"
                  + ("" if size >= need else f"; the light still reaches past it (needs {need:.0f} pixels)")
                  + "; light that is not the source's (a neighbour, a star) counts too: mask it (--mask) or give "
                  "--source-size N", flush=True)
    return size


def fitted_source_size(prior, lens_model, observation, center, prefit, *, supersampling: int = 3,
                       verbose: bool = False) -> int:
    """The source grid side ``--source-size auto`` chooses in a joint run [pixels, at the prior's pixel scale].

    The data's light brighter than 5 sigma (less the pre-fit's deflector light, if it fitted one) is
    traced back through the pre-fit's best lens (:func:`~blindlens.lensing_operator.source_extent`);
    :func:`grid_size_for_reach` turns its reach about ``center`` into a side: the prior's own unless
    the light (plus a 4-pixel margin) passes the prior's stamp.

    Parameters
    ----------
    prior
        The source prior (``shape``, ``pixel_scale``, ``grid_multiple``).
    lens_model
        The run's NumPyro lens model (the pre-fit's values fill its sites).
    observation
        The :class:`~blindlens.observation.Observation`.
    center
        The source grid's centre ``(x, y)`` [arcsec].
    prefit
        The :class:`~blindlens.parametric_prefit.SersicPrefitResult` that placed the grid.
    supersampling
        Rays per image pixel per axis of the pre-fit's deflector light image (when it fitted one).
    verbose
        Print the reach and the choice.
    """
    from .inference.numpyro_model import lens_from_values
    from .physics.lensing_operator import source_extent
    from .physics.light_profiles import LensLightImager, light_of, mass_of

    lens = lens_from_values(lens_model, prefit.lens)
    data = observation.image
    if light_of(lens) is not None:
        psf = None if observation.psf is None else observation.psf_operator()
        data = data - LensLightImager(observation.image_grid, psf, supersampling)(light_of(lens))
    reach = source_extent(mass_of(lens), data, observation.noise, observation.image_grid, center,
                          mask=observation.mask)
    return grid_size_for_reach(prior, reach, verbose=verbose)


GRID_CENTER = "source_grid_center"
"""Checkpoint fingerprint entry: the source grid's centre when ``--source-center auto`` placed it."""
GRID_SIZE = "source_grid_size"
"""Checkpoint fingerprint entry: the source grid's side when ``--source-size auto`` chose it."""


class PlacedGrid(NamedTuple):
    """Where a checkpoint's draws live: the grid's ``center`` [arcsec], whether the checkpoint
    ``recorded`` it, and the grid ``size`` ``--source-size auto`` chose (``None``: not recorded)."""

    center: tuple[float, float]
    recorded: bool
    size: int | None = None


def checkpointed_center(path, fingerprint: dict, options) -> PlacedGrid | None:
    """The source-grid centre (and auto size) of the checkpoint this run will resume: a
    :class:`PlacedGrid`, or ``None`` when there is nothing to resume or the centre is not ``auto``
    with a pre-fit.

    A checkpoint written by another run is refused here, before the pre-fit, with the message of
    :func:`~blindlens.run_checkpoint.check_fingerprint`. A matching one without a recorded centre
    (``recorded`` False) was sampled on the origin. One that cannot be read gives the origin too:
    the run's own resume then reports it (the pre-fit would be wasted).
    """
    if not (isinstance(options.source_center, str) and options.lens_prefit == "sersic" and Path(path).is_file()):
        return None
    from .io.run_checkpoint import CheckpointError, check_fingerprint, load_checkpoint

    try:
        saved = dict(load_checkpoint(path).fingerprint)
    except CheckpointError:
        return PlacedGrid((0.0, 0.0), False)
    center = saved.pop(GRID_CENTER, None)
    size = saved.pop(GRID_SIZE, None)
    check_fingerprint(saved, fingerprint, path)
    size = None if size is None else int(size)
    if center is None:
        return PlacedGrid((0.0, 0.0), False, size)
    return PlacedGrid((float(center[0]), float(center[1])), True, size)
