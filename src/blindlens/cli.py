"""The ``blindlens`` command line.

Each subcommand is registered by an ``_add_<name>`` function and run by a ``_run_<name>``
function; heavy imports happen inside the run functions so ``blindlens --help`` stays fast.
This module parses arguments and reports to the console; nothing imports it. The subcommands that
prepare inputs (galaxy sets, priors, simulations, the bundled example) are in
:mod:`blindlens.cli_prepare`. The joint sampling
pipeline (``blindlens sample`` without ``--fixed-lens``) is :mod:`blindlens.pipeline`, driven by a
:class:`~blindlens.pipeline.SampleOptions` built from the arguments; ``blindlens catalogue`` is
:mod:`blindlens.catalogue`.
"""

from __future__ import annotations

import argparse
import sys

from .cli_prepare import _add_example, _add_make_galaxies, _add_plot_observation, _add_simulate, _add_train_prior
from .pipeline import AUTO_SOURCE_SHIFT, DEFAULTS, SOURCE_MOVES, SOURCE_SHIFTS, WARMUP_SOURCE_MOVES, SampleOptions

# the joint pipeline lives in blindlens.pipeline; these names stay here for the subcommands and tests
from .pipeline import check_joint_outputs as _check_joint_outputs  # noqa: F401
from .pipeline import load_lens_model as _load_lens_model  # noqa: F401
from .pipeline import load_source_prior as _load_source_prior
from .sample_options import WARM_START_POOLS
from .pipeline import write_joint_outputs as _write_joint_outputs
from .source import GUIDANCE_NAMES

__all__ = ["main", "build_parser"]


# --- subcommands ----------------------------------------------------------------------------
# (each adds its own _add_/_run_ pair, here or in cli_prepare, and one line in _REGISTRY)


def _add_sample(sub):
    p = sub.add_parser(
        "sample",
        help="draw posterior source samples (with --fixed-lens: for a known lens)",
        description=(
            "Draw source samples from p(source | lens, data) with the diffusion prior guided by a "
            "likelihood score, and write ArviZ InferenceData (posterior 'source', observed data, model "
            "images, normalised residuals) plus a summary PNG."
        ),
    )
    p.add_argument("observation", help="observation file (.fits or .npz)")
    p.add_argument("--fixed-lens", default=None, help="lens TOML ([[profile]] tables) to hold fixed")
    p.add_argument("--num-samples", type=int, default=16, help="number of source samples")
    p.add_argument("--polish-moves", type=int, default=0,
                   help="with --fixed-lens: exact split-Gibbs moves after each guided draw (0: none; 10 bring the "
                        "residuals to the true source's level, not the coverage; 2 network passes per move on "
                        "well-measured data, more where the noise is high)")
    p.add_argument("--out", required=True,
                   help="output InferenceData (.nc) in an existing folder; outputs are checked before sampling "
                        "starts and replaced if they exist")
    _add_sampling_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, help="samples per compiled batch (bounds memory)")
    p.add_argument("--plot", default=None, help="summary figure with --fixed-lens (default: <out stem>.png)")
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {STRICT_EXIT} when a run diagnostic fails (R-hat, ESS, divergences, "
                        "chi^2/N, a chain in a worse mode, non-finite values); they are printed either way")
    p.set_defaults(run=_run_sample)


class _SourceCenter(argparse.Action):
    """``--source-center auto`` or ``--source-center X Y`` (two numbers, arcsec)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values == ["auto"]:
            setattr(namespace, self.dest, "auto")
            return
        try:
            if len(values) != 2:
                raise ValueError
            setattr(namespace, self.dest, (float(values[0]), float(values[1])))
        except ValueError:
            parser.error(f"{option_string} takes 'auto' or two numbers X Y [arcsec], got {' '.join(values)!r}")


def _source_size(text: str):
    """``--source-size auto`` or a whole number of pixels."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes 'auto' or a whole number of source pixels, got {text!r}") from None


