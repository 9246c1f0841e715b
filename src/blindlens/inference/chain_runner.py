"""Run MCMC chains in chunks: to a fixed length, or until the lens posterior has converged.

A user's question is "how long until my posterior is converged", not "how many sweeps". Here
:func:`run_chains` runs any NumPyro MCMC kernel (:class:`~blindlens.gibbs_kernel.BlindLensGibbs`
above all) as

1. one warm-up (for a blindlens kernel, chains started from one pool of warm-start trajectories
   ranked by fit, :mod:`blindlens.chain_starts`, and chains left in a worse mode after warm-up
   reset to the best one), extended chunk by chunk, with ``max_extra_warmup``, while any chain's
   fit still trends (:mod:`blindlens.inference.settling`): a run whose chains have
   settled is sampled exactly as without the check;
2. sampling in chunks of ``chunk`` draws per chain, with a data-only checkpoint after warm-up and
   after every chunk (:mod:`blindlens.run_checkpoint`): a killed run resumes bit for bit, and an
   interrupted run can be continued with a larger budget;
3. stopping either after ``num_draws`` draws (a fixed-length run) or, with a
   :class:`ConvergenceTarget`, at the first chunk after which every monitored site has
   rank-normalised split R-hat <= ``max_rhat`` and bulk ESS >= ``target_ess``
   (:mod:`blindlens.inference.mixing_diagnostics`, as :func:`blindlens.check_run`), or when the
   draw or time budget ends, whichever comes first.

After every chunk of a convergence-driven run a line reports the current max R-hat and min ESS
(with the sites that set them) and the projected draws and time to the target, assuming the ESS
grows in proportion to the draws (a chain past its transient). Convergence is judged on the draws
of all chunks together; R-hat <= 1.01 with ESS >= 400 is the current recommendation (Vehtari,
Gelman, Simpson, Carpenter & Buerkner 2021, Bayesian Analysis 16, 667).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from .._types import PRNGKeyArray
from .settling import MIN_WINDOW, settle_check

__all__ = ["ChainRun", "ConvergenceCheck", "ConvergenceTarget", "RunClock", "SETTLE_STREAM", "convergence_check",
           "run_chains"]


SETTLE_STREAM = 0x5E771E
"""``fold_in`` index of the key stream of chunks run while chains settle (:func:`run_chains`)."""


class ConvergenceTarget(NamedTuple):
    """When a convergence-driven run stops (:func:`run_chains`).

    Attributes
    ----------
    target_ess
        Smallest effective sample size over the monitored sites (all chains together).
    max_rhat
        Largest split R-hat over the monitored sites.
    max_minutes
        Wall-clock budget of the whole run (warm start, compilation and warm-up included), in
        minutes; a chunk projected to end past it is not started (the first chunk always runs).
        ``None``: no time limit.
    max_draws
        Largest number of draws per chain.
    """

    target_ess: float = 400.0
    max_rhat: float = 1.01
    max_minutes: float | None = None
    max_draws: int = 5000


class ConvergenceCheck(NamedTuple):
    """The convergence of a run after ``draws`` draws per chain (:func:`convergence_check`)."""

    draws: int
    seconds: float
    max_rhat: float
    worst: str
    min_ess: float
    least: str

    def reached(self, target: ConvergenceTarget) -> bool:
        """Whether ``target``'s R-hat and ESS are both met (NaN never is)."""
        return bool(self.max_rhat <= target.max_rhat and self.min_ess >= target.target_ess)


