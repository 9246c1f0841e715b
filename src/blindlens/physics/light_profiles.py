"""Lens light: elliptical Sérsic profiles and their PSF-convolved images.

Every real lens has a bright foreground galaxy in the middle of its arcs. Its light is modelled
here with lenstronomy's ``SERSIC_ELLIPSE`` profile (Birrer & Amara 2018; Birrer et al. 2021,
JOSS 6, 3283), with the same parameter names and definitions,

    I(x, y) = amp exp(-b_n ((R / R_sersic)^(1/n_sersic) - 1)),    b_n = 1.9992 n_sersic - 0.3271,

``R`` the product-average elliptical radius of ``e1, e2`` about ``(center_x, center_y)``, ``amp``
the surface brightness at ``R_sersic`` in image units per arcsec^2. A model image pixel is the mean
of ``I`` over ``supersampling^2`` sub-pixel centres times the pixel area (arcsec^2), then convolved
with the PSF: lenstronomy's ``ImageModel.lens_surface_brightness`` with the same supersampling,
except in a small box around each profile's centre, where the steep core is integrated on a much
finer sub-grid (:class:`LensLightImager`'s ``core_supersampling``).

A lens model returns its light by wrapping the mass in :class:`LensWithLight`; it still *is* a
lens (deflections are the mass's), so everything that ray-traces keeps working, and
:class:`~blindlens.numpyro_model.JointModel` adds :meth:`LensLightImager.__call__` of its light to
the lensed source.
"""

from __future__ import annotations

from collections.abc import Iterable

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from .._types import Array, Coordinates, Float, Image
from .grid import PixelGrid
from .lens_models import AbstractLens

__all__ = ["SersicEllipse", "LensLight", "LensWithLight", "LensLightImager", "sersic_ellipse", "light_of", "mass_of", "SERSIC_NAMES"]

CORE_SUPERSAMPLING = 24
"""Default sub-pixels per axis of :class:`LensLightImager`'s refined core (docs/real_data.md)."""
CORE_SIZE = 7
"""Default side in pixels of the refined core box."""

SERSIC_NAMES = ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y")
"""Parameter names of :class:`SersicEllipse` (lenstronomy ``SERSIC_ELLIPSE``), in order."""


def sersic_ellipse(x, y, amp, R_sersic, n_sersic, e1, e2, center_x=0.0, center_y=0.0) -> Float[Array, "..."]:
    """Elliptical Sérsic surface brightness, lenstronomy's ``SERSIC_ELLIPSE``.

    Parameters
    ----------
    x, y
        Positions [arcsec].
    amp
        Surface brightness at ``R_sersic`` (image units per arcsec^2 of the caller).
    R_sersic
        Half-light radius along the product-average (circularised) radius [arcsec].
    n_sersic
        Sérsic index.
    e1, e2
        Ellipticity components (lenstronomy's definition, ``|e| < 1``).
    center_x, center_y
        Centre [arcsec].

    Returns
    -------
    ``amp * exp(-b_n ((R / R_sersic)^(1/n) - 1))`` with ``b_n = max(1.9992 n - 0.3271, 1e-5)`` and
    ``R^2 = ((1 - e1) dx - e2 dy)^2 + (-e2 dx + (1 + e1) dy)^2) / (1 - e1^2 - e2^2)``.
    """
    dx, dy = x - center_x, y - center_y
    norm2 = jnp.maximum(jnp.abs(1.0 - e1**2 - e2**2), 1e-12)
    r2 = (((1.0 - e1) * dx - e2 * dy) ** 2 + (-e2 * dx + (1.0 + e1) * dy) ** 2) / norm2
    b_n = jnp.maximum(1.9992 * n_sersic - 0.3271, 1e-5)
    r_frac2 = jnp.maximum(r2, 1e-16) / R_sersic**2  # (floor: a finite gradient at the centre)
    return amp * jnp.exp(-b_n * (r_frac2 ** (0.5 / n_sersic) - 1.0))


def _as_array(value):
    return jnp.asarray(value)