def _add_sampling_arguments(p) -> None:
    """The sampling options of ``blindlens sample`` (and ``blindlens catalogue``): one per
    :class:`~blindlens.pipeline.SampleOptions` field, ``dest`` = the field, default from ``DEFAULTS``."""
    p.add_argument("--prior", default=DEFAULTS.prior,
                   help="'auto' (default: the shipped prior whose pixels are nearest the data's), 'default' "
                        "(shipped 32x32 prior at 0.1\"/pixel), 'highres' (64x64 at 0.05\"/pixel), 'fine' (128x128 at "
                        "0.025\"/pixel, opt-in for 0.05\" data: docs/joint_inference.md) or a prior file from train-prior")
    p.add_argument("--guidance", choices=GUIDANCE_NAMES, default=DEFAULTS.guidance,
                   help="likelihood score: pigdm (default), calibrated (exact for Gaussian priors, costlier), cla")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps,
                   help=f"reverse-diffusion steps (default {DEFAULTS.steps}: docs/source_posterior.md)")
    p.add_argument("--solver", choices=("auto", "euler", "heun", "imex"), default=DEFAULTS.solver,
                   help="reverse-SDE solver; auto: imex for CLA (stiff), euler otherwise")
    p.add_argument("--source-center", nargs="+", action=_SourceCenter, default=DEFAULTS.source_center,
                   metavar="auto|X Y",
                   help="source-grid centre: 'auto' (default: the lens pre-fit's source, or with --fixed-lens the "
                        "lensed light traced back through the lens) or X Y [arcsec]")
    p.add_argument("--flux-scale", type=float, default=DEFAULTS.flux_scale,
                   help="image units per prior (network) unit; default: the prior's own")
    p.add_argument("--source-size", type=_source_size, default=DEFAULTS.source_size, metavar="auto|N",
                   help="source grid side in pixels at the prior's pixel scale: 'auto' (default) keeps the prior's "
                        "own (64 for 'highres') unless the data's light, traced back through the lens pre-fit (or the "
                        "--fixed-lens lens), reaches past it, then 1.5x or 2x that; N: that side, a multiple of 8 for "
                        "the shipped priors (docs/prior.md)")
    p.add_argument("--supersampling", type=int, default=DEFAULTS.supersampling, help="rays per image pixel per axis (default 3: the model image within a few chi^2 of the "
                        "pixel integral on bright arcs, where 2 leaves up to ~30; docs/joint_inference.md)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="PRNG seed")
    p.add_argument("--psf", default=DEFAULTS.psf,
                   help="PSF FITS file (at the image's pixel scale; default: the observation's PSF extension)")
    p.add_argument("--mask", default=DEFAULTS.mask,
                   help="mask FITS file, nonzero = pixel excluded (besides DQ flags and non-finite pixels)")
    p.add_argument("--cutout-size", type=int, default=DEFAULTS.cutout_size, metavar="N",
                   help="model an N x N cut-out of a larger frame (astropy Cutout2D, WCS carried along) centred on "
                        "--cutout-pixel or --cutout-sky")
    p.add_argument("--cutout-pixel", type=float, nargs=2, default=DEFAULTS.cutout_pixel, metavar=("X", "Y"),
                   help="cut-out centre, 0-based pixel (column, row) of the frame")
    p.add_argument("--cutout-sky", type=float, nargs=2, default=DEFAULTS.cutout_sky, metavar=("RA", "DEC"),
                   help="cut-out centre, sky position in degrees (needs a celestial WCS)")
    _add_joint_sample_arguments(p)


def _run_sample(args):
    from pathlib import Path

    if args.fixed_lens is None:
        if args.polish_moves:
            raise ValueError("--polish-moves polishes fixed-lens source draws; use it with --fixed-lens.")
        return _run_joint_sample(args)
    if args.num_samples < 1 or args.steps < 1 or args.polish_moves < 0:
        raise ValueError("--num-samples and --steps must be >= 1 and --polish-moves >= 0.")
    if args.target_ess is not None or args.max_minutes is not None:
        raise ValueError("--target-ess and --max-minutes are for joint runs; with --fixed-lens use --num-samples "
                         "(the source draws are independent).")
    if args.source_shift == "sampled":
        raise ValueError("--source-shift samples the grid's placement with the lens; --fixed-lens holds the lens "
                         "(and the grid) fixed: drop one.")
    from .fixed_lens import run_fixed_lens
    from .io.run_checkpoint import FIGURE_SUFFIXES, check_output_paths

    check_output_paths({"--out": args.out, "--plot": args.plot or Path(args.out).with_suffix(".png")},
                       suffixes={"--out": (".nc",), "--plot": FIGURE_SUFFIXES}, inputs=_sample_inputs(args))
    idata = run_fixed_lens(args, None, SampleOptions.from_namespace(args), load_prior=_load_source_prior)
    return _report_run(idata, strict=args.strict)


# --- joint lens + source sampling (blindlens sample without --fixed-lens) and the demo ----------


def _auto_or_positive(text: str, *, kind=float, none: bool = False, what: str = "a noise level",
                      name: str = "the noise level"):
    """'auto', 'none' (where ``none``: ``None``) or a positive number of type ``kind``."""
    if text.lower() == "auto":
        return "auto"
    if none and text.lower() == "none":
        return None
    try:
        value = kind(text)
    except ValueError:
        words = "'auto', 'none'" if none else "'auto'"
        raise argparse.ArgumentTypeError(f"expected {words} or {what}, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{name} must be {'>= 1' if kind is int else '> 0'}, got {value}")
    return value


def _refresh_sigma_arg(text: str):
    """``--refresh-sigma``: 'auto', 'none' or a positive number."""
    return _auto_or_positive(text, none=True, name="the refresh noise level")


def _split_gibbs_floor_arg(text: str):
    """``--split-gibbs-floor``: 'auto' or a positive noise level."""
    return _auto_or_positive(text, name="the split-Gibbs floor")


def _warm_start_tries_arg(text: str):
    """``--warm-start-tries``: 'auto' or a positive integer."""
    return _auto_or_positive(text, kind=int, what="a number of trajectories per chain", name="--warm-start-tries")


def _add_joint_sample_arguments(p) -> None:
    g = p.add_argument_group("joint lens + source inference (without --fixed-lens)")
    g.add_argument("--lens-model", default=DEFAULTS.lens_model,
                   help="sie+shear (default), epl+shear, epl+shear+multipole, or FILE.py:function (a NumPyro "
                        "model returning a lens)")
    g.add_argument("--chains", type=int, default=DEFAULTS.chains, help=f"MCMC chains (default {DEFAULTS.chains})")
    g.add_argument("--warmup", type=int, default=DEFAULTS.warmup,
                   help="Gibbs warm-up sweeps per chain (NUTS adaptation)")
    g.add_argument("--max-extra-warmup", type=int, default=DEFAULTS.max_extra_warmup,
                   help="most sweeps per chain the warm-up is extended by, one --checkpoint-every chunk at a time, "
                        "while any chain's fit still trends (a test on its potential energy, "
                        f"docs/joint_inference.md); 0: no check (default {DEFAULTS.max_extra_warmup})")
    g.add_argument("--draws", type=int, default=DEFAULTS.draws,
                   help="posterior draws per chain (default 300); with --target-ess, the most draws per chain "
                        "(default 5000)")
    g.add_argument("--target-ess", type=float, default=DEFAULTS.target_ess,
                   help="run until every lens parameter has ESS >= this (400 is the usual target) and split R-hat "
                        "<= --max-rhat, checking after every --checkpoint-every draws, or until --draws or "
                        "--max-minutes ends; progress lines give the projected time to the target")
    g.add_argument("--max-rhat", type=float, default=DEFAULTS.max_rhat,
                   help=f"R-hat target of --target-ess runs (default {DEFAULTS.max_rhat})")
    g.add_argument("--max-minutes", type=float, default=DEFAULTS.max_minutes,
                   help="wall-clock budget of a --target-ess run (the whole run); a run stopped by it keeps its "
                        "checkpoint, so the same command continues it")
    g.add_argument("--thinning", type=int, default=DEFAULTS.thinning,
                   help="keep every k-th draw (bounds memory of source draws)")
    g.add_argument("--chain-method", choices=("sequential", "parallel", "vectorized"),
                   default=DEFAULTS.chain_method,
                   help="how chains run: sequential (progress bar), parallel (one device per chain), "
                        "vectorized (jax.vmap, no progress bar)")
    g.add_argument("--refresh-sigma", default=DEFAULTS.refresh_sigma, type=_refresh_sigma_arg,
                   help="with --source-move refresh: 'auto' (partial refresh from 3x the median noise sd), a noise "
                        "level in image units, or 'none' (a full reverse trajectory every sweep); a value other "
                        "than auto selects the refresh")
    g.add_argument("--source-move", choices=SOURCE_MOVES, default=DEFAULTS.source_move,
                   help="source move per sweep: 'split-gibbs' (exact split-Gibbs move: a Gaussian data step "
                        "and an unguided denoise), 'refresh' (guided partial refresh from --refresh-sigma; not "
                        "stationary with a trained prior, docs/source_posterior.md); 'auto' (default): split-gibbs "
                        "unless --refresh-sigma is given")
    g.add_argument("--split-gibbs-floor", default=DEFAULTS.split_gibbs_floor, type=_split_gibbs_floor_arg,
                   help="noise level sigma_f of the split-Gibbs move's prior p * N(0, sigma_f^2 I), in the source "
                        "maps' units (the prior's flux scale included): larger pulls the source (and the lens) less towards the prior's galaxies "
                        "and leaves the source noisier; 'auto' (default): the prior's sigma at diffusion time "
                        "0.001 (0.005 for the shipped priors at flux scale 1; docs/joint_inference.md)")
    g.add_argument("--warmup-source-move", choices=WARMUP_SOURCE_MOVES, default=DEFAULTS.warmup_source_move,
                   help="moves the source in the first half of warm-up instead of --source-move: 'draw' (a fresh "
                        "guided draw every sweep: a fast descent from a poor warm start), 'refresh' (the guided "
                        "partial refresh), 'none': the sweep's move throughout; 'auto' (default): 'draw' with "
                        "split Gibbs, only in chains whose start misfits (chi^2/N above 1 + 20 sqrt(2/N)), each until "
                        "a sweep fits within 1 + 5 sqrt(2/N), "
                        "'none' with the refresh or vectorized chains; warm-up draws are discarded")
    g.add_argument("--warm-start-steps", type=int, default=DEFAULTS.warm_start_steps,
                   help="reverse-SDE steps of the continuous-time GibbsDDRM draw that starts each chain")
    g.add_argument("--warm-start-tries", type=_warm_start_tries_arg, default=DEFAULTS.warm_start_tries,
                   metavar="auto|N",
                   help="continuous-time trajectories per chain, pooled over chains and ranked by residual chi^2: "
                        "the chains start from the best-fitting ones; 'auto' (default): a pool of 8, i.e. "
                        "ceil(8 / --chains) per chain (with --warm-start-pool adaptive the most per chain)")
    g.add_argument("--warm-start-pool", choices=WARM_START_POOLS, default=DEFAULTS.warm_start_pool,
                   help="full (default): --warm-start-tries trajectories per chain; adaptive: with the lens "
                        "pre-fit's starts, one per chain at a time until every chain has its own start in the best "
                        "mode (2-4 instead of 8 trajectories, but measured less robust: docs/performance.md)")
    g.add_argument("--source-shift", choices=SOURCE_SHIFTS, default=DEFAULTS.source_shift,
                   help="sampled: sample the source grid's sub-pixel placement as a constant deflection "
                        "(sites alpha_x, alpha_y, uniform over two source pixels), so the lens posterior averages "
                        "over where the grid lies under the source (docs/joint_inference.md); none: the grid stays "
                        f"where --source-center puts it; auto (default): {AUTO_SOURCE_SHIFT}")
    g.add_argument("--lens-light", choices=("none", "sersic"), default=DEFAULTS.lens_light,
                   help="sersic: model the deflector's light with elliptical Sérsic components (sites "
                        "lens_light_amp, lens_light_R_sersic, ...; docs/real_data.md); none (default): the image "
                        "holds the lensed source only")
    g.add_argument("--lens-light-components", type=int, default=DEFAULTS.lens_light_components,
                   help="Sérsic components of the lens light (default 1)")
    g.add_argument("--tie-light-center", action="store_true", default=DEFAULTS.tie_light_center,
                   help="fix the lens-light centre to the mass centre")
    g.add_argument("--no-fits-products", dest="fits_products", action="store_false",
                   help="do not write the FITS products (model, lens light, lensed source, residuals, source "
                        "mean and sd) beside --out")
    g.add_argument("--lens-prefit", choices=("sersic", "none"), default=DEFAULTS.lens_prefit,
                   help="sersic (default): start the warm-start trajectories from the best lenses of a "
                        "multi-start Sérsic + shapelet fit (finds the lens's basin; docs/joint_inference.md); "
                        "none: from prior draws of the lens")
    g.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every,
                   help="draws per chunk between checkpoints (<out>.ckpt.npz; rerun the same command to resume; "
                        "it is removed when the outputs are written, and refused if written by another run)")
    g.add_argument("--no-resume", action="store_true", help="ignore (and overwrite) an existing checkpoint")
    g.add_argument("--truth", default=DEFAULTS.truth,
                   help="truth file (blindlens simulate) to overlay on the figures")
    g.add_argument("--figures", default=DEFAULTS.figures,
                   help="directory for the figures and summary text (created if missing; default: beside --out)")