class ChainRun(NamedTuple):
    """The result of :func:`run_chains`.

    Attributes
    ----------
    samples, stats
        ``{name: (chains, draws, ...)}`` NumPy arrays of the draws and of the kernel's extra fields.
    draws
        Draws per chain done (before thinning).
    converged
        ``True``/``False`` for a convergence-driven run, ``None`` for a fixed-length one.
    stop_reason
        ``"fixed length"``, ``"converged"``, ``"draw budget"`` or ``"time budget"``.
    history
        One :class:`ConvergenceCheck` per chunk of a convergence-driven run (empty otherwise).
    extra_warmup
        Sweeps per chain run after the warm-up and discarded because chains were still settling.
    """

    samples: dict
    stats: dict
    draws: int
    converged: bool | None
    stop_reason: str
    history: tuple
    extra_warmup: int = 0


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class RunClock:
    """Elapsed time and ETA of a whole run (warm start and compilation included), as stdout lines.

    Parameters
    ----------
    enabled
        Print the lines (``False``: silent, the clock still runs).
    timer
        Seconds since some origin (default :func:`time.time`; tests pass a fake one).
    """

    def __init__(self, enabled: bool = True, timer: Callable[[], float] = time.time):
        self._time = timer
        self.start = timer()
        self.enabled = enabled
        self._sampling_start = None

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self._time() - self.start

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[{_minutes(self.elapsed())}] {message}", flush=True)

    def warmed_up(self, warmup: int, draws: int | None) -> None:
        """After warm-up: an upper bound on the rest from the warm-up's rate (it includes the start)."""
        now = self._time()
        self._sampling_start = now
        if draws is None:
            self.say("warm-up done; sampling until converged")
            return
        per_sweep = (now - self.start) / max(warmup, 1)
        self.say(f"warm-up done; sampling {draws} draws per chain, ETA <= {_minutes(per_sweep * draws)} "
                 "(from the warm-up rate, which includes the warm start and compilation)")

    def seconds_per_draw(self, done: int, resumed: int = 0) -> float:
        """Sampling seconds per draw per chain so far in this process (``inf`` before any)."""
        if self._sampling_start is None:
            self._sampling_start = self.start
        n = done - resumed
        return (self._time() - self._sampling_start) / n if n > 0 else math.inf

    def sampled(self, done: int, draws: int, resumed: int = 0) -> None:
        """After a chunk of draws (``resumed`` of them from a checkpoint): the ETA from this run's rate."""
        rate = self.seconds_per_draw(done, resumed)
        self.say(f"{done} of {draws} draws per chain done, ETA {_minutes(rate * (draws - done))}")


def _scalars(samples: dict, sites: Sequence[str]):
    """``(label, (chain, draw))`` for every scalar component of the ``sites`` draws."""
    for name in sites:
        x = np.asarray(samples[name])
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        if flat.shape[2] == 1:
            yield name, flat[..., 0]
        else:
            for i in range(flat.shape[2]):
                yield f"{name}[{i}]", flat[..., i]


def convergence_check(samples: dict, sites: Sequence[str], draws: int = 0, seconds: float = 0.0) -> ConvergenceCheck:
    """Max split R-hat and min effective sample size over the scalar components of ``sites``.

    Parameters
    ----------
    samples
        ``{site: (chain, draw, ...)}`` draws.
    sites
        Sites to monitor (for a blind lens fit, the lens parameters).
    draws, seconds
        Recorded in the result (draws per chain done; elapsed wall time).

    Returns
    -------
    ConvergenceCheck
        NaN R-hat/ESS when a chain has fewer than 4 draws or a draw is not finite
        (rank-normalised split R-hat and bulk ESS:
        :func:`blindlens.inference.mixing_diagnostics.split_rhat_and_ess`).
    """
    from .mixing_diagnostics import split_rhat_and_ess

    worst = least = ""
    max_rhat, min_ess = -math.inf, math.inf
    for label, x in _scalars(samples, sites):
        r, e = split_rhat_and_ess(x)
        r, e = (math.inf if math.isnan(r) else r), (0.0 if math.isnan(e) else e)
        if r > max_rhat:
            max_rhat, worst = r, label
        if e < min_ess:
            min_ess, least = e, label
    if not worst:
        raise ValueError(f"no draws of the monitored sites {list(sites)} to judge convergence by.")
    return ConvergenceCheck(int(draws), float(seconds), float(max_rhat), worst, float(min_ess), least)


def _projection(check: ConvergenceCheck, target: ConvergenceTarget, rate: float) -> str:
    """"projected N more draws per chain (ETA ...)" assuming ESS grows in proportion to the draws."""
    if check.min_ess <= 0 or not math.isfinite(check.min_ess):
        return "projection: not yet (ESS undefined)"
    more = max(0, math.ceil(check.draws * target.target_ess / check.min_ess) - check.draws)
    if more == 0:
        return "ESS target met; waiting for R-hat"
    eta = f", ETA {_minutes(rate * more)}" if math.isfinite(rate) else ""
    return f"projected {more} more draws per chain for ESS {target.target_ess:.0f}{eta}"


