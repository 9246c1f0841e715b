"""Denoising score matching for :class:`~blindlens.score_network.ScoreUNet`.

Loss (Vincent 2011; Song et al. 2021; weighting and targets of Karras et al. 2022, Eq. 8 and
Table 1): with ``t ~ U(0, 1)``, ``sigma = sigma(t)`` of the VE SDE (log-uniform noise levels),
``x_t = x_0 + sigma z``,

    L = E || F(c_in x_t, c_noise) - (x_0 - c_skip x_t) / c_out ||^2,

which is the EDM-weighted denoising loss ``lambda(sigma) ||D(x_t) - x_0||^2``. Adam with
warm-up and gradient clipping (optax), an exponential moving average (EMA) of the weights,
random dihedral augmentation (galaxy images have no preferred orientation), periodic
checkpoints and exact resume: the batch at step ``k`` depends only on ``(seed, k)``.

The optimiser itself is :func:`blindlens._optimisers.training_optimizer` (optax).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._optimisers import OptState, training_optimizer
from .._types import Array, Float, PRNGKeyArray
from .diffusion_sde import VESDE
from .score_network import ScoreNetworkConfig, ScoreUNet, native_convolutions
from .score_prior import ScorePrior

__all__ = ["TrainState", "TrainingConfig", "dsm_loss", "heldout_loss_by_sigma", "train_score_prior"]


class TrainingConfig(eqx.Module):
    """Optimisation settings (all static)."""

    batch_size: int = eqx.field(static=True, default=32)
    learning_rate: float = eqx.field(static=True, default=1e-3)
    warmup_steps: int = eqx.field(static=True, default=500)
    ema_decay: float = eqx.field(static=True, default=0.999)
    grad_clip: float = eqx.field(static=True, default=1.0)
    sigma_min: float = eqx.field(static=True, default=0.005)
    sigma_max: float = eqx.field(static=True, default=20.0)
    augment: bool = eqx.field(static=True, default=True)
    seed: int = eqx.field(static=True, default=0)

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


class TrainState(eqx.Module):
    model: ScoreUNet
    ema_model: ScoreUNet
    opt_state: OptState
    step: Array


def dsm_loss(model: ScoreUNet, sde: VESDE, x0: Float[Array, "B H W"], key: PRNGKeyArray) -> Float[Array, ""]:
    """EDM-weighted denoising score-matching loss on a batch (see the module docstring)."""
    k_t, k_z = jr.split(key)
    t = jr.uniform(k_t, (x0.shape[0],))
    sigma = sde.sigma(t)
    z = jr.normal(k_z, x0.shape, x0.dtype)
    x_t = x0 + sigma[:, None, None] * z

    def one(x0_i, x_t_i, s):
        c_skip, c_out, c_in, c_noise = model.preconditioning(s)
        target = (x0_i - c_skip * x_t_i) / c_out
        return jnp.mean((model.raw(c_in * x_t_i, c_noise) - target) ** 2)

    return jnp.mean(jax.vmap(one)(x0, x_t, sigma))


def _augment(key, batch):
    k1, k2, k3 = jr.split(key, 3)
    n = batch.shape[0]
    flip_r = jr.bernoulli(k1, shape=(n, 1, 1))
    flip_c = jr.bernoulli(k2, shape=(n, 1, 1))
    transpose = jr.bernoulli(k3, shape=(n, 1, 1))
    batch = jnp.where(flip_r, batch[:, ::-1, :], batch)
    batch = jnp.where(flip_c, batch[:, :, ::-1], batch)
    return jnp.where(transpose, jnp.swapaxes(batch, 1, 2), batch)


def _optimizer(config: TrainingConfig):
    return training_optimizer(config.learning_rate, config.warmup_steps, config.grad_clip)


@functools.lru_cache(maxsize=8)  # one compiled step per (config, sde): resumes in-process reuse it
def _make_step(config: TrainingConfig, sde: VESDE):
    optimizer = _optimizer(config)

    def step(state: TrainState, data: Float[Array, "N H W"]):
        key = jr.fold_in(jr.key(config.seed), state.step)
        k_idx, k_aug, k_loss = jr.split(key, 3)
        idx = jr.randint(k_idx, (config.batch_size,), 0, data.shape[0])
        batch = data[idx]
        if config.augment:
            batch = _augment(k_aug, batch)
        loss, grads = eqx.filter_value_and_grad(dsm_loss)(state.model, sde, batch, k_loss)
        updates, opt_state = optimizer.update(grads, state.opt_state, eqx.filter(state.model, eqx.is_inexact_array))
        model = eqx.apply_updates(state.model, updates)
        d = config.ema_decay
        ema = jax.tree_util.tree_map(
            lambda e, m: d * e + (1 - d) * m if eqx.is_inexact_array(e) else e, state.ema_model, model
        )
        return TrainState(model, ema, opt_state, state.step + 1), loss

    return step, optimizer


@functools.lru_cache(maxsize=8)
def _make_single_step(config: TrainingConfig, sde: VESDE):
    """One compiled optimisation step, traced with XLA's native convolutions.

    Outside a loop the native convolution is the faster one on the CPU (a batch-64 step of the
    64 x 64 prior: 1.26 s against 2.06 s with the matrix-product form); inside a ``lax.scan`` it is
    15x slower, so :func:`_make_multi_step` traces the same step with the default form.
    """
    step, optimizer = _make_step(config, sde)
    compiled = eqx.filter_jit(step)

    def native_step(state, data):
        with native_convolutions():
            return compiled(state, data)

    return native_step, optimizer


@functools.lru_cache(maxsize=8)
def _make_multi_step(config: TrainingConfig, sde: VESDE, num: int):
    """``num`` optimisation steps in one compiled call (``lax.scan``), returning the ``num`` losses.

    Identical to ``num`` calls of the single step (the batch at step ``k`` depends on
    ``(seed, k)`` only) but with one host round trip, which is what keeps an accelerator busy.
    """
    step, _ = _make_step(config, sde)

    @eqx.filter_jit
    def multi(state: TrainState, data: Float[Array, "N H W"]):
        dynamic, static = eqx.partition(state, eqx.is_array)

        def body(carry, _):
            new_state, loss = step(eqx.combine(carry, static), data)
            return eqx.partition(new_state, eqx.is_array)[0], loss

        dynamic, losses = jax.lax.scan(body, dynamic, None, length=num)
        return eqx.combine(dynamic, static), losses

    return multi


def _save_checkpoint(path: Path, state: TrainState, header: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write((json.dumps(header) + "\n").encode())
        eqx.tree_serialise_leaves(f, state)
    os.replace(tmp, path)  # atomic: an interrupted write never corrupts the last checkpoint


def _load_checkpoint(path: Path, skeleton: TrainState) -> tuple[TrainState, dict]:
    data = path.read_bytes()
    newline = data.find(b"\n")
    try:
        header = json.loads(data[:newline].decode())
        stream = io.BytesIO(data[newline + 1 :])
        state = eqx.tree_deserialise_leaves(stream, skeleton)
        if newline < 0 or not isinstance(header, dict) or stream.read(1):
            raise ValueError("trailing bytes")
    except Exception:
        raise ValueError(
            f"training checkpoint {path} is damaged or was written for another network/optimiser "
            "(truncated, or a different --channels/--res-blocks/--init-from); delete it or pass --no-resume."
        ) from None
    return state, header


def train_score_prior(
    data: np.ndarray,
    out: str | Path,
    *,
    num_steps: int,
    network_config: ScoreNetworkConfig | None = None,
    config: TrainingConfig | None = None,
    pixel_scale: float = 0.05,
    checkpoint_every: int = 500,
    max_minutes: float | None = None,
    resume: bool = True,
    progress: bool = True,
    metadata: dict | None = None,
    steps_per_call: int = 1,
    init_network: ScoreUNet | None = None,
) -> ScorePrior:
    """Train a score prior on ``data`` ``(N, H, W)`` and write it (EMA weights) to ``out``.

    A checkpoint ``<out>.ckpt`` is written every ``checkpoint_every`` steps (with the current
    EMA prior exported to ``out``); with ``resume=True`` a later call continues from it exactly.
    ``max_minutes`` stops early (after a checkpoint) when the wall-clock budget is spent.
    ``steps_per_call > 1`` runs that many steps per compiled call (``lax.scan``; same result,
    far fewer host round trips: use it on a GPU). Checkpoints then fall on the first call
    boundary at or after each multiple of ``checkpoint_every``. ``init_network`` starts from
    given weights instead of a random initialisation (fine-tuning, e.g. a network made by
    :func:`~blindlens.score_network.lift_to_subpixel`); its configuration must be
    ``network_config`` (default: taken from it). A resumed run ignores it.
    """
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}.")
    data = np.asarray(data, np.float32)
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"training data must have shape (N, H, H), got {data.shape}.")
    if not np.all(np.isfinite(data)):
        raise ValueError("training data contains NaN or infinite values; clean it before training.")
    config = config or TrainingConfig()
    if network_config is None and init_network is not None:
        network_config = init_network.config
    if init_network is not None and init_network.config != network_config:
        raise ValueError(
            f"init_network's configuration {init_network.config.to_dict()} differs from network_config "
            f"{network_config.to_dict()}."
        )
    if network_config is None:
        network_config = ScoreNetworkConfig(image_size=data.shape[1], sigma_data=float(data.std()))
    if network_config.image_size != data.shape[1]:
        raise ValueError(
            f"network image_size {network_config.image_size} does not match the data ({data.shape[1]})."
        )
    out = Path(out)
    ckpt = out.with_suffix(out.suffix + ".ckpt")
    sde = VESDE(config.sigma_min, config.sigma_max)
    step_fn, optimizer = _make_single_step(config, sde)
    model = init_network if init_network is not None else ScoreUNet(network_config, key=jr.key(config.seed))
    state = TrainState(model, model, optimizer.init(eqx.filter(model, eqx.is_inexact_array)),
                       jnp.asarray(0, jnp.int32))  # strong dtype: a resumed state compiles alike
    history: list = []
    if resume and ckpt.exists():
        state, header = _load_checkpoint(ckpt, state)
        history = header.get("history", [])
    data_dev = jnp.asarray(data)
    start = int(state.step)
    began = time.time()

    def export(state, history):
        meta = {
            "training": {
                **config.to_dict(),
                "steps": int(state.step),
                "num_images": int(data.shape[0]),
                "final_loss": history[-1][1] if history else None,
            },
            **(metadata or {}),
        }
        prior = ScorePrior(state.ema_model, sde, pixel_scale, 1.0, meta)
        prior.save(out)
        header = {"network": network_config.to_dict(), "training": config.to_dict(), "history": history}
        _save_checkpoint(ckpt, state, header)
        return prior

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_steps, initial=start, desc="train-prior", unit="step")
    running = None
    prior = None
    multi_fn = _make_multi_step(config, sde, steps_per_call) if steps_per_call > 1 else None
    k = start
    while k < num_steps:
        if multi_fn is not None and k + steps_per_call <= num_steps:
            state, losses = multi_fn(state, data_dev)
            losses = np.asarray(losses).tolist()
        else:
            state, loss = step_fn(state, data_dev)
            losses = [float(loss)]
        for i, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss} at step {k + i}; lower the learning rate."
                )
            running = loss if running is None else 0.99 * running + 0.01 * loss
        previous, k = k, k + len(losses)
        if bar is not None:
            bar.update(len(losses))
            bar.set_postfix(loss=f"{running:.4f}")
        done = k == num_steps
        over_time = max_minutes is not None and (time.time() - began) > 60 * max_minutes
        if k // checkpoint_every > previous // checkpoint_every or done or over_time:
            history.append([k, running])
            prior = export(state, history)
        if over_time:
            break
    if bar is not None:
        bar.close()
    return prior if prior is not None else export(state, history)


def heldout_loss_by_sigma(
    denoiser, data: Float[Array, "N H W"], sigmas, *, key: PRNGKeyArray
) -> np.ndarray:
    """Mean squared denoising error ``E||D(x_0 + sigma z; sigma) - x_0||^2 / npix`` per ``sigma``.

    ``denoiser(x, sigma)`` acts on one image. Returns an array of the ``sigmas``' shape.
    """
    data = jnp.asarray(data)
    keys = jr.split(key, len(sigmas))
    return np.array([float(_denoising_error(denoiser, data, s, k)) for s, k in zip(sigmas, keys)])


@eqx.filter_jit
def _denoising_error(denoiser, data, sigma, key):
    # `denoiser` is an argument (a bound method of an equinox Module is a pytree), so networks of
    # the same architecture share one compilation.
    z = jr.normal(key, data.shape)
    d = jax.vmap(lambda x: denoiser(x, sigma))(data + sigma * z)
    return jnp.mean((d - data) ** 2)