def _run_joint_sample(args):
    from . import pipeline

    idata, summary, _ = pipeline._sample(args.observation, args.out, SampleOptions.from_namespace(args),
                                         load_prior=_load_source_prior, write_outputs=_write_joint_outputs)
    return _report_run(idata, summary, strict=args.strict)


def _sample_inputs(args) -> dict:
    """The input files of ``blindlens sample`` (for the output-path checks)."""
    from .pipeline import sample_inputs

    return sample_inputs(args.observation, SampleOptions.from_namespace(args), fixed_lens=args.fixed_lens)


def _sample_fingerprint(args, prior) -> dict:
    """Everything that defines a ``blindlens sample`` joint run, for its checkpoint."""
    from .pipeline import sample_fingerprint

    return sample_fingerprint(args.observation, SampleOptions.from_namespace(args), prior)



STRICT_EXIT = 3
"""Exit status of ``--strict`` runs whose diagnostics failed (:func:`blindlens.check_run`)."""


def _report_run(idata, summary=None, *, strict=False) -> int:
    """Print the run diagnostics (:func:`blindlens.check_run`), append them to ``summary``; the exit code."""
    from .results.run_diagnostics import check_run

    report = check_run(idata, warn=False)  # printed below; Python callers get the warnings
    text = str(report)
    print(text, flush=True)
    if summary is not None:
        from pathlib import Path

        Path(summary).write_text(Path(summary).read_text() + "\n" + text + "\n")
    if not report.ok:
        print(f"blindlens: {len(report.warnings)} diagnostic check(s) failed (see WARNING lines above)"
              + ("" if strict else "; pass --strict to make this a nonzero exit"), file=sys.stderr)
    return STRICT_EXIT if strict and not report.ok else 0