def _pools_warm_starts(kernel) -> bool:
    """Whether the chains start from one ranked pool of warm starts (:mod:`blindlens.chain_starts`)."""
    return (getattr(kernel, "warm_start", None) is not None and getattr(kernel, "init_strategy", None) is None
            and getattr(kernel, "lens_search", None) is None and hasattr(kernel, "joint_model"))


def start_message(kernel, chains: int) -> str:
    """The line printed before the silent part of a run: warm start and compilation."""
    ws = getattr(kernel, "warm_start", None)
    if getattr(kernel, "init_strategy", None) is not None or ws is None:
        start = "start: a source draw per chain"
    elif _pools_warm_starts(kernel):
        prefit = getattr(kernel, "lens_prefit", None)
        count = f"{kernel.warm_start_tries * chains}"
        if prefit is not None and getattr(kernel, "warm_start_pool", "full") == "adaptive":
            count = f"{chains} (up to {kernel.warm_start_tries * chains}, until each chain has a start in the best mode)"
        start = (f"warm start: {count} continuous-time trajectories of {ws.num_steps} "
                 "steps, ranked together by residual chi^2")
        if prefit is not None and hasattr(prefit, "num_starts"):  # a config: the pre-fit runs now
            start = (f"lens pre-fit: {prefit.num_starts} Sérsic + shapelet fits from prior draws; "
                     + start + ", started from its best lenses")
        elif prefit is not None:  # already run (it placed the source grid)
            start += ", started from the lens pre-fit's best lenses"
    else:
        start = (f"warm start: {kernel.warm_start_tries} continuous-time trajectories of {ws.num_steps} steps per "
                 "chain")
    return (f"{start}, then compiling the Gibbs sweep, for {chains} chain(s); the progress bar starts after "
            "this (minutes on a CPU) ...")


def resume_state(kernel, ck, chains: int):
    """The MCMC state of checkpoint ``ck``, re-assembled with the structure of this process's kernel state.

    The template is the state ``kernel.init`` builds from the checkpoint's sample-site values (the
    same call ``MCMC.run`` makes for a fresh kernel; no warm start, as every site is given).
    """
    from ..io.run_checkpoint import CheckpointError, restore_state

    try:
        z0 = {k: (v[0] if chains > 1 else v) for k, v in ck.init_params.items()}
        template = kernel.init(jax.random.key(0), 0, z0, (), {})
    except Exception as err:  # the stored site values do not fit this kernel
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(
            f"checkpoint {ck.path} does not fit this run's sampler (its site values {sorted(ck.init_params)}: "
            f"{text}); pass --no-resume to start afresh (or delete the file)."
        ) from None
    return restore_state(ck, template, num_chains=chains)


def _default_sites(kernel, samples: dict) -> list[str]:
    """The lens sites of a blindlens kernel, less its nuisance sites; otherwise every sampled site."""
    model = getattr(kernel, "joint_model", None)
    if model is not None:
        from .numpyro_model import lens_site_names, nuisance_site_names

        nuisance = set(nuisance_site_names(model.lens_model))
        return [s for s in lens_site_names(model.lens_model) if s in samples and s not in nuisance]
    return sorted(samples)


class _WithoutProgressBars:
    """A text stream that forwards everything except progress-bar redraws (text holding ``\\r``)
    and the bare newlines that end them; a newline that ends forwarded text passes."""

    def __init__(self, target):
        self._target = target
        self._open_line = False

    def write(self, text: str) -> int:
        if "\r" in text or (not text.strip() and not self._open_line):
            return len(text)
        self._target.write(text)
        self._open_line = not text.endswith("\n")
        return len(text)

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):  # encoding, fileno, flush, ...: those of the real stream
        return getattr(self._target, name)


