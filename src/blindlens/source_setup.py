"""How a run sets up its source model from the data: which prior, and where its grid sits.

* ``--prior auto`` (the default): the shipped prior whose source pixels are nearest the
  data's (:func:`~blindlens.score_prior.choose_shipped_prior`); :func:`resolve_prior_spec` turns the spec
  into a shipped name for one observation, :func:`load_source_prior` loads a resolved spec.
* ``--source-center auto`` (the default): :func:`source_grid_center` runs the Sérsic + shapelet
  lens pre-fit and centres the source grid on its source; the chains' starts reuse that pre-fit.
  A resumed run takes the centre from its checkpoint instead (:func:`checkpointed_center`), so it
  never re-runs the pre-fit nor resumes draws on a moved grid.

Used by :mod:`blindlens.pipeline` (``blindlens sample``), :mod:`blindlens.fixed_lens`,
:mod:`blindlens.batch_pipeline` and :mod:`blindlens.catalogue`. Heavy libraries are imported inside
the functions.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["GRID_CENTER", "is_prior_file", "resolve_prior_spec", "load_source_prior", "source_grid_center",
           "checkpointed_center"]


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


GRID_CENTER = "source_grid_center"
"""Checkpoint fingerprint entry: the source grid's centre when ``--source-center auto`` placed it."""


def checkpointed_center(path, fingerprint: dict, options) -> tuple[tuple[float, float], bool] | None:
    """The source-grid centre of the checkpoint this run will resume: ``(centre, recorded)``, or ``None``
    when there is nothing to resume or the centre is not ``auto`` with a pre-fit.

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
        return (0.0, 0.0), False
    center = saved.pop(GRID_CENTER, None)
    check_fingerprint(saved, fingerprint, path)
    if center is None:
        return (0.0, 0.0), False
    return (float(center[0]), float(center[1])), True