def _add_demo(sub):
    p = sub.add_parser(
        "demo",
        help="simulate a lens from the bundled galaxy and infer lens + source blindly (< 10 min on 2 CPU cores)",
        description=(
            "Simulate the bundled example lens (SIE + shear) with the bundled held-out galaxy, then run "
            "blind joint inference (BlindLensGibbs: diffusion source step + NUTS on the lens, chains "
            "started by continuous-time GibbsDDRM draws) with the default score prior, and write the "
            "InferenceData, figures and a one-page summary (posterior vs truth, chi^2/N, R-hat, ESS)."
        ),
    )
    p.add_argument("--out", required=True,
                   help="output directory (created if missing; files of an earlier demo in it are replaced)")
    p.add_argument("--prior", default="default",
                   help="'default' (shipped 32x32 prior), 'highres' (shipped 64x64 prior at 0.05\"/pixel) or a prior file")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--draws", type=int, default=25)
    p.add_argument("--steps", type=int, default=25, help="reverse-SDE steps per source draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--source-resolution", choices=("prior", "native"), default="prior",
        help="'prior' (default): the bundled galaxy binned to the prior's pixel grid, so the model is well "
        "specified; 'native': simulated at its own 0.05\"/pixel, finer than the prior's grid (a misspecified "
        "model: expect chi^2/N > 1 and biased lens parameters, docs/joint_inference.md)",
    )
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {STRICT_EXIT} when a run diagnostic fails (the short default demo fails "
                        "R-hat/ESS: run longer)")
    p.set_defaults(run=_run_demo)


