"""The options of a joint ``blindlens sample`` run, and what their ``auto`` values resolve to.

:class:`SampleOptions` holds every option with the command line's defaults (:data:`DEFAULTS`);
the functions below turn an option's ``auto`` into what runs (:func:`source_shift`,
:func:`source_move`, :func:`warmup_source_move`, ...). :mod:`blindlens.pipeline` runs them and
re-exports all of this.

Adding a sampling option is one change here and one in the parser: a field of
:class:`SampleOptions` (named as the argparse ``dest``; input files marked with
``metadata={"file": True}`` so fingerprints hash their content) and its ``add_argument`` in
``blindlens.cli._add_sampling_arguments`` (default ``DEFAULTS.<field>``). A new field enters the
checkpoint fingerprint (:func:`blindlens.pipeline.sample_fingerprint`) only when it differs from its
default, so existing checkpoints stay valid.

Heavy libraries are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SampleOptions", "DEFAULTS", "SOURCE_MOVES", "WARM_START_POOLS", "WARMUP_SOURCE_MOVES", "SOURCE_SHIFTS", "AUTO_SOURCE_SHIFT",
           "AUTO_DESCENT_EXIT", "AUTO_DESCENT_THRESHOLD", "AUTO_WARM_START_POOL", "source_shift", "source_move", "warmup_source_move",
           "warmup_source_exit", "warmup_source_threshold", "warm_start_tries", "split_gibbs_config", "convergence_target", "observation_options"]


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
    source_size: Any = "auto"
    supersampling: int = 3
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
    chains: int = 4
    warmup: int = 200
    max_extra_warmup: int = 400
    draws: int | None = None
    target_ess: float | None = None
    max_rhat: float = 1.01
    max_minutes: float | None = None
    thinning: int = 1
    chain_method: str = "sequential"
    refresh_sigma: Any = "auto"
    source_move: str = "auto"
    split_gibbs_floor: Any = "auto"
    warmup_source_move: str = "auto"
    warm_start_steps: int = 200
    warm_start_tries: Any = "auto"
    warm_start_pool: str = "full"
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
                     "lens_light_components"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1.")
        if self.warmup < 0:
            raise ValueError("--warmup must be >= 0.")
        if self.split_gibbs_floor != "auto" and (isinstance(self.split_gibbs_floor, (str, bool))
                                                 or not self.split_gibbs_floor > 0):
            raise ValueError(f"--split-gibbs-floor must be 'auto' or a noise level > 0, got {self.split_gibbs_floor!r}.")
        if self.max_extra_warmup < 0:
            raise ValueError("--max-extra-warmup must be >= 0 (0 turns the settling check off).")
        if self.warm_start_tries != "auto" and (isinstance(self.warm_start_tries, (str, bool, float))
                                                 or int(self.warm_start_tries) < 1):
            raise ValueError(f"--warm-start-tries must be 'auto' or an integer >= 1, got {self.warm_start_tries!r}.")
        if (self.cutout_pixel is not None or self.cutout_sky is not None) != (self.cutout_size is not None):
            raise ValueError("a cut-out needs --cutout-size N and one centre, --cutout-pixel X Y or --cutout-sky RA DEC.")
        if self.cutout_pixel is not None and self.cutout_sky is not None:
            raise ValueError("give one cut-out centre: --cutout-pixel X Y or --cutout-sky RA DEC, not both.")
        if self.source_size not in (None, "auto") and (isinstance(self.source_size, (bool, float, str))
                                                       or self.source_size < 8):
            raise ValueError(f"--source-size must be 'auto' or a whole number of source pixels >= 8, "
                             f"got {self.source_size!r}.")
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
        if self.warm_start_pool not in WARM_START_POOLS:
            raise ValueError(f"--warm-start-pool must be {' or '.join(WARM_START_POOLS)}, got {self.warm_start_pool!r}.")
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


WARM_START_POOLS = ("full", "adaptive")
"""``--warm-start-pool`` (:data:`blindlens.gibbs_kernel.WARM_START_POOLS`, kept here so that the command
line's options cost no import)."""


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


AUTO_WARM_START_POOL = 8
"""Continuous-time trajectories in the chains' pool of warm starts with ``--warm-start-tries auto``
(the default): ``ceil(8 / chains)`` per chain, so that more chains do not lengthen the start-up
(2 chains: 4 each, the default before ``auto``; 8 chains: 1 each)."""


def warm_start_tries(options: SampleOptions) -> int:
    """Warm-start trajectories per chain: ``--warm-start-tries``, where ``auto`` (the default) is
    ``ceil(AUTO_WARM_START_POOL / chains)`` (:data:`AUTO_WARM_START_POOL`)."""
    if options.warm_start_tries == "auto":
        return max(1, -(-AUTO_WARM_START_POOL // int(options.chains)))
    return int(options.warm_start_tries)


AUTO_DESCENT_THRESHOLD = 20.0
"""``--warmup-source-move auto`` descends only in chains whose start misfits by more than this many
standard deviations of chi^2/N (``sqrt(2/N)``): a good warm start skips the descent's cost."""


AUTO_DESCENT_EXIT = 5.0
"""``--warmup-source-move auto``: a descending chain stops descending after the first sweep within this
many standard deviations of chi^2/N (the fit the run's residual check passes), not at the looser
:data:`AUTO_DESCENT_THRESHOLD` (measured on broad system 30: docs/joint_inference.md)."""


def warmup_source_exit(options: SampleOptions) -> float | None:
    """The fit (in sd of chi^2/N) at which a descending chain stops: :data:`AUTO_DESCENT_EXIT` for
    ``auto``, ``None`` (all its descent sweeps) for an explicit ``--warmup-source-move``."""
    return AUTO_DESCENT_EXIT if options.warmup_source_move == "auto" else None


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


def split_gibbs_config(options: SampleOptions, prior=None):
    """The :class:`~blindlens.split_gibbs.SplitGibbsConfig` of the split-Gibbs source move, else ``None``.

    ``--split-gibbs-floor`` other than ``auto`` is a noise level ``sigma_f`` in the source maps'
    units, turned into the config's ``t_final`` by ``prior.sde`` (its flux scale included), so
    ``prior`` is then needed.
    """
    if source_move(options) != "split-gibbs":
        return None
    from .source.split_gibbs import SplitGibbsConfig

    if options.split_gibbs_floor == "auto":
        return SplitGibbsConfig()
    sde = prior.sde
    floor = float(options.split_gibbs_floor)
    low, high = float(sde.sigma(0.0)), float(sde.sigma(1.0))
    if not low <= floor < high:
        raise ValueError(f"--split-gibbs-floor {floor:g} is outside the prior's noise range [{low:g}, {high:g}); "
                         "give a level inside it (or 'auto').")
    return SplitGibbsConfig(t_final=float(sde.time_at_sigma(floor)))