class SersicEllipse(eqx.Module):
    """One elliptical Sérsic light component (lenstronomy ``SERSIC_ELLIPSE``; see :func:`sersic_ellipse`).

    Parameters
    ----------
    amp
        Surface brightness at ``R_sersic`` [image units / arcsec^2].
    R_sersic
        Half-light radius [arcsec].
    n_sersic
        Sérsic index.
    e1, e2
        Ellipticity components.
    center_x, center_y
        Centre [arcsec].
    """

    amp: Float[Array, ""] = eqx.field(converter=_as_array)
    R_sersic: Float[Array, ""] = eqx.field(converter=_as_array)
    n_sersic: Float[Array, ""] = eqx.field(converter=_as_array)
    e1: Float[Array, ""] = eqx.field(converter=_as_array, default=0.0)
    e2: Float[Array, ""] = eqx.field(converter=_as_array, default=0.0)
    center_x: Float[Array, ""] = eqx.field(converter=_as_array, default=0.0)
    center_y: Float[Array, ""] = eqx.field(converter=_as_array, default=0.0)

    def surface_brightness(self, x: Coordinates, y: Coordinates) -> Float[Array, "..."]:
        """``I(x, y)`` [image units / arcsec^2] at positions in arcsec."""
        return sersic_ellipse(x, y, self.amp, self.R_sersic, self.n_sersic, self.e1, self.e2,
                              self.center_x, self.center_y)

    def __add__(self, other):
        return LensLight((self, other))


class LensLight(eqx.Module):
    """A sum of light components (e.g. two Sérsics for a bulge and a disc); nested sums flatten."""

    components: tuple

    def __init__(self, components: Iterable):
        flat = []
        for comp in components:
            if isinstance(comp, LensLight):
                flat.extend(comp.components)
            elif isinstance(comp, SersicEllipse):
                flat.append(comp)
            else:
                raise ValueError(
                    f"LensLight components must be SersicEllipse instances, got {type(comp)!r}."
                )
        if not flat:
            raise ValueError("LensLight needs at least one component.")
        self.components = tuple(flat)

    def surface_brightness(self, x: Coordinates, y: Coordinates) -> Float[Array, "..."]:
        """Summed surface brightness [image units / arcsec^2]."""
        return sum(c.surface_brightness(x, y) for c in self.components)

    def __add__(self, other):
        return LensLight((self, other))


class LensWithLight(AbstractLens):
    """A lens (its mass) together with the light of the deflector.

    It deflects exactly like ``mass``; :class:`~blindlens.numpyro_model.JointModel` adds the
    PSF-convolved image of ``light`` to the model image. Return it from a lens model::

        return LensWithLight(SIE(...) + ExternalShear(...), SersicEllipse(amp=..., ...))

    Parameters
    ----------
    mass
        Any :class:`~blindlens.lens_models.AbstractLens`.
    light
        A :class:`SersicEllipse` or :class:`LensLight`.
    """

    mass: AbstractLens
    light: LensLight

    def __init__(self, mass: AbstractLens, light):
        if isinstance(mass, LensWithLight):
            raise ValueError("LensWithLight(mass, light): mass already carries light; add the light components instead.")
        if not isinstance(mass, AbstractLens):
            raise ValueError(f"LensWithLight mass must be a blindlens lens, got {type(mass)!r}.")
        self.mass = mass
        self.light = light if isinstance(light, LensLight) else LensLight((light,))

    def deflection(self, x, y):
        return self.mass.deflection(x, y)

    def potential(self, x, y):
        return self.mass.potential(x, y)

    def hessian(self, x, y):
        return self.mass.hessian(x, y)

    def convergence(self, x, y):
        return self.mass.convergence(x, y)


def light_of(lens) -> LensLight | None:
    """The deflector light carried by ``lens`` (``None`` for a mass-only lens)."""
    return lens.light if isinstance(lens, LensWithLight) else None


def mass_of(lens) -> AbstractLens:
    """The mass part of ``lens``."""
    return lens.mass if isinstance(lens, LensWithLight) else lens


