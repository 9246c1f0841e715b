"""The source grid's sub-pixel placement as a nuisance: wrap any lens model with a constant deflection.

A pixelated source on a grid of pitch ``p`` cannot draw a galaxy that lies between its pixels:
with the true lens, the best source on a grid shifted by a quarter pixel from the one a galaxy
was drawn on still misses the noiseless image by chi^2 = 11-174 on 0.05" data
(``docs/calibration/source_representation.md``), and the lens absorbs that misfit by moving
several posterior sd, in a direction set by where the grid happens to lie (the same lenstronomy
system, five grid placements: ``e2`` 2.4, 1.5, 2.4, -0.2 and 2.1 sd from the truth,
``docs/joint_inference.md``). Tagore & Keeton (2014, MNRAS 445, 694, arXiv:1408.6297) measured
the same "discreteness noise" of gridded sources: the scatter of lens parameters between telescope
pointings can exceed the quoted uncertainties.

:func:`with_source_shift` makes the placement a parameter: a constant deflection
(:class:`~blindlens.lens_models.Shift`, lenstronomy ``SHIFT``) with sites ``alpha_x, alpha_y``,
each uniform over two pixels, ``U(-p, p)`` arcsec. A constant deflection moves the whole source
plane, which the source's own position absorbs, so it changes nothing physical: it only slides the
grid under the source, and the posterior of the lens parameters becomes the average over
placements, weighted by how well each placement fits. One pixel is the period of the grid (a
whole-pixel shift is the same grid, up to a column at the field's edge), so a uniform prior over
whole periods weights every placement equally; two periods rather than one put every placement
inside the range, away from its ends (measured: with ``U(-p/2, p/2)`` the chains of a lenstronomy
system pressed against ``alpha_x = -p/2``).

The sampler moves ``alpha`` like any lens parameter. Given the source it is as well measured as the
lens centre, so it wanders slowly within a chain (measured: about 0.01" per 150 sweeps; one chain of
1500 draws spanned 0.7 pixel), and chains started from different lenses (pre-fit lenses or prior
draws) stay at different placements for hundreds of sweeps: the chains' spread is the
discretisation's uncertainty, R-hat sees it (1.6-3.0 on ``alpha`` in the runs of
``docs/joint_inference.md``), and the pooled chains weight their placements equally. ``alpha`` is
therefore declared a nuisance (:func:`~blindlens.numpyro_model.nuisance_site_names`): it is stored
in the posterior, its R-hat is printed, but convergence is judged by the lens parameters alone.

A chain that drifts along the placement eventually meets an edge of ``U(-p, p)``, which the
periodic grid does not have (measured: two of eight chains of a lenstronomy system pressed against
``alpha_x = -p``). :func:`wrap_placement` moves a chain to the same galaxy one period over (the
placement moved by ``p``, the source rolled by one pixel); :class:`~blindlens.gibbs_kernel.BlindLensGibbs`
and :class:`~blindlens.gibbs_core.GibbsCore` run it in warm-up to fold every chain into the central
period, so that sampling starts half a period or more from either edge.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist

from .._types import Array, Bool, Float, PRNGKeyArray, SourceImage
from ..physics.lens_models import AbstractLens, Shift

__all__ = ["SOURCE_SHIFT_SITES", "placement_period", "spread_shared_placements", "translate_source", "with_source_shift",
           "wrap_placement"]

SOURCE_SHIFT_SITES = ("alpha_x", "alpha_y")
"""The site names :func:`with_source_shift` adds (lenstronomy ``SHIFT``'s parameters), in order."""


class _WithSourceShift:
    """The model :func:`with_source_shift` returns (a class, so that kernels holding it pickle)."""

    nuisance_sites = SOURCE_SHIFT_SITES
    """Sites that are not lens parameters (:func:`~blindlens.numpyro_model.nuisance_site_names`)."""
    nuisance_only = True
    """It adds nothing else (:func:`~blindlens.numpyro_model.without_nuisance` takes it out)."""

    def __init__(self, lens_model: Callable, pixel_scale: float):
        self.lens_model = lens_model
        self.pixel_scale = pixel_scale

    def __call__(self):
        lens = self.lens_model()
        if not isinstance(lens, AbstractLens):
            raise ValueError(
                f"with_source_shift wraps a lens model returning a mass lens, got {type(lens).__name__}; "
                "add the deflector light after the shift (with_lens_light(with_source_shift(model, p)))."
            )
        p = self.pixel_scale
        shift = {n: numpyro.sample(n, dist.Uniform(-p, p)) for n in SOURCE_SHIFT_SITES}
        return lens + Shift(**shift)

    def __repr__(self):
        return f"with_source_shift({self.lens_model!r}, pixel_scale={self.pixel_scale})"


def with_source_shift(lens_model: Callable, pixel_scale: float) -> Callable:
    """A lens model that also samples the source grid's sub-pixel placement (see the module docs).

    Parameters
    ----------
    lens_model
        A NumPyro lens model returning a mass lens (:mod:`blindlens.numpyro_model`); it must not
        have sites named ``alpha_x`` or ``alpha_y``.
    pixel_scale
        The source grid's pixel scale [arcsec]: ``alpha_x, alpha_y ~ U(-pixel_scale, pixel_scale)``.

    Returns
    -------
    A NumPyro model returning ``lens + Shift(alpha_x, alpha_y)``.
    """
    from .numpyro_model import lens_site_names

    pixel_scale = float(pixel_scale)
    if not pixel_scale > 0:
        raise ValueError(f"with_source_shift needs a positive source pixel scale in arcsec, got {pixel_scale}.")
    clash = sorted(set(lens_site_names(lens_model)) & set(SOURCE_SHIFT_SITES))
    if clash:
        raise ValueError(f"the lens model already has site(s) {clash}; with_source_shift adds alpha_x, alpha_y: "
                         "rename them in your model.")
    return _WithSourceShift(lens_model, pixel_scale)


def translate_source(source: SourceImage, shift_yx) -> SourceImage:
    """``s'(q) = s(q + shift)``: the source translated by ``-shift`` pixels, by a Fourier phase ramp.

    The Nyquist row and column (even sizes) are left in place, so that the result is real and the
    map exactly invertible (``translate_source(translate_source(s, d), -d) == s`` to round-off); the
    field is treated as periodic, which is harmless for sources that fade to zero at the edges.
    (:func:`blindlens.results.source_frame.to_source_frame` moves draws by the model's bilinear
    interpolant instead, to show what the model images; that smooths by up to half a pixel and is
    not invertible, which a chain's start should not be.)

    Parameters
    ----------
    source
        ``(..., sy, sx)`` source images (surface brightness; conserved: the sum is unchanged).
    shift_yx
        ``(..., 2)`` shifts ``(dy, dx)`` in source pixels (broadcast against the leading axes).
    """
    source = jnp.asarray(source)
    shift_yx = jnp.asarray(shift_yx, source.dtype)
    ny, nx = source.shape[-2:]
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.fftfreq(nx)[None, :]
    if ny % 2 == 0:
        fy[ny // 2] = 0.0
    if nx % 2 == 0:
        fx[:, nx // 2] = 0.0
    phase = 2.0 * np.pi * (fy * shift_yx[..., 0, None, None] + fx * shift_yx[..., 1, None, None])
    moved = jnp.fft.ifft2(jnp.fft.fft2(source) * jnp.exp(1j * phase))
    return jnp.real(moved).astype(source.dtype)


_R2 = (0.7548776662466927, 0.5698402909980532)
"""Roberts' R2 sequence (the plastic number's inverse powers): low-discrepancy phases in the unit square."""


def spread_shared_placements(
    lens: dict[str, Float[Array, " chains"]],
    source: Float[Array, "chains sy sx"],
    chosen,
    pixel_scale: float,
) -> tuple[dict[str, Array], Float[Array, "chains sy sx"], int]:
    """Give chains that share a start their own grid placements, the source carried along.

    Chains started from the same warm-start trajectory (:func:`blindlens.chain_starts.dominant_mode_starts`
    repeats starts when the dominant set is short) would also share its grid placement ``alpha``,
    which moves only slowly within a chain, so the pooled chains would see one placement where the
    posterior averages over all of them. The ``j``-th repeat of a start (``j = 1, 2, ...``; the
    first keeps it) moves ``alpha`` by ``delta_j = p (u_j - round(u_j))``, ``u_j`` the ``j``-th
    point of Roberts' R2 low-discrepancy sequence, wrapped back into the prior's ``[-p, p)`` by
    whole pixels, and its source by :func:`translate_source` with the same displacement: since a
    constant deflection ``alpha`` images ``S(beta - alpha)``, the source ``S'(u) = S(u + delta)``
    on the moved grid images the same galaxy, so the start fits as well as the shared one (to the
    bilinear interpolation's error). This only chooses starts; the chains' moves are unchanged.

    Parameters
    ----------
    lens
        Constrained lens-site values with a leading chain axis; unchanged when it has no
        ``alpha_x, alpha_y`` (:data:`SOURCE_SHIFT_SITES`).
    source
        Each chain's starting source.
    chosen
        Index of the start each chain took (equal indices: a shared start).
    pixel_scale
        Source pixel scale [arcsec] (the period of the placement).

    Returns
    -------
    lens, source, moved
        The starts, and how many chains got a placement of their own.
    """
    if not all(n in lens for n in SOURCE_SHIFT_SITES):
        return lens, source, 0
    chosen = np.asarray(chosen)
    p = float(pixel_scale)
    delta = np.zeros((chosen.size, 2))  # (dx, dy) in arcsec
    for c in range(chosen.size):
        j = int(np.sum(chosen[:c] == chosen[c]))  # earlier chains with the same start
        if j:
            u = np.mod(j * np.asarray(_R2), 1.0)
            delta[c] = p * (u - np.round(u))
    alpha = np.stack([np.asarray(lens[n], float) for n in SOURCE_SHIFT_SITES], axis=-1)
    new = alpha + delta
    new = np.where(new >= p, new - p, np.where(new < -p, new + p, new))  # back into [-p, p) by a whole pixel
    moved = np.any(delta != 0.0, axis=-1)
    lens = dict(lens)
    for i, n in enumerate(SOURCE_SHIFT_SITES):
        lens[n] = jnp.asarray(new[:, i], jnp.asarray(lens[n]).dtype)
    shift_yx = (new - alpha)[:, ::-1] / p  # (dy, dx) in pixels
    source = jnp.where(moved[:, None, None], translate_source(source, shift_yx), jnp.asarray(source))
    return lens, source, int(moved.sum())


def placement_period(lens_model: Callable) -> float | None:
    """The pixel scale [arcsec] of the :func:`with_source_shift` wrapper in a lens model's chain, or ``None``."""
    from .numpyro_model import wrapper_chain

    shift = next((m for m in wrapper_chain(lens_model) if isinstance(m, _WithSourceShift)), None)
    return None if shift is None else float(shift.pixel_scale)


def wrap_placement(
    key: PRNGKeyArray,
    values: dict[str, Float[Array, ""]],
    source: SourceImage,
    period: float,
    log_likelihood: Callable[[dict, SourceImage], Float[Array, ""]],
    fold: bool = False,
) -> tuple[dict[str, Array], SourceImage, Bool[Array, " 2"]]:
    """Move the grid placement one period over, the source rolled along: through the prior's edges.

    The placement prior ``U(-p, p)`` spans two periods of the grid, but its edges are an artefact:
    a chain whose ``(alpha, source)`` drifts along the near-symmetry "move the grid, move the
    source with it" presses against ``alpha = -p`` or ``+p`` and stays there
    (``docs/joint_inference.md``). For each axis in turn (``alpha_x`` with the source's columns,
    then ``alpha_y`` with its rows) this proposes the same galaxy one period over:
    ``alpha' = alpha - p sign(alpha)`` (``sign(0) = +1``) with the source rolled by one pixel the
    same way, ``s'[i] = s[i -+ 1]``. Since a constant deflection images ``s(beta - alpha)``, the
    image is unchanged except where the roll carries the field's edge row or column round to the
    other side (and the rays within a pixel of the edge), so the proposal is accepted with
    probability ``min(1, L(alpha', s') / L(alpha, s))``, one likelihood evaluation per axis. A
    proposal onto ``alpha' = -p`` exactly (from ``alpha = 0``) lies outside the open prior and is
    refused.

    ``fold=False``: the map is an involution of ``(-p, p)`` with unit Jacobian, so this is an
    exact Metropolis move for a target whose source prior gives a one-pixel roll the same density
    (the diffusion prior's density ratio is taken as 1: nearly so for galaxies trained at random
    sub-field positions, and not available cheaply). Its proposals are nearly always accepted, so a
    chain flips between its two representatives every sweep and spends half its draws in the
    outer halves, where NumPyro's sigmoid transform of ``U(-p, p)`` is steep: measured on a
    lenstronomy system, a metric frozen at one representative then made 594 of 2400 lens
    transitions diverge (1 without the move). ``fold=True`` (what the samplers run, in warm-up
    only): proposals only where ``|alpha| >= p / 2``, which brings every chain into the central
    period ``[-p/2, p/2)`` while its placement settles; not reversible (warm-up draws are
    discarded), and after warm-up a chain starts at least half a period from either edge.

    Parameters
    ----------
    key
        PRNG key.
    values
        Constrained lens-site values holding ``alpha_x, alpha_y`` [arcsec].
    source
        ``(sy, sx)`` source on the grid of pitch ``period``.
    period
        The source grid's pixel scale [arcsec], equal to the prior's half-width ``p``.
    log_likelihood
        ``log_likelihood(values, source)``: the data's log-likelihood (the source prior is taken
        as roll-invariant, the lens prior is unchanged by the move).
    fold
        Propose only from the outer halves (see above).

    Returns
    -------
    values, source, accepted
        The new state and whether each axis's proposal ``(x, y)`` was accepted.
    """
    p = float(period)
    values = dict(values)
    current = log_likelihood(values, source)
    accepted = []
    for site, axis, k in zip(SOURCE_SHIFT_SITES, (-1, -2), jr.split(key, 2), strict=True):
        alpha = jnp.asarray(values[site])
        up = alpha >= 0.0  # alpha' = alpha - p, source moved one pixel towards +axis
        proposed_alpha = jnp.where(up, alpha - p, alpha + p)
        proposed_source = jnp.where(up, jnp.roll(source, 1, axis=axis), jnp.roll(source, -1, axis=axis))
        proposed = {**values, site: proposed_alpha.astype(alpha.dtype)}
        ll = log_likelihood(proposed, proposed_source)
        inside = (proposed_alpha > -p) & (proposed_alpha < p)
        if fold:
            inside = inside & (jnp.abs(alpha) >= 0.5 * p)
        accept = inside & jnp.isfinite(ll) & (jnp.log(jr.uniform(k, (), ll.dtype)) < ll - current)
        values[site] = jnp.where(accept, proposed_alpha, alpha).astype(alpha.dtype)
        source = jnp.where(accept, proposed_source, source)
        current = jnp.where(accept, ll, current)
        accepted.append(accept)
    return values, source, jnp.stack(accepted)
