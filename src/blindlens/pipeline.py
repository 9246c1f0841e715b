"""The single-lens joint sampling pipeline behind ``blindlens sample`` (without ``--fixed-lens``).

One observation file in, one posterior out: :func:`sample_observation` loads the observation,
the lens model and the source prior named by a :class:`~blindlens.sample_options.SampleOptions`,
runs :class:`~blindlens.gibbs_kernel.BlindLensGibbs` through :func:`~blindlens.chain_runner.run_chains`
(with the same resumable checkpoint as the command line) and writes the netCDF InferenceData,
the summary text and (optionally) the figures. The command line (:mod:`blindlens.cli`) turns its
arguments into a :class:`SampleOptions` and calls this module; :mod:`blindlens.catalogue` calls it
once per lens. The options and how their ``auto`` values resolve live in
:mod:`blindlens.sample_options` (re-exported here).

Heavy libraries are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .sample_options import (  # re-exported: the CLI, catalogue, batch pipeline and tests import them from here
    _CHECKPOINT_SETTINGS,
    _NOT_FINGERPRINTED,
    _RUN_LENGTH,
    AUTO_DESCENT_EXIT,
    AUTO_DESCENT_THRESHOLD,
    AUTO_SOURCE_SHIFT,
    AUTO_WARM_START_POOL,
    DEFAULTS,
    SOURCE_MOVES,
    SOURCE_SHIFTS,
    WARMUP_SOURCE_MOVES,
    SampleOptions,
    _is_file_option,
    convergence_target,
    observation_options,
    source_move,
    source_shift,
    split_gibbs_config,
    warm_start_tries,
    warmup_source_exit,
    warmup_source_move,
    warmup_source_threshold,
)
from .source_setup import (  # re-exported: the CLI, catalogue and batch pipeline import them from here
    GRID_CENTER,
    GRID_SIZE,
    checkpointed_center,
    configure_prior,
    fitted_source_size,
    is_prior_file,
    load_source_prior,
    resolve_prior_spec,
    sized_prior,
    source_grid_center,
)

__all__ = ["SampleOptions", "DEFAULTS", "sample_observation", "diagnose", "load_lens_model", "load_source_prior",
           "configure_prior", "resolve_prior_spec", "is_prior_file", "source_grid_center", "run_lens_model", "sample_fingerprint",
           "result_fingerprint", "AUTO_DESCENT_EXIT", "AUTO_DESCENT_THRESHOLD", "AUTO_SOURCE_SHIFT", "AUTO_WARM_START_POOL", "SOURCE_MOVES", "SOURCE_SHIFTS",
           "WARMUP_SOURCE_MOVES", "build_kernel"]


def load_lens_model(spec: str):
    """The NumPyro lens model of ``--lens-model``: a named model or ``FILE.py:function``."""
    from .inference import numpyro_model

    named = {
        "sie+shear": numpyro_model.sie_shear,
        "epl+shear": numpyro_model.epl_shear,
        "epl+shear+multipole": numpyro_model.epl_shear_multipole,
    }
    if spec in named:
        return named[spec]
    if ":" not in spec:
        raise ValueError(f"--lens-model must be one of {sorted(named)} or FILE.py:function, got {spec!r}.")
    import importlib.util

    file, func = spec.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"lens-model file {path} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"_blindlens_user_lens_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, func, None)):
        raise ValueError(f"{path} has no function {func!r}; write `def {func}(): ... return lens`.")
    return getattr(module, func)


def run_lens_model(lens_model, options, observation, prior):
    """The lens model a joint run samples: ``lens_model`` (``--lens-model``, loaded), plus the source
    grid's placement (``--source-shift sampled``, at ``prior``'s pixel scale) and the deflector light
    (``--lens-light sersic``, its amplitude prior scaled to ``observation``), in that order."""
    if source_shift(options) == "sampled":
        from .inference.source_shift_model import with_source_shift

        lens_model = with_source_shift(lens_model, float(prior.pixel_scale))
    if options.lens_light == "sersic":
        from .inference.lens_light_model import amp_scale_of, with_lens_light

        lens_model = with_lens_light(lens_model, amp_scale=amp_scale_of(observation),
                                     num_components=options.lens_light_components,
                                     tie_center=options.tie_light_center)
    return lens_model


def truth_values(truth_lens, sites) -> dict:
    """Lens parameters of a truth lens Module, by site name (first component that has each name);
    a deflector light's components by the ``lens_light_`` / ``lens_light2_`` ... site names."""
    from .physics.light_profiles import light_of, mass_of

    values = {}
    mass = mass_of(truth_lens)
    components = getattr(mass, "components", (mass,))
    for comp in components:
        for name in sites:
            if name not in values and hasattr(comp, name):
                values[name] = float(getattr(comp, name))
    light = light_of(truth_lens)
    for i, comp in enumerate(light.components if light is not None else ()):
        prefix = "lens_light_" if i == 0 else f"lens_light{i + 1}_"
        for name in sites:
            if name.startswith(prefix) and hasattr(comp, name[len(prefix):]):
                values[name] = float(getattr(comp, name[len(prefix):]))
    return values


