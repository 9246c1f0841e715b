"""The single-lens joint sampling pipeline behind ``blindlens sample`` (without ``--fixed-lens``).

One observation file in, one posterior out: :func:`sample_observation` loads the observation,
the lens model and the source prior named by a :class:`SampleOptions`, runs
:class:`~blindlens.gibbs_kernel.BlindLensGibbs` through :func:`~blindlens.chain_runner.run_chains`
(with the same resumable checkpoint as the command line) and writes the netCDF InferenceData,
the summary text and (optionally) the figures. The command line (:mod:`blindlens.cli`) turns its
arguments into a :class:`SampleOptions` and calls this module; :mod:`blindlens.catalogue` calls it
once per lens.

Adding a sampling option is one change here and one in the parser: a field of
:class:`SampleOptions` (named as the argparse ``dest``; input files marked with
``metadata={"file": True}`` so fingerprints hash their content) and its ``add_argument`` in
``blindlens.cli._add_sampling_arguments`` (default ``DEFAULTS.<field>``). A new field enters the
checkpoint fingerprint only when it differs from its default, so existing checkpoints stay valid.

Heavy libraries are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .source_setup import (  # re-exported: the CLI, catalogue and batch pipeline import them from here
    GRID_CENTER,
    checkpointed_center,
    is_prior_file,
    load_source_prior,
    resolve_prior_spec,
    source_grid_center,
)

__all__ = ["SampleOptions", "DEFAULTS", "sample_observation", "diagnose", "load_lens_model", "load_source_prior",
           "resolve_prior_spec", "is_prior_file", "source_grid_center", "run_lens_model", "sample_fingerprint",
           "result_fingerprint"]


@dataclass(frozen=True)
class SampleOptions:
    """Every option of a joint ``blindlens sample`` run, with the command line's defaults.

    Field names are the ``blindlens sample`` options without the leading ``--`` and with ``_`` for
    ``-`` (``warm_start_steps`` is ``--warm-start-steps``); see ``blindlens sample --help`` for
    their meaning. ``prior`` is a spec (``"auto"``: the shipped prior nearest the data's
    pixel, ``"default"``, ``"highres"``, ``"fine"``, a prior file) or, from Python, a source prior object.
    ``source_center`` is ``"auto"`` (the lens pre-fit's source centre; the origin without a
    pre-fit) or ``(x, y)`` in arcsec. ``--strict`` (an exit status) is the command line's own.
    """

    # source prior and source step (shared with --fixed-lens runs)
    prior: Any = "auto"
    guidance: str = "pigdm"
    steps: int = 50
    solver: str = "auto"
    source_center: Any = "auto"
    flux_scale: float | None = None
    supersampling: int = 2
    seed: int = 0
    # the observation's companions (survey FITS: docs/real_data.md)
    psf: str | None = field(default=None, metadata={"file": True})
    mask: str | None = field(default=None, metadata={"file": True})
    cutout_size: int | None = None
    cutout_pixel: tuple | None = None
    cutout_sky: tuple | None = None
    # joint lens + source inference
    lens_model: str = "sie+shear"
    source_shift: str = "auto"
    lens_light: str = "none"
    lens_light_components: int = 1
    tie_light_center: bool = False
    chains: int = 2
    warmup: int = 200
    draws: int | None = None
    target_ess: float | None = None
    max_rhat: float = 1.01
    max_minutes: float | None = None
    thinning: int = 1
    chain_method: str = "sequential"
    refresh_sigma: Any = "auto"
    source_move: str = "auto"
    warmup_source_move: str = "auto"
    warm_start_steps: int = 200
    warm_start_tries: int = 4
    lens_prefit: str = "sersic"
    checkpoint_every: int = 100
    no_resume: bool = False
    truth: str | None = field(default=None, metadata={"file": True})
    figures: str | None = None
    fits_products: bool = True

    def __post_init__(self):
        if not isinstance(self.source_center, str):
            object.__setattr__(self, "source_center", tuple(float(v) for v in self.source_center))
        for name in ("cutout_pixel", "cutout_sky"):  # (lists from a CSV or argparse: hashable tuples)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    @classmethod
    def from_namespace(cls, namespace) -> SampleOptions:
        """The options of a parsed ``argparse`` namespace (its attributes named as the fields)."""
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)
                      if hasattr(namespace, f.name)})

    def replace(self, **changes) -> SampleOptions:
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Refuse out-of-range settings (``ValueError`` naming the option), before any work."""
        for name in ("chains", "draws", "thinning", "steps", "checkpoint_every", "warm_start_steps",
                     "warm_start_tries", "lens_light_components"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1.")
        if self.warmup < 0:
            raise ValueError("--warmup must be >= 0.")
        if (self.cutout_pixel is not None or self.cutout_sky is not None) != (self.cutout_size is not None):
            raise ValueError("a cut-out needs --cutout-size N and one centre, --cutout-pixel X Y or --cutout-sky RA DEC.")
        if self.cutout_pixel is not None and self.cutout_sky is not None:
            raise ValueError("give one cut-out centre: --cutout-pixel X Y or --cutout-sky RA DEC, not both.")
        if self.cutout_size is not None and self.cutout_size < 2:
            raise ValueError(f"--cutout-size must be >= 2 pixels, got {self.cutout_size}.")
        if isinstance(self.source_center, str) and self.source_center != "auto":
            raise ValueError(f"--source-center must be 'auto' or two numbers X Y [arcsec], got {self.source_center!r}.")
        if not isinstance(self.source_center, str) and len(self.source_center) != 2:
            raise ValueError(f"--source-center needs two numbers X Y [arcsec], got {len(self.source_center)}.")
        if self.source_move not in SOURCE_MOVES:
            raise ValueError(f"--source-move must be one of {', '.join(SOURCE_MOVES)}, got {self.source_move!r}.")
        if self.source_move == "split-gibbs" and self.refresh_sigma != "auto":
            raise ValueError("--refresh-sigma sets the guided refresh (--source-move refresh); --source-move "
                             "split-gibbs replaces it: drop one.")
        if self.warmup_source_move not in WARMUP_SOURCE_MOVES:
            raise ValueError(f"--warmup-source-move must be one of {', '.join(WARMUP_SOURCE_MOVES)}, "
                             f"got {self.warmup_source_move!r}.")
        if (self.warmup_source_move not in ("auto", "none") and source_move(self) == "refresh"
                and self.refresh_sigma is None):
            raise ValueError("--warmup-source-move replaces the sweep's move in the first half of warm-up; with "
                             "--refresh-sigma none every sweep is already a full draw: drop one.")
        if self.source_shift not in SOURCE_SHIFTS:
            raise ValueError(f"--source-shift must be one of {', '.join(SOURCE_SHIFTS)}, got {self.source_shift!r}.")
        if self.lens_light not in ("none", "sersic"):
            raise ValueError(f"--lens-light must be 'none' or 'sersic', got {self.lens_light!r}.")
        convergence_target(self)


SOURCE_MOVES = ("auto", "split-gibbs", "refresh")
"""``--source-move``: the exact split-Gibbs move, or the guided partial refresh; ``auto`` is
split Gibbs unless ``--refresh-sigma`` is given (docs/source_posterior.md: the refresh is not
stationary with a trained prior)."""
WARMUP_SOURCE_MOVES = ("auto", "none", "draw", "refresh")
"""``--warmup-source-move``: what moves the source in the first half of warm-up instead of the
sweep's move (a fresh guided draw, the guided refresh, or ``none``: the sweep's move throughout);
``auto`` is a fresh draw before split Gibbs in chains whose start misfits
(:data:`AUTO_DESCENT_THRESHOLD`), and ``none`` before the refresh or with vectorized chains."""

SOURCE_SHIFTS = ("auto", "none", "sampled")
"""``--source-shift``: ``sampled`` adds the source grid's sub-pixel placement to the lens model as a
constant deflection ``alpha_x, alpha_y ~ U(-p, p)`` (:func:`blindlens.inference.source_shift_model.with_source_shift`),
so the lens posterior averages over where the grid lies under the source; ``none`` keeps the grid fixed;
``auto`` is :data:`AUTO_SOURCE_SHIFT` (:func:`source_shift`)."""

AUTO_SOURCE_SHIFT = "sampled"
"""What ``--source-shift auto`` (the default) does in a joint run (a ``--fixed-lens`` run never
samples the placement)."""

DEFAULTS = SampleOptions()
"""The default options (the command line's defaults)."""

_CHECKPOINT_SETTINGS = ("chains", "warmup", "thinning", "chain_method", "refresh_sigma", "warm_start_steps",
                        "warm_start_tries", "lens_prefit", "checkpoint_every", "guidance", "steps", "solver",
                        "source_center", "flux_scale", "supersampling", "seed", "source_move",
                        "warmup_source_move", "source_shift")
"""Settings in every checkpoint fingerprint (in this order; the fingerprint of blindlens 0.1, then
``source_move``: a checkpoint written before the split-Gibbs default is not resumed with it)."""
_RUN_LENGTH = ("draws", "target_ess", "max_rhat", "max_minutes")
"""How long a run goes on: not in the checkpoint fingerprint (a run can be extended), in the result's."""
_NOT_FINGERPRINTED = ("prior", "lens_model", "no_resume", "figures", "truth", "fits_products") + _RUN_LENGTH
"""Fields entered otherwise (prior, lens model) or that do not change the draws."""


def _is_file_option(name: str) -> bool:
    return bool(SampleOptions.__dataclass_fields__[name].metadata.get("file"))


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


def observation_options(options) -> dict:
    """Extra :func:`~blindlens.observation.load_observation` keywords of ``options`` (a cut-out)."""
    if options.cutout_size is None:
        return {}
    from .io.survey_fits import Cutout

    centre = ({"pixel": tuple(float(v) for v in options.cutout_pixel)} if options.cutout_pixel is not None
              else {"sky": tuple(float(v) for v in options.cutout_sky)})
    return {"cutout": Cutout(int(options.cutout_size), **centre)}


def convergence_target(options):
    """The :class:`~blindlens.chain_runner.ConvergenceTarget` of ``target_ess`` (``None`` without it)."""
    if options.target_ess is None:
        if options.max_minutes is not None:
            raise ValueError("--max-minutes needs --target-ess (a fixed-length run is set by --draws).")
        return None
    if not options.target_ess > 0:
        raise ValueError(f"--target-ess must be > 0, got {options.target_ess:g}.")
    if not options.max_rhat > 1.0:
        raise ValueError(f"--max-rhat must be > 1, got {options.max_rhat:g}.")
    if options.max_minutes is not None and not options.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {options.max_minutes:g}.")
    if options.draws is not None and options.draws < 4:
        raise ValueError("--draws must be >= 4 with --target-ess (R-hat needs 4 draws per chain).")
    from .inference.chain_runner import ConvergenceTarget

    return ConvergenceTarget(target_ess=options.target_ess, max_rhat=options.max_rhat,
                             max_minutes=options.max_minutes,
                             max_draws=5000 if options.draws is None else options.draws)


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
    return {"observation": file_sha256(observation), "lens_model": lens, "prior": prior_fingerprint(prior),
            **settings, **newer, "blindlens": __version__}


def source_shift(options: SampleOptions) -> str:
    """Whether a joint run samples the source grid's placement: ``"sampled"`` or ``"none"``
    (``--source-shift``, where ``auto`` is :data:`AUTO_SOURCE_SHIFT`)."""
    return AUTO_SOURCE_SHIFT if options.source_shift == "auto" else options.source_shift


def source_move(options: SampleOptions) -> str:
    """The sweep's source move, ``"split-gibbs"`` or ``"refresh"``: ``--source-move``, where
    ``auto`` (the default) is the guided refresh only when ``--refresh-sigma`` sets its level."""
    if options.source_move != "auto":
        return options.source_move
    return "split-gibbs" if options.refresh_sigma == "auto" else "refresh"


AUTO_DESCENT_THRESHOLD = 20.0
"""``--warmup-source-move auto`` descends only in chains whose start misfits by more than this many
standard deviations of chi^2/N (``sqrt(2/N)``): a good warm start skips the descent's cost."""


def warmup_source_threshold(options: SampleOptions) -> float | None:
    """The misfit (in sd of chi^2/N) above which a chain descends: :data:`AUTO_DESCENT_THRESHOLD`
    for ``auto``, ``None`` (every chain) for an explicit ``--warmup-source-move``."""
    return AUTO_DESCENT_THRESHOLD if options.warmup_source_move == "auto" else None


def warmup_source_move(options: SampleOptions) -> str | None:
    """The move of the source in the first half of warm-up (``"draw"``, ``"refresh"``) or ``None``
    (the sweep's move throughout): ``--warmup-source-move``, where ``auto`` (the default) is a
    fresh guided draw before split Gibbs, whose exact but local moves crawl from a poor warm start
    (docs/joint_inference.md), and ``none`` before the refresh or with ``--chain-method
    vectorized`` (under ``jax.vmap`` the per-chain choice becomes a select that computes both moves
    in every sweep)."""
    move = options.warmup_source_move
    if move == "auto":  # vectorised chains would pay for a fresh draw in every sweep (a batched choice)
        move = "draw" if source_move(options) == "split-gibbs" and options.chain_method != "vectorized" else "none"
    return None if move == "none" else move


def split_gibbs_config(options: SampleOptions):
    """The :class:`~blindlens.split_gibbs.SplitGibbsConfig` of the split-Gibbs source move, else ``None``."""
    if source_move(options) != "split-gibbs":
        return None
    from .source.split_gibbs import SplitGibbsConfig

    return SplitGibbsConfig()


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
    from .inference.gibbs_kernel import BlindLensGibbs
    from .inference.gibbsddrm import GibbsDDRMConfig
    from .inference.numpyro_model import lens_site_names, nuisance_site_names
    from .inference.parametric_prefit import SersicPrefitConfig, SersicPrefitResult
    from .io.observation import load_observation
    from .io.run_checkpoint import checkpoint_path
    from .physics.grid import PixelGrid
    from .results.arviz_conversion import to_inference_data
    from .source.likelihood_score import guidance_by_name
    from .source.source_posterior import SourceSamplerConfig

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
    if options.flux_scale is not None:
        prior = prior.with_flux_scale(options.flux_scale)
    lens_model = run_lens_model(base_lens_model, options, obs, prior)
    sites = lens_site_names(lens_model)
    if verbose and source_shift(options) == "sampled":
        print(f"source grid placement sampled: alpha_x, alpha_y ~ U(+-{prior.pixel_scale:.4g}\"), a nuisance "
              f"(--source-shift {options.source_shift})", flush=True)
    guidance = guidance_by_name(options.guidance)
    fingerprint = sample_fingerprint(observation, options, prior)
    placed = checkpointed_center(checkpoint_path(out), fingerprint, options) if not options.no_resume else None
    if placed is not None:  # resuming: the grid stays where the checkpoint's draws live, no second pre-fit
        (center, recorded), prefit = placed, SersicPrefitConfig()
        if recorded:
            fingerprint[GRID_CENTER] = list(center)
        if verbose and recorded:
            print(f"source grid centred at ({center[0]:+.4f}, {center[1]:+.4f})\" as in the checkpoint", flush=True)
    else:
        center, prefit = source_grid_center(options, lens_model, obs, verbose=verbose)
        if isinstance(prefit, SersicPrefitResult):  # placed by the pre-fit: the checkpoint records where
            fingerprint[GRID_CENTER] = list(center)
    grid = PixelGrid(tuple(prior.shape), float(prior.pixel_scale), center)
    kernel = BlindLensGibbs(
        lens_model, obs, prior,
        source_config=SourceSamplerConfig(guidance=guidance, num_steps=options.steps, solver=options.solver),
        warm_start=GibbsDDRMConfig(guidance=guidance, num_steps=options.warm_start_steps),
        warm_start_tries=options.warm_start_tries,
        source_grid=grid, supersampling=options.supersampling, source_refresh_sigma=options.refresh_sigma,
        split_gibbs=split_gibbs_config(options), lens_prefit=prefit,
        warmup_source_move=warmup_source_move(options), warmup_source_threshold=warmup_source_threshold(options),
    )
    if verbose:
        move = source_move(options)
        detail = ("one exact split-Gibbs move" if move == "split-gibbs" else "a full guided draw"
                  if kernel.source_refresh_sigma is None else f"a guided refresh from {kernel.source_refresh_sigma:.3g}")
        print(f"source move per sweep: {detail} (--source-move {options.source_move})", flush=True)
        descent = warmup_source_move(options)
        if descent is not None and options.warmup > 0:
            what = "a fresh guided draw" if descent == "draw" else "the guided refresh"
            threshold, joint = warmup_source_threshold(options), kernel.joint_model
            n = max(int(joint.mask.sum()), 1)  # unmasked pixels
            which = "" if threshold is None else (
                f" in chains whose start misfits (chi^2/N above 1 + {threshold:g} sqrt(2/N) = "
                f"{1 + threshold * (2 / n) ** 0.5:.3f})")
            print(f"first {kernel.source_block.descent_sweeps(options.warmup)} warm-up sweeps: {what} instead"
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
        fingerprint=fingerprint,
    )
    clock.say("sampling done; computing model images and writing outputs ...")
    idata = to_inference_data(run.samples, obs, kernel=kernel, sample_stats=run.stats, truth=truth)
    idata.posterior.attrs["wall_seconds"] = float(time.time() - t0)
    idata.posterior.attrs["stop_reason"] = run.stop_reason
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
