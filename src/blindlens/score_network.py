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

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from ._types import Array, Float, PRNGKeyArray

__all__ = ["ScoreNetworkConfig", "ScoreUNet"]


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
    """

    image_size: int = eqx.field(static=True, default=64)
    channels: tuple[int, ...] = eqx.field(static=True, default=(16, 32, 64, 64))
    num_res_blocks: int = eqx.field(static=True, default=1)
    embedding_dim: int = eqx.field(static=True, default=64)
    sigma_data: float = eqx.field(static=True, default=0.2)

    def __check_init__(self):
        n = self.image_size
        if n < 4 or n & (n - 1):
            raise ValueError(f"image_size must be a power of two >= 4, got {n}.")
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
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScoreNetworkConfig:
        return cls(
            image_size=int(d["image_size"]),
            channels=tuple(int(c) for c in d["channels"]),
            num_res_blocks=int(d["num_res_blocks"]),
            embedding_dim=int(d["embedding_dim"]),
            sigma_data=float(d["sigma_data"]),
        )


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


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
        out = self.conv1(jax.nn.silu(self.norm1(h)))
        out = out + self.emb(emb)[:, None, None]
        out = self.conv2(jax.nn.silu(self.norm2(out)))
        return out + (h if self.skip is None else self.skip(h))


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
        self.conv_in = eqx.nn.Conv2d(1, ch[0], 3, padding=1, key=next(keys))
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
        conv_out = eqx.nn.Conv2d(ch[0], 1, 3, padding=1, key=next(keys))
        self.conv_out = _zeroed(conv_out)

    def _embed(self, c_noise):
        phase = c_noise * self.fourier_freqs
        return self.emb_mlp(jnp.concatenate([jnp.sin(phase), jnp.cos(phase)]))

    def raw(self, x_in: Float[Array, "H W"], c_noise) -> Float[Array, "H W"]:
        """The bare U-Net ``F(x_in, c_noise)`` (no pre-conditioning)."""
        emb = self._embed(c_noise)
        h = self.conv_in(x_in[None])
        skips = []
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        h = self.mid_block(h, emb)
        for i, blocks in enumerate(self.up_blocks):
            h = jnp.concatenate([h, skips.pop()], axis=0)
            for block in blocks:
                h = block(h, emb)
            if i < len(self.upsamplers):
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = self.upsamplers[i](h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))[0]

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