def _mcmc(kernel, *, num_warmup: int, num_samples: int, num_chains: int, method, thinning: int, progress: bool):
    """``(numpyro.infer.MCMC, context)``: the sampler of one phase and the context to run it in.

    NumPyro's silent path (``progress_bar=False``) traces and compiles its sampling loop anew on
    every ``run`` call, once per sequential chain (its loop function is a fresh ``jit`` each call),
    and every executable stays alive: measured on a 96 x 96 lens, 18-22 s of compilation per chain
    and chunk, and about 3,600 more memory mappings each, until XLA could not map code any more
    ("LLVM ERROR: Unable to allocate section memory") after some 15 chunks of a ``--target-ess`` run
    in one process. Its progress-bar path jits one step function, which JAX compiles once. So
    sequential chains always take that path (also where NumPyro would switch bars off, under
    ``CI``), and when no bars are wanted their redraws are dropped from ``stderr`` while
    everything else written there still passes. Vectorised and parallel chains keep NumPyro's own
    settings (their bars are off or per device).
    """
    from numpyro.infer import MCMC

    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=method, thinning=thinning, progress_bar=progress)
    if method != "sequential":
        return mcmc, contextlib.nullcontext()
    show = progress and mcmc.progress_bar  # NumPyro switches bars off under CI
    mcmc.progress_bar = True
    return mcmc, (contextlib.nullcontext() if show else contextlib.redirect_stderr(_WithoutProgressBars(sys.stderr)))