def read_input(label, path, loader, *args, **kwargs):
    """``loader(path, ...)``, with a low-level read failure turned into a one-line error naming the file."""
    import zipfile

    try:
        return loader(path, *args, **kwargs)
    except (FileNotFoundError, KeyError):
        raise
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{label} {path}: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile, TypeError) as err:
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ValueError(f"{label} {path} cannot be read ({text}); it may be truncated or damaged.") from None


def sample_inputs(observation, options, *, fixed_lens=None) -> dict:
    """The input files of a ``blindlens sample`` run (for the output-path checks)."""
    inputs = {"the observation": observation, "--truth": options.truth, "--fixed-lens": fixed_lens}
    if is_prior_file(options.prior):
        inputs["--prior"] = options.prior
    spec = options.lens_model
    if fixed_lens is None and ":" in spec:
        inputs["--lens-model"] = spec.rsplit(":", 1)[0]
    for f in dataclasses.fields(SampleOptions):
        if _is_file_option(f.name) and f.name != "truth" and getattr(options, f.name) is not None:
            inputs["--" + f.name.replace("_", "-")] = getattr(options, f.name)
    return inputs


def sample_fingerprint(observation, options, prior) -> dict:
    """Everything that defines the draws of a joint run, for its checkpoint.

    The observation and lens-model file enter by content, the prior by
    :func:`~blindlens.run_checkpoint.prior_fingerprint`; run-length settings (``draws``,
    ``target_ess`` ...) do not enter (a checkpoint can be extended). Options added after
    blindlens 0.1 enter only when they differ from their default.
    """
    from . import __version__
    from .io.run_checkpoint import file_sha256, prior_fingerprint

    lens = options.lens_model
    if ":" in lens:
        file, func = lens.rsplit(":", 1)
        lens = f"{Path(file).name}:{func} {file_sha256(file)}"
    newer = {}
    for f in dataclasses.fields(SampleOptions):
        if f.name in _CHECKPOINT_SETTINGS or f.name in _NOT_FINGERPRINTED:
            continue
        value = getattr(options, f.name)
        if value != f.default:
            newer[f.name] = file_sha256(value) if _is_file_option(f.name) and value is not None else value
    settings = {name: getattr(options, name) for name in _CHECKPOINT_SETTINGS}
    settings["source_shift"] = source_shift(options)  # what ran, so that "auto" resumes a run of its meaning
    settings["warm_start_tries"] = warm_start_tries(options)  # likewise (2 chains: 4, as before "auto")
    return {"observation": file_sha256(observation), "lens_model": lens, "prior": prior_fingerprint(prior),
            **settings, **newer, "blindlens": __version__}


def result_fingerprint(observation, options, prior) -> dict:
    """:func:`sample_fingerprint` plus the run length and the truth file: all that defines a finished posterior."""
    from .io.run_checkpoint import file_sha256

    return {**sample_fingerprint(observation, options, prior), **{n: getattr(options, n) for n in _RUN_LENGTH},
            "truth": None if options.truth is None else file_sha256(options.truth)}


FITS_PRODUCTS = ("model", "lens_light", "lensed_source", "normalized_residual", "source_mean", "source_sd")
"""The FITS products written beside the netCDF (:mod:`blindlens.posterior_products`)."""


def check_joint_outputs(out, figures, *, inputs, write_figures=True, products=()):
    """Check every file joint sampling writes before it starts (creating the figures folder); returns ``out``.

    Files: ``out`` (netCDF, ``.nc``), its checkpoint and, in the figures folder (default: beside
    ``out``), ``<stem>_summary.txt`` and (with ``write_figures``) ``<stem>_summary.png``,
    ``<stem>_pair.png``, ``<stem>_curves.png`` and, with ``--truth``, ``<stem>_source_vs_truth.png``.
    """
    from .io.run_checkpoint import check_output_dir, check_output_paths, checkpoint_path

    out = check_output_paths({"--out": out}, suffixes={"--out": (".nc",)}, inputs=inputs)["--out"]
    fig_dir = check_output_dir("--figures", figures) if figures else out.parent
    fig_dir.mkdir(parents=True, exist_ok=True)
    files = {"--out": out, "the checkpoint": checkpoint_path(out)}
    names = ("summary.png", "pair.png", "curves.png", "summary.txt") if write_figures else ("summary.txt",)
    for name in names + (("source_vs_truth.png",) if write_figures and inputs.get("--truth") else ()):
        files[f"figure file {out.stem}_{name}"] = Path(fig_dir) / f"{out.stem}_{name}"
    for name in products:  # beside the netCDF
        files[f"FITS product {out.stem}_{name}.fits"] = out.parent / f"{out.stem}_{name}.fits"
    check_output_paths(files, inputs=inputs)
    return out