def _run_demo(args):
    for name in ("chains", "draws", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1.")
    from .io.run_checkpoint import check_output_dir

    check_output_dir("--out", args.out)
    codes = []
    _demo(args.out, _load_source_prior(args.prior), chains=args.chains, warmup=args.warmup, draws=args.draws,
          steps=args.steps, seed=args.seed, source_resolution=args.source_resolution, strict=args.strict,
          exit_codes=codes)
    return codes[-1] if codes else 0


def _demo(out_dir, prior, *, strict=False, exit_codes=None, **settings):
    """The demo (:func:`blindlens.demo.run_demo`) with the run diagnostics printed and appended to its
    summary; their exit code (``--strict``) is appended to ``exit_codes`` when a list is given.
    Returns the summary path."""
    from .demo import run_demo

    summary, idata = run_demo(out_dir, prior, **settings)
    code = _report_run(idata, summary, strict=strict)
    if exit_codes is not None:
        exit_codes.append(code)
    return summary


def _add_catalogue(sub):
    p = sub.add_parser(
        "catalogue",
        help="model a catalogue of lenses on Dask (one netCDF per lens, a summary table)",
        description=(
            "Run joint inference ('blindlens sample') on every lens of INPUT with Dask distributed: a "
            "LocalCluster of --workers processes, or a running cluster (--scheduler). Writes DIR/<name>.nc "
            "per lens and DIR/summary.csv and DIR/summary.parquet (one row per lens: status, error, "
            "posterior mean, sd and 68% interval of each lens parameter, max R-hat, min ESS, chi^2/N, flags, "
            "wall time). Finished lenses are skipped on a rerun; a failed lens is a row, not a crash. "
            "See docs/catalogue.md."
        ),
    )
    p.add_argument("input", help="a directory or glob of observation files (.fits/.npz; *_truth.npz skipped), or a "
                                 "CSV with a column 'observation', optional 'name' and per-lens option columns "
                                 "(lens_model, truth, seed, ...)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    _add_sampling_arguments(p)
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes of the LocalCluster (one lens at a time each; default 2); 0: lenses in "
                        "sequence in this process, without Dask")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="join a running Dask scheduler (tcp://host:8786, or a scheduler file .json) instead of "
                        "starting a LocalCluster")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="run lenses N at a time in one compiled, vectorised program (the pure Gibbs core: "
                        "fixed-length HMC lens move, no pre-fit; docs/catalogue.md) instead of one 'blindlens "
                        "sample' per lens")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_catalogue)


def _run_catalogue(args):
    from .catalogue import run_catalogue

    table = run_catalogue(args.input, args.out, SampleOptions.from_namespace(args), workers=args.workers,
                          scheduler=args.scheduler, progress=not args.no_progress, batch_size=args.batch_size)
    counts = table["status"].value_counts()
    print(f"{len(table)} lenses: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "flagged", "incomplete",
                                                                               "error"))
          + f" ({int(table['cached'].sum())} finished before); wrote {args.out}/summary.csv and summary.parquet")
    for row in table[table["status"] == "error"].itertuples():
        print(f"  {row.name}: {row.error}", file=sys.stderr)
    return 0


_REGISTRY: list = [_add_make_galaxies, _add_train_prior, _add_simulate, _add_plot_observation, _add_sample, _add_demo,
                   _add_catalogue, _add_example]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindlens",
        description="Blind strong-lens inversion with a score-based diffusion source prior.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _REGISTRY:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"blindlens {args.command}: error: {err}", file=sys.stderr)
        return 2
