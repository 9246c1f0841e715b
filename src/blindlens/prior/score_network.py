"""An Equinox U-Net score network in the NCSN++ family.

Residual blocks with GroupNorm and SiLU, a Fourier embedding of the noise level injected into
every block, strided-convolution down-sampling, nearest-neighbour up-sampling and U-Net skip
connections (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H; Ho et al.
2020). The network is wrapped in the EDM pre-conditioning of Karras et al. (2022, "Elucidating
the Design Space of Diffusion-Based Generative Models", Table 1) and exposed in the epsilon
parameterisation used by blindlens:

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = s_d^2 / (sigma^2 + s_d^2),   c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
    c_in = 1 / sqrt(sigma^2 + s_d^2),     c_noise = ln(sigma) / 4,
    eps(x; sigma) = (x - D(x; sigma)) / sigma,     score(x; sigma) = -eps / sigma,

with ``s_d`` the pixel standard deviation of the training data. The pre-conditioning makes
the Gaussian part of the score exact at large sigma, so even a small, briefly trained network
is well behaved across the whole noise range. The network knows nothing about lensing.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, PRNGKeyArray

__all__ = ["ScoreNetworkConfig", "ScoreUNet", "conv2d", "depth_to_space", "lift_to_subpixel", "native_convolutions", "space_to_depth"]


class ScoreNetworkConfig(eqx.Module):
    """Architecture of :class:`ScoreUNet` (all static, JSON-serialisable).

    Parameters
    ----------
    image_size
        Side of the square input in pixels; a power of two divisible by ``2**(levels-1)``.
    channels
        Feature channels per resolution level (the first at full resolution).
    num_res_blocks
        Residual blocks per level on the way down (one more on the way up, for the skip).
    embedding_dim
        Width of the noise-level embedding.
    sigma_data
        Pixel standard deviation of the training data (EDM pre-conditioning), in data units.
    pixel_unshuffle
        Sub-pixel stem factor ``r``: the ``(H, W)`` input is rearranged into ``r**2`` channels
        of ``(H/r, W/r)`` (space-to-depth, lossless) before the first convolution and the
        output is rearranged back (depth-to-space; Shi et al. 2016, "Real-Time Single Image
        and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural
        Network"). The U-Net then runs at ``H/r``, so a 64 x 64 prior costs about what a
        32 x 32 one does with ``r = 2``. ``1`` (the default) is the plain U-Net.
    """

    image_size: int = eqx.field(static=True, default=64)
    channels: tuple[int, ...] = eqx.field(static=True, default=(16, 32, 64, 64))
    num_res_blocks: int = eqx.field(static=True, default=1)
    embedding_dim: int = eqx.field(static=True, default=64)
    sigma_data: float = eqx.field(static=True, default=0.2)
    pixel_unshuffle: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        n = self.image_size
        if n < 4 or n & (n - 1):
            raise ValueError(f"image_size must be a power of two >= 4, got {n}.")
        r = self.pixel_unshuffle
        if r < 1 or r & (r - 1) or n // r < 4:
            raise ValueError(
                f"pixel_unshuffle must be a power of two with image_size / pixel_unshuffle >= 4, got {r} "
                f"for image_size {n}."
            )
        n = n // r
        if n % (2 ** (len(self.channels) - 1)):
            raise ValueError(
                f"image_size {n} is not divisible by 2**(levels-1) = {2 ** (len(self.channels) - 1)}; "
                "use fewer levels in `channels`."
            )

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "channels": list(self.channels),
            "num_res_blocks": self.num_res_blocks,
            "embedding_dim": self.embedding_dim,
            "sigma_data": self.sigma_data,
            "pixel_unshuffle": self.pixel_unshuffle,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScoreNetworkConfig:
        return cls(
            image_size=int(d["image_size"]),
            channels=tuple(int(c) for c in d["channels"]),
            num_res_blocks=int(d["num_res_blocks"]),
            embedding_dim=int(d["embedding_dim"]),
            sigma_data=float(d["sigma_data"]),
            pixel_unshuffle=int(d.get("pixel_unshuffle", 1)),  # absent in files before the stem
        )


def space_to_depth(x: Float[Array, "H W"], r: int) -> Float[Array, "r2 h w"]:
    """``(H, W) -> (r*r, H/r, W/r)``; channel ``i*r + j`` holds the pixels ``x[i::r, j::r]``."""
    h, w = x.shape
    return x.reshape(h // r, r, w // r, r).transpose(1, 3, 0, 2).reshape(r * r, h // r, w // r)


def depth_to_space(x: Float[Array, "r2 h w"], r: int) -> Float[Array, "H W"]:
    """Inverse of :func:`space_to_depth`: ``(r*r, h, w) -> (h*r, w*r)``."""
    _, h, w = x.shape
    return x.reshape(r, r, h, w).transpose(2, 0, 3, 1).reshape(h * r, w * r)


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


_NATIVE_CONVOLUTIONS = contextvars.ContextVar("blindlens_native_convolutions", default=False)


@contextlib.contextmanager
def native_convolutions():
    """Within this context, networks *traced* use XLA's native convolution everywhere.

    The function is the same (:func:`conv2d`); only its speed differs. Worth it for a compiled
    call that evaluates the network outside any loop, such as one training step on the CPU
    (1.6x faster there). It acts at trace time: a function already compiled keeps its form.
    """
    token = _NATIVE_CONVOLUTIONS.set(True)
    try:
        yield
    finally:
        _NATIVE_CONVOLUTIONS.reset(token)


def conv2d(conv: eqx.nn.Conv2d, x: Float[Array, "C H W"]) -> Float[Array, "O h w"]:
    """Apply ``conv`` to ``x`` as one matrix product over shifted slices (im2col).

    The same function as ``conv(x)`` (zero padding, any stride, no dilation or groups): the
    ``kh * kw`` shifted, strided views of the padded input are stacked into a
    ``(kh kw C, h w)`` matrix and multiplied by the ``(O, kh kw C)`` weights. On XLA:CPU a
    convolution inside a ``lax.scan``/``while_loop`` body -- where every reverse-diffusion step
    evaluates the network -- runs 8-23x slower than this product (a network pass with its VJP
    inside a scan, docs/performance.md, ``benchmarks/score_network.py``). Other backends use the native convolution.
    """
    if (
        conv.groups != 1
        or conv.dilation != (1, 1)
        or conv.padding_mode != "ZEROS"
        or jax.default_backend() != "cpu"
        or _NATIVE_CONVOLUTIONS.get()
    ):
        return conv(x)
    w = conv.weight
    o, c, kh, kw = w.shape
    (p0, p1), (q0, q1) = conv.padding
    sy, sx = conv.stride
    xp = jnp.pad(x, ((0, 0), (p0, p1), (q0, q1)))
    ho = (xp.shape[1] - kh) // sy + 1
    wo = (xp.shape[2] - kw) // sx + 1
    views = [xp[:, i : i + sy * (ho - 1) + 1 : sy, j : j + sx * (wo - 1) + 1 : sx] for i in range(kh) for j in range(kw)]
    columns = jnp.concatenate(views, axis=0).reshape(kh * kw * c, ho * wo)
    out = (w.transpose(0, 2, 3, 1).reshape(o, kh * kw * c) @ columns).reshape(o, ho, wo)
    return out if conv.bias is None else out + conv.bias


def _zeroed(conv: eqx.nn.Conv2d) -> eqx.nn.Conv2d:
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (jnp.zeros_like(conv.weight), jnp.zeros_like(conv.bias)))


class _ResBlock(eqx.Module):
    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, emb_dim: int, *, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=k1)
        self.emb = eqx.nn.Linear(emb_dim, c_out, key=k2)
        self.norm2 = eqx.nn.GroupNorm(_groups(c_out), c_out)
        conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k3)
        # Zero-initialise the last convolution so every block starts as the identity
        # (a standard trick that stabilises short training runs).
        self.conv2 = _zeroed(conv2)
        self.skip = eqx.nn.Conv2d(c_in, c_out, 1, key=k4) if c_in != c_out else None

    def __call__(self, h, emb):
        out = conv2d(self.conv1, jax.nn.silu(self.norm1(h)))
        out = out + self.emb(emb)[:, None, None]
        out = conv2d(self.conv2, jax.nn.silu(self.norm2(out)))
        return out + (h if self.skip is None else conv2d(self.skip, h))


class ScoreUNet(eqx.Module):
    """U-Net noise predictor with EDM pre-conditioning; see the module docstring.

    Call :meth:`epsilon` or :meth:`score` on a single ``(H, W)`` image and a noise level
    ``sigma`` (data units); ``jax.vmap`` for batches.
    """

    config: ScoreNetworkConfig = eqx.field(static=True)
    fourier_freqs: Float[Array, " f"]
    emb_mlp: eqx.nn.MLP
    conv_in: eqx.nn.Conv2d
    down_blocks: tuple
    downsamplers: tuple
    mid_block: _ResBlock
    up_blocks: tuple
    upsamplers: tuple
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(self, config: ScoreNetworkConfig, *, key: PRNGKeyArray):
        self.config = config
        ch = config.channels
        e = config.embedding_dim
        keys = iter(jr.split(key, 64))
        # Fixed random Fourier features of the log noise level (Tancik et al. 2020).
        self.fourier_freqs = 2 * math.pi * jr.normal(next(keys), (e // 2,)) * 4.0
        self.emb_mlp = eqx.nn.MLP(e, e, e, depth=2, activation=jax.nn.silu, key=next(keys))
        r2 = config.pixel_unshuffle**2
        self.conv_in = eqx.nn.Conv2d(r2, ch[0], 3, padding=1, key=next(keys))
        down, downs = [], []
        for level, c in enumerate(ch):
            blocks = []
            c_prev = ch[level - 1] if level > 0 else ch[0]
            for b in range(config.num_res_blocks):
                blocks.append(_ResBlock(c_prev if b == 0 else c, c, e, key=next(keys)))
            down.append(tuple(blocks))
            if level < len(ch) - 1:
                downs.append(eqx.nn.Conv2d(c, c, 3, stride=2, padding=1, key=next(keys)))
        self.down_blocks = tuple(down)
        self.downsamplers = tuple(downs)
        self.mid_block = _ResBlock(ch[-1], ch[-1], e, key=next(keys))
        up, ups = [], []
        for level in reversed(range(len(ch))):
            c = ch[level]
            c_below = ch[-1] if level == len(ch) - 1 else ch[level + 1]
            blocks = [_ResBlock(c_below + c, c, e, key=next(keys))]
            for _ in range(config.num_res_blocks - 1):
                blocks.append(_ResBlock(c, c, e, key=next(keys)))
            up.append(tuple(blocks))
            if level > 0:
                ups.append(eqx.nn.Conv2d(c, c, 3, padding=1, key=next(keys)))
        self.up_blocks = tuple(up)
        self.upsamplers = tuple(ups)
        self.norm_out = eqx.nn.GroupNorm(_groups(ch[0]), ch[0])
        conv_out = eqx.nn.Conv2d(ch[0], r2, 3, padding=1, key=next(keys))
        self.conv_out = _zeroed(conv_out)

    def _embed(self, c_noise):
        phase = c_noise * self.fourier_freqs
        return self.emb_mlp(jnp.concatenate([jnp.sin(phase), jnp.cos(phase)]))

    def raw(self, x_in: Float[Array, "H W"], c_noise) -> Float[Array, "H W"]:
        """The bare U-Net ``F(x_in, c_noise)`` (no pre-conditioning)."""
        emb = self._embed(c_noise)
        r = self.config.pixel_unshuffle
        h = conv2d(self.conv_in, space_to_depth(x_in, r))
        skips = []
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if level < len(self.downsamplers):
                h = conv2d(self.downsamplers[level], h)
        h = self.mid_block(h, emb)
        for i, blocks in enumerate(self.up_blocks):
            h = jnp.concatenate([h, skips.pop()], axis=0)
            for block in blocks:
                h = block(h, emb)
            if i < len(self.upsamplers):
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = conv2d(self.upsamplers[i], h)
        return depth_to_space(conv2d(self.conv_out, jax.nn.silu(self.norm_out(h))), r)

    def preconditioning(self, sigma):
        """EDM coefficients ``(c_skip, c_out, c_in, c_noise)`` at noise level ``sigma``."""
        sd2 = self.config.sigma_data**2
        s2 = sigma**2
        return sd2 / (s2 + sd2), sigma * self.config.sigma_data / jnp.sqrt(s2 + sd2), 1.0 / jnp.sqrt(s2 + sd2), jnp.log(sigma) / 4.0

    def denoise(self, x: Float[Array, "H W"], sigma) -> Float[Array, "H W"]:
        """Denoiser ``D(x; sigma) ~ E[x_0 | x_sigma = x]``."""
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        return c_skip * x + c_out * self.raw(c_in * x, c_noise)

    def epsilon(self, x: Float[Array, "H W"], sigma) -> Float[Array, "H W"]:
        """Predicted unit noise ``eps = (x - D(x)) / sigma``.

        Evaluated as ``sigma x / (sigma^2 + s_d^2) - s_d / sqrt(sigma^2 + s_d^2) F`` (using
        ``1 - c_skip = sigma^2 / (sigma^2 + s_d^2)``), which avoids the cancellation in
        ``x - D(x)`` at small sigma in float32.
        """
        _, _, c_in, c_noise = self.preconditioning(sigma)
        s_d = self.config.sigma_data
        return sigma * c_in**2 * x - s_d * c_in * self.raw(c_in * x, c_noise)

    def score(self, x: Float[Array, "H W"], sigma) -> Float[Array, "H W"]:
        """``grad_x log p_sigma(x) ~ -eps / sigma``."""
        return -self.epsilon(x, sigma) / sigma


def count_parameters(model: eqx.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))


def lift_to_subpixel(network: ScoreUNet, factor: int = 2, *, sigma_data: float | None = None) -> ScoreUNet:
    """A ``factor``-times finer network initialised from a trained plain one.

    The result has ``image_size * factor``, ``pixel_unshuffle = factor`` and the inner U-Net of
    ``network`` unchanged. Its stem sees the mean of each ``factor x factor`` block (every
    sub-pixel channel gets the trained input weights divided by ``factor**2``) and every
    sub-pixel of the output repeats the trained output (nearest-neighbour up-sampling), so
    before any training it acts as the coarse network on the block-averaged image. It is a
    starting point for fine-tuning at the finer pixel scale (``blindlens train-prior
    --init-from``), not a calibrated prior by itself: the noise of a block average is
    ``factor`` times smaller than the pixel noise the network is told.

    Parameters
    ----------
    network
        A trained :class:`ScoreUNet` with ``pixel_unshuffle == 1``.
    factor
        Sub-pixel factor (a power of two).
    sigma_data
        Pixel standard deviation of the finer training data (default: the coarse network's).
    """
    old = network.config
    if old.pixel_unshuffle != 1:
        raise ValueError(f"lift_to_subpixel needs a plain network (pixel_unshuffle 1), got {old.pixel_unshuffle}.")
    config = ScoreNetworkConfig(
        image_size=old.image_size * factor,
        channels=old.channels,
        num_res_blocks=old.num_res_blocks,
        embedding_dim=old.embedding_dim,
        sigma_data=old.sigma_data if sigma_data is None else float(sigma_data),
        pixel_unshuffle=factor,
    )
    r2 = factor * factor
    skeleton = ScoreUNet(config, key=jr.key(0))
    w_in = jnp.repeat(network.conv_in.weight, r2, axis=1) / r2
    w_out = jnp.repeat(network.conv_out.weight, r2, axis=0)
    b_out = jnp.repeat(network.conv_out.bias, r2, axis=0)
    lifted = eqx.tree_at(
        lambda m: (m.conv_in.weight, m.conv_out.weight, m.conv_out.bias), network, (w_in, w_out, b_out)
    )
    # Same inner structure: only the static config differs, so graft the trained leaves onto a
    # skeleton of the new config.
    leaves = jax.tree_util.tree_leaves(lifted)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(skeleton), leaves)