def write_joint_outputs(idata, out, fig_dir, truth, *, title, lens_model=None, truth_file=None, figures=True,
                        verbose=True):
    """netCDF, figures and summary text; ``truth_file``: a :func:`~blindlens.simulation.load_truth` dict.

    Returns the summary text file. ``figures=False`` writes the netCDF and the summary text only.
    """
    from .results.arviz_conversion import summary_text

    out = Path(out)
    fig_dir = Path(fig_dir) if fig_dir else out.parent
    fig_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    idata.to_netcdf(str(tmp))
    tmp.replace(out)  # atomic: never leaves a half-written posterior behind
    stem = out.stem
    figs = []
    if figures:
        from .results.arviz_conversion import plot_joint_summary
        from .results.posterior_figures import (
            plot_critical_curves,
            plot_lens_pair,
            plot_source_comparison,
        )

        figs = [
            plot_joint_summary(idata, fig_dir / f"{stem}_summary.png"),
            plot_lens_pair(idata, fig_dir / f"{stem}_pair.png", truth),
            plot_critical_curves(idata, fig_dir / f"{stem}_curves.png", truth=truth_file, lens_model=lens_model),
        ]
        if truth_file is not None:
            figs.append(plot_source_comparison(
                idata, fig_dir / f"{stem}_source_vs_truth.png", truth_file["source"],
                float(truth_file["source_pixel_scale"]), tuple(truth_file.get("source_center", (0.0, 0.0)))))
    text = summary_text(idata, truth, title=title)
    summary = fig_dir / f"{stem}_summary.txt"
    summary.write_text(text)
    if verbose:
        print(text)
        print(f"wrote {out}, {summary} and " + ", ".join(str(f) for f in figs) if figs
              else f"wrote {out} and {summary}")
    return summary


def build_kernel(lens_model, observation, prior, options: SampleOptions, *, center, prefit=None):
    """The :class:`~blindlens.inference.gibbs_kernel.BlindLensGibbs` that ``blindlens sample`` runs.

    Parameters
    ----------
    lens_model
        The NumPyro lens model, as :func:`run_lens_model` returns it (nuisance sites included).
    observation
        The loaded observation (:func:`blindlens.io.observation.load_observation`).
    prior
        The source prior (:func:`load_source_prior`), flux scale already applied.
    options
        The run's :class:`SampleOptions`: guidance, diffusion and warm-start steps, solver,
        supersampling, source moves.
    center
        ``(x, y)`` centre of the source grid, arcsec (:func:`source_grid_center`).
    prefit
        The pre-fit result or configuration that seeds the chains (``None``: none).

    Returns
    -------
    BlindLensGibbs
        The kernel; the command line, the studies and the benchmarks build it here so they run the
        same sampler.
    """
    from .inference.gibbs_kernel import BlindLensGibbs
    from .inference.gibbsddrm import GibbsDDRMConfig
    from .physics.grid import PixelGrid
    from .source.likelihood_score import guidance_by_name
    from .source.source_posterior import SourceSamplerConfig

    guidance = guidance_by_name(options.guidance)
    return BlindLensGibbs(
        lens_model, observation, prior,
        source_config=SourceSamplerConfig(guidance=guidance, num_steps=options.steps, solver=options.solver),
        warm_start=GibbsDDRMConfig(guidance=guidance, num_steps=options.warm_start_steps),
        warm_start_tries=warm_start_tries(options), warm_start_pool=options.warm_start_pool,
        source_grid=PixelGrid(tuple(prior.shape), float(prior.pixel_scale), center),
        supersampling=options.supersampling, source_refresh_sigma=options.refresh_sigma,
        split_gibbs=split_gibbs_config(options, prior), lens_prefit=prefit,
        warmup_source_move=warmup_source_move(options), warmup_source_threshold=warmup_source_threshold(options),
        warmup_source_exit=warmup_source_exit(options),
    )