def run_chains(
    kernel,
    key: PRNGKeyArray,
    *,
    num_chains: int = 2,
    num_warmup: int = 200,
    num_draws: int | None = None,
    target: ConvergenceTarget | None = None,
    sites: Sequence[str] | None = None,
    chunk: int = 100,
    thinning: int = 1,
    chain_method: str = "sequential",
    init_params: dict | None = None,
    checkpoint: str | Path | None = None,
    fingerprint: dict | None = None,
    resume: bool = True,
    progress: bool = True,
    clock: RunClock | None = None,
    max_extra_warmup: int = 0,
) -> ChainRun:
    """Warm-up, then chunked sampling to ``num_draws`` draws or to ``target``, with checkpoints.

    Parameters
    ----------
    kernel
        A NumPyro MCMC kernel; a :class:`~blindlens.gibbs_kernel.BlindLensGibbs` gets pooled warm
        starts and worse-mode resets (:mod:`blindlens.chain_starts`).
    key
        PRNG key (warm-up uses ``fold_in(key, 0)``, the chunk starting at draw ``d`` uses
        ``fold_in(key, 1 + d)``: a resumed run repeats an uninterrupted one exactly).
    num_chains, num_warmup
        Chains and warm-up iterations per chain.
    num_draws
        Draws per chain of a fixed-length run; give this or ``target``, not both.
    target
        Stop criteria of a convergence-driven run (:class:`ConvergenceTarget`).
    sites
        Sites whose convergence is judged (default: the lens parameters of a blindlens kernel,
        less its nuisance sites (:func:`~blindlens.numpyro_model.nuisance_site_names`); every
        sampled site otherwise).
    chunk
        Draws per chain between checkpoints and convergence checks.
    thinning, chain_method
        As for :class:`numpyro.infer.MCMC` (``"vectorized"`` is ``jax.vmap``).
    init_params
        Starting values for the warm-up, as for :meth:`numpyro.infer.MCMC.warmup` (a leading chain
        axis with several chains); default: the kernel's own start (pooled warm starts for a
        blindlens kernel).
    checkpoint, fingerprint, resume
        Data-only checkpoint path (or ``None``), the run's fingerprint stored in it, and whether an
        existing checkpoint is resumed (one with another fingerprint is refused,
        :func:`~blindlens.run_checkpoint.check_fingerprint`). The checkpoint is left in place: the
        caller removes it once its outputs are written.
    progress
        NumPyro progress bars and this module's progress lines.
    clock
        A :class:`RunClock` started by the caller (so that its set-up time counts), or ``None``.
    max_extra_warmup
        Most sweeps per chain the warm-up is extended by while chains are still settling: each
        chunk before the first kept one is judged by :func:`~blindlens.inference.settling.settle_check`
        against the window before it (the first against the warm-up's last ``chunk`` sweeps after
        any descent phase) and discarded while any chain's fit still trends; 0: no check
        (each chunk of a settling run after the first discarded one uses the key
        ``fold_in(fold_in(key, SETTLE_STREAM), extra)``, ``extra`` the sweeps discarded before it).

    Returns
    -------
    ChainRun
    """
    from ..io.run_checkpoint import (
        append_draws,
        check_fingerprint,
        legacy_checkpoint_path,
        load_checkpoint,
        save_checkpoint,
    )

    if max_extra_warmup < 0:
        raise ValueError(f"max_extra_warmup must be >= 0, got {max_extra_warmup}.")
    if (num_draws is None) == (target is None):
        raise ValueError("give num_draws (a fixed-length run) or target (a convergence-driven run), not both.")
    if num_draws is not None and num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}.")
    if target is not None:
        if not target.target_ess > 0 or not target.max_rhat > 1.0 or target.max_draws < 4:
            raise ValueError(f"{target} needs target_ess > 0, max_rhat > 1 and max_draws >= 4.")
        if target.max_minutes is not None and not target.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {target.max_minutes}.")
    cap = num_draws if target is None else int(target.max_draws)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    fingerprint = dict(fingerprint or {})
    method = jax.vmap if chain_method == "vectorized" else chain_method
    clock = RunClock(progress) if clock is None else clock
    state, done, samples, stats, extra, reference = None, 0, None, None, 0, None
    if checkpoint is not None:
        legacy = legacy_checkpoint_path(checkpoint.with_name(checkpoint.name.removesuffix(".ckpt.npz")))
        if legacy.exists():
            print(f"note: ignoring {legacy}: pickle checkpoints of older blindlens versions are never loaded "
                  "(they can run code); delete it.")
    if checkpoint is not None and checkpoint.exists() and resume:
        ck = load_checkpoint(checkpoint)
        check_fingerprint(ck.fingerprint, fingerprint, checkpoint)
        state, done = resume_state(kernel, ck, num_chains), ck.done
        samples, stats = ck.samples or None, ck.stats or None
        extra, reference = ck.extra_warmup, ck.settle_reference
        print(f"resuming from {checkpoint}: {done} draws per chain done")
    if state is None:
        mcmc, quiet = _mcmc(kernel, num_warmup=num_warmup, num_samples=max(1, min(chunk, cap)),
                            num_chains=num_chains, method=method, thinning=thinning, progress=progress)
        clock.say(start_message(kernel, num_chains))
        init = init_params
        if init is None and _pools_warm_starts(kernel):
            from .chain_starts import pooled_chain_starts

            starts = pooled_chain_starts(kernel, jax.random.fold_in(key, 2), num_chains)
            clock.say(starts.message)
            init = starts.init_params if num_chains > 1 else {k: v[0] for k, v in starts.init_params.items()}
        settle = max_extra_warmup > 0 and num_warmup > 0
        with quiet:
            mcmc.warmup(jax.random.fold_in(key, 0), init_params=init, collect_warmup=settle,
                        extra_fields=("potential_energy",) if settle else ())
        if settle:
            reference = _settle_reference(kernel, mcmc, num_warmup, num_chains, chunk)
        clock.warmed_up(num_warmup, num_draws)
        state = jax.device_get(mcmc.post_warmup_state)
        core = getattr(state, "core", None)
        if core is not None and num_warmup > 0:  # what warm-up cost, descent included (issue 18's unit)
            passes = ", ".join(str(int(p)) for p in np.atleast_1d(np.asarray(core.num_score_evals)))
            clock.say(f"network passes per chain in the warm-up sweeps: {passes}")
        if num_chains > 1 and hasattr(kernel, "joint_model"):
            from .chain_starts import reset_worse_chains

            state, reset, message = reset_worse_chains(kernel, state)
            if message:
                clock.say(message)
            if reference is not None and reset:
                reference = np.array(reference)
                reference[reset] = np.nan  # a restarted chain has no window of its own: not judged first
        if checkpoint is not None:
            save_checkpoint(checkpoint, fingerprint=fingerprint, state=state, done=0, settle_reference=reference)
    init_params = state.z  # skips the warm-start draw when a fresh process re-inits the kernel
    mcmc, resumed, history = None, done, []
    reason = "fixed length" if target is None else "draw budget"
    if target is not None and done > 0 and samples:
        history.append(convergence_check(samples, sites or _default_sites(kernel, samples), done, clock.elapsed()))
    while True:
        if history and history[-1].reached(target):  # (a resumed run may have converged already)
            reason = "converged"
            break
        if done >= cap:
            break
        n = min(chunk, cap - done)
        if target is not None and target.max_minutes is not None and done > resumed:
            rate = clock.seconds_per_draw(done, resumed)
            if clock.elapsed() + rate * n > 60.0 * target.max_minutes:
                reason = "time budget"
                break
        if mcmc is None or mcmc.num_samples != n:
            mcmc, quiet = _mcmc(kernel, num_warmup=0, num_samples=n, num_chains=num_chains, method=method,
                                thinning=thinning, progress=progress)
        mcmc.post_warmup_state = state
        chunk_key = (jax.random.fold_in(key, 1 + done) if done > 0 or extra == 0
                     else jax.random.fold_in(jax.random.fold_in(key, SETTLE_STREAM), extra))
        with quiet:
            mcmc.run(chunk_key, init_params=init_params, extra_fields=("potential_energy",) if max_extra_warmup else ())
        new_stats = jax.device_get(mcmc.get_extra_fields(group_by_chain=True))
        state = jax.device_get(mcmc.last_state)
        if done == 0 and max_extra_warmup > 0:
            energy = np.asarray(new_stats["potential_energy"], np.float64).reshape(num_chains, -1)
            check = settle_check(energy, reference)
            if not check.settled and extra < max_extra_warmup:
                extra, reference = extra + n, energy
                if checkpoint is not None:
                    save_checkpoint(checkpoint, fingerprint=fingerprint, state=state, done=0, extra_warmup=extra,
                                    settle_reference=reference)
                clock.say(f"still settling after {num_warmup + extra} warm-up sweeps: the fit of {check.describe()} "
                          f"still trends (z > 0: improving); these {n} sweeps count as warm-up (at most "
                          f"{max_extra_warmup} in all)")
                continue
            if not check.settled:
                clock.say(f"WARNING: the fit of {check.describe()} still trends after {num_warmup + extra} warm-up "
                          "sweeps, the most --max-extra-warmup allows; these draws are kept: rerun with a larger "
                          "--warmup or --max-extra-warmup")
            elif extra:
                clock.say(f"chains settled after {num_warmup + extra} warm-up sweeps")
        samples = append_draws(samples, jax.device_get(mcmc.get_samples(group_by_chain=True)))
        stats = append_draws(stats, new_stats)
        done += n
        if checkpoint is not None:
            save_checkpoint(checkpoint, fingerprint=fingerprint, state=state, done=done, samples=samples, stats=stats,
                            extra_warmup=extra)
        if target is None:
            clock.sampled(done, num_draws, resumed)
            continue
        check = convergence_check(samples, sites or _default_sites(kernel, samples), done, clock.elapsed())
        history.append(check)
        clock.say(f"{done} draws per chain: max R-hat {check.max_rhat:.3f} ({check.worst}; want <= "
                  f"{target.max_rhat}), min ESS {check.min_ess:.0f} ({check.least}; want >= {target.target_ess:.0f}); "
                  + _projection(check, target, clock.seconds_per_draw(done, resumed)))
    if target is not None and reason != "converged":
        last = history[-1] if history else None
        detail = "" if last is None else (f": max R-hat {last.max_rhat:.3f} ({last.worst}), min ESS "
                                          f"{last.min_ess:.0f} ({last.least}) after {last.draws} draws per chain")
        clock.say(f"WARNING: stopped by the {reason} before converging{detail}; rerun the same command with a "
                  "larger --max-minutes/--draws to continue from the checkpoint")
    elif target is not None:
        clock.say(f"converged after {done} draws per chain")
    return ChainRun(samples or {}, stats or {}, done, None if target is None else reason == "converged", reason,
                    tuple(history), extra)


def _settle_reference(kernel, mcmc, num_warmup: int, num_chains: int, chunk: int):
    """``(chains, sweeps)`` potential energy of the warm-up's last ``chunk`` sweeps after its descent
    phase (a blindlens kernel's first sweeps move the source otherwise), or ``None`` if too few."""
    energy = np.asarray(jax.device_get(mcmc.get_extra_fields(group_by_chain=True))["potential_energy"], np.float64)
    energy = energy.reshape(num_chains, -1)
    descent = int(kernel.descent_sweeps(num_warmup)) if hasattr(kernel, "descent_sweeps") else 0
    window = energy[:, descent:][:, -chunk:]
    return window if window.shape[1] >= MIN_WINDOW else None