class LensLightImager(eqx.Module):
    """PSF-convolved model images of lens light on an image grid.

    The grid, extended by the PSF half-width (so light beyond the edge is convolved in), is
    sampled at ``supersampling^2`` sub-pixel centres; the mean surface brightness per pixel times
    the pixel area is convolved with the PSF and cropped.

    A Sérsic core is far too steep for that: with ``n ~ 3-4`` the central pixel's mean over 2 x 2
    sub-pixels can be off by hundreds of noise sd for a bright deflector (measured on lenstronomy
    systems: docs/real_data.md). So the ``core_size x core_size`` pixels around each component's
    centre are integrated with ``core_supersampling^2`` sub-pixels instead (lenstronomy's adaptive
    supersampling, with the refined pixels following the component's centre as it moves). The
    box is placed on the pixel nearest the centre inside the traced program (clipped to the padded
    grid and written with ``lax.dynamic_update_slice``), so one compiled imager serves every centre.

    Parameters
    ----------
    image_grid
        The image :class:`~blindlens.grid.PixelGrid`.
    psf
        A :class:`~blindlens.psf.PSF` for ``image_grid.shape`` or ``None``.
    supersampling
        Sub-pixels per pixel per axis.
    core_supersampling
        Sub-pixels per pixel per axis in the box around each centre; ``None`` or a value not above
        ``supersampling`` turns the refinement off (the plain, lenstronomy-identical average).
    core_size
        Side of that box in pixels (odd).
    """

    x: Array
    y: Array
    psf: object
    pixel_area: float = eqx.field(static=True)
    supersampling: int = eqx.field(static=True)
    core_supersampling: int = eqx.field(static=True)
    core_size: int = eqx.field(static=True)
    _frame: tuple = eqx.field(static=True)

    def __init__(self, image_grid: PixelGrid, psf=None, supersampling: int = 1,
                 core_supersampling: int | None = CORE_SUPERSAMPLING, core_size: int = CORE_SIZE):
        k = int(supersampling)
        if k < 1:
            raise ValueError(f"supersampling must be a positive integer, got {supersampling}.")
        kc = k if core_supersampling is None else int(core_supersampling)
        if kc < 1:
            raise ValueError(f"core_supersampling must be a positive integer or None, got {core_supersampling}.")
        if int(core_size) < 1 or int(core_size) % 2 == 0:
            raise ValueError(f"core_size must be a positive odd number of pixels, got {core_size}.")
        pad = psf.half_size if psf is not None else (0, 0)
        x, y = image_grid.subpixel_coordinates(k, pad)  # the LensingOperator's ray layout, sky frame included
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.psf = psf
        self.pixel_area = float(image_grid.pixel_area)
        self.supersampling = k
        self.core_supersampling = max(kc, k)
        ny, nx = image_grid.ny + 2 * int(pad[0]), image_grid.nx + 2 * int(pad[1])
        self.core_size = min(int(core_size), ny - (ny + 1) % 2, nx - (nx + 1) % 2)
        (a, b), (c, d) = image_grid.pix2angle or ((image_grid.pixel_scale, 0.0), (0.0, image_grid.pixel_scale))
        det = a * d - b * c
        self._frame = (float(image_grid.center[0]), float(image_grid.center[1]), float(a), float(b), float(c),
                       float(d), float(d / det), float(-b / det), float(-c / det), float(a / det), ny, nx)

    def _core(self, component):
        """``(values, (row0, col0))``: the mean surface brightness of ``component`` on the box around its centre."""
        cx, cy, a, b, c, d, ia, ib, ic, id_, ny, nx = self._frame
        kc, m = self.core_supersampling, self.core_size
        dx, dy = component.center_x - cx, component.center_y - cy
        col = jnp.round(ia * dx + ib * dy + (nx - 1) / 2).astype(jnp.int32)  # padded pixel nearest the centre
        row = jnp.round(ic * dx + id_ * dy + (ny - 1) / 2).astype(jnp.int32)
        col0 = jnp.clip(col - m // 2, 0, nx - m)
        row0 = jnp.clip(row - m // 2, 0, ny - m)
        sub = (jnp.arange(m * kc) + 0.5) / kc - 0.5  # sub-pixel centres in pixel units from the box's first pixel
        u = (col0 + sub - (nx - 1) / 2)[None, :]
        v = (row0 + sub - (ny - 1) / 2)[:, None]
        sb = component.surface_brightness(cx + a * u + b * v, cy + c * u + d * v)
        return sb.reshape(m, kc, m, kc).mean(axis=(1, 3)), (row0, col0)

    def _mean_brightness(self, component):
        k = self.supersampling
        rays = component.surface_brightness(self.x, self.y)
        pixels = rays.reshape(rays.shape[0] // k, k, rays.shape[1] // k, k).mean(axis=(1, 3))
        if self.core_supersampling > k:
            core, start = self._core(component)
            pixels = lax.dynamic_update_slice(pixels, core.astype(pixels.dtype), start)
        return pixels

    def __call__(self, light) -> Image:
        """The model image [image units per pixel] of ``light`` (a component or :class:`LensLight`)."""
        components = light.components if isinstance(light, LensLight) else (light,)
        pixels = sum(self._mean_brightness(c) for c in components) * self.pixel_area
        if self.psf is None:
            return pixels
        return self.psf.crop(self.psf.convolve_padded(pixels))