def _sample(observation, out, options, *, progress=True, verbose=True, figures=True, prior=None,
            load_prior=None, write_outputs=None):
    """The joint run; returns ``(idata, summary_path, chain_run)``.

    ``prior``: an already loaded source prior (else ``load_prior(options.prior)``, by default
    :func:`load_source_prior`); ``write_outputs``: the writer (default :func:`write_joint_outputs`;
    the command line passes its own name so tests can replace it).
    """
    import time

    import jax

    from .inference.chain_runner import RunClock, run_chains
    from .inference.numpyro_model import lens_site_names, nuisance_site_names
    from .inference.parametric_prefit import SersicPrefitConfig, SersicPrefitResult
    from .io.observation import load_observation
    from .io.run_checkpoint import checkpoint_path
    from .results.arviz_conversion import to_inference_data

    options.validate()
    target = convergence_target(options)
    out = check_joint_outputs(out, options.figures, inputs=sample_inputs(observation, options),
                              write_figures=figures, products=FITS_PRODUCTS if options.fits_products else ())
    obs = load_observation(observation, psf=options.psf, mask=options.mask, **observation_options(options))
    base_lens_model = load_lens_model(options.lens_model)  # a bad --lens-model fails before the prior loads
    if verbose and getattr(obs, "noise_source", None):
        print(f"noise: {obs.noise_source}", flush=True)
    if prior is None:
        spec = resolve_prior_spec(options.prior, obs)
        if verbose and spec != options.prior:
            print(f"source prior: {spec} (--prior auto: the shipped prior nearest the data's "
                  f"{obs.pixel_scale:.3g}\"/pixel)", flush=True)
        prior = (load_prior or load_source_prior)(spec)
    prior = configure_prior(prior, options)
    lens_model = run_lens_model(base_lens_model, options, obs, prior)
    sites = lens_site_names(lens_model)
    if verbose and source_shift(options) == "sampled":
        print(f"source grid placement sampled: alpha_x, alpha_y ~ U(+-{prior.pixel_scale:.4g}\"), a nuisance "
              f"(--source-shift {options.source_shift})", flush=True)
    fingerprint = sample_fingerprint(observation, options, prior)
    placed = checkpointed_center(checkpoint_path(out), fingerprint, options) if not options.no_resume else None
    if placed is not None:  # resuming: the grid stays where the checkpoint's draws live, no second pre-fit
        center, recorded, size = placed
        prefit = SersicPrefitConfig()
        if recorded:
            fingerprint[GRID_CENTER] = list(center)
        if verbose and recorded:
            print(f"source grid centred at ({center[0]:+.4f}, {center[1]:+.4f})\" as in the checkpoint", flush=True)
        if size is not None:
            fingerprint[GRID_SIZE] = size
            prior = sized_prior(prior, size)
    else:
        center, prefit = source_grid_center(options, lens_model, obs, verbose=verbose)
        if isinstance(prefit, SersicPrefitResult):  # placed by the pre-fit: the checkpoint records where
            fingerprint[GRID_CENTER] = list(center)
            if options.source_size == "auto":
                size = fitted_source_size(prior, lens_model, obs, center, prefit,
                                          supersampling=options.supersampling, verbose=verbose)
                fingerprint[GRID_SIZE] = size
                prior = sized_prior(prior, size)
        elif options.source_size == "auto" and verbose:
            print("--source-size auto needs the lens pre-fit (--source-center auto, --lens-prefit sersic): the "
                  f"prior's own {prior.shape[0]}x{prior.shape[1]} grid is used", flush=True)
    kernel = build_kernel(lens_model, obs, prior, options, center=center, prefit=prefit)
    if verbose:
        move = source_move(options)
        detail = ("one exact split-Gibbs move" if move == "split-gibbs" else "a full guided draw"
                  if kernel.source_refresh_sigma is None else f"a guided refresh from {kernel.source_refresh_sigma:.3g}")
        print(f"source move per sweep: {detail} (--source-move {options.source_move})", flush=True)
        descent = warmup_source_move(options)
        if descent is not None and options.warmup > 0:
            what = "a fresh guided draw" if descent == "draw" else "the guided refresh"
            threshold, stop, joint = warmup_source_threshold(options), warmup_source_exit(options), kernel.joint_model
            n = max(int(joint.mask.sum()), 1)  # unmasked pixels
            which = "" if threshold is None else (
                f" in chains whose start misfits (chi^2/N above 1 + {threshold:g} sqrt(2/N) = "
                f"{1 + threshold * (2 / n) ** 0.5:.3f})")
            if stop is not None:
                which += f", each until a sweep ends within 1 + {stop:g} sqrt(2/N) = {1 + stop * (2 / n) ** 0.5:.3f}"
            print(f"first {kernel.descent_sweeps(options.warmup)} warm-up sweeps: {what} instead"
                  f"{which} (--warmup-source-move {options.warmup_source_move})", flush=True)
    truth = truth_file = None
    if options.truth:
        from .io.simulation import load_truth

        truth_file = read_input("--truth", options.truth, load_truth)
        truth = truth_values(truth_file["lens"], sites)
    t0 = time.time()
    clock = RunClock(verbose)
    run = run_chains(
        kernel, jax.random.key(options.seed), num_chains=options.chains, num_warmup=options.warmup,
        num_draws=None if target is not None else (300 if options.draws is None else options.draws), target=target,
        sites=[s for s in sites if s not in nuisance_site_names(lens_model)], chunk=options.checkpoint_every, thinning=options.thinning, chain_method=options.chain_method,
        checkpoint=checkpoint_path(out), resume=not options.no_resume, clock=clock, progress=progress,
        fingerprint=fingerprint, max_extra_warmup=options.max_extra_warmup,
    )
    clock.say("sampling done; computing model images and writing outputs ...")
    idata = to_inference_data(run.samples, obs, kernel=kernel, sample_stats=run.stats, truth=truth)
    idata.posterior.attrs["wall_seconds"] = float(time.time() - t0)
    idata.posterior.attrs["stop_reason"] = run.stop_reason
    idata.posterior.attrs["extra_warmup_sweeps"] = int(run.extra_warmup)
    if getattr(obs, "noise_source", None):
        idata.posterior.attrs["noise_source"] = str(obs.noise_source)
    writer = write_outputs or write_joint_outputs
    summary = writer(idata, out, options.figures, truth, title=f"blindlens sample {observation}",
                     lens_model=lens_model, truth_file=truth_file, figures=figures, verbose=verbose)
    if options.fits_products:
        written = write_posterior_fits(idata, kernel, obs, out)
        if verbose:
            print("wrote FITS products " + ", ".join(str(p) for p in written.values()), flush=True)
    if run.converged is False:  # stopped by a budget: the checkpoint lets the same command continue
        clock.say(f"kept {checkpoint_path(out)}: rerun the same command to continue sampling (--no-resume: afresh)")
    else:
        checkpoint_path(out).unlink(missing_ok=True)  # complete: the outputs are written
    clock.say("done")
    return idata, summary, run


def write_posterior_fits(idata, kernel, observation, out) -> dict:
    """Write :func:`~blindlens.posterior_products.posterior_products` as ``<out stem>_<name>.fits``
    beside ``out``, with the observation's WCS (and a source-plane WCS for the source maps)."""
    from .io.survey_fits import write_fits_products
    from .results.posterior_products import posterior_products

    maps = posterior_products(idata, kernel.joint_model)
    source = {k: maps.pop(k) for k in ("source_mean", "source_sd")}
    out = Path(out)
    return write_fits_products(out.parent / out.stem, maps, wcs_header=getattr(observation, "wcs_header", None),
                               image_grid=observation.image_grid, source_grid=kernel.source_grid, **source)


def diagnose(idata, summary=None):
    """:func:`blindlens.check_run` of a finished run, its text appended to the ``summary`` file; the report."""
    from .results.run_diagnostics import check_run

    report = check_run(idata, warn=False)
    if summary is not None:
        Path(summary).write_text(Path(summary).read_text() + "\n" + str(report) + "\n")
    return report


def sample_observation(observation, out, options: SampleOptions | None = None, *, progress: bool = True,
                       figures: bool = True):
    """Blind joint lens + source inference of one observation file: ``blindlens sample`` from Python.

    Parameters
    ----------
    observation
        Observation file (``.fits`` or ``.npz``).
    out
        Output InferenceData (``.nc``) in an existing folder; the summary text (and figures) go
        beside it or into ``options.figures``. A checkpoint ``<out>.ckpt.npz`` is kept while the
        run goes on: the same call after an interruption resumes it (``no_resume=True``: afresh).
    options
        The run's :class:`SampleOptions` (default: the command line's defaults).
    progress
        Print progress lines, progress bars, the summary and the diagnostics.
    figures
        Also write the summary, pair and critical-curve figures.

    Returns
    -------
    (idata, report)
        The ArviZ InferenceData written to ``out`` and its :class:`~blindlens.run_diagnostics.RunReport`
        (``report.ok`` is ``False`` when a diagnostic failed; nothing is raised for that).
    """
    options = DEFAULTS if options is None else options
    idata, summary, _ = _sample(observation, out, options, progress=progress, verbose=progress, figures=figures)
    report = diagnose(idata, summary)
    if progress:
        print(str(report), flush=True)
    return idata, report
