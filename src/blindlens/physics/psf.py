"""Point-spread functions: kernels, checks, and FFT convolution with explicit zero padding.

Convolution convention: "same"-size, zero-padded, true (flipped-kernel) convolution,

    (K * I)[p] = sum_m K[m] I[p + h - m],        h = (k - 1) / 2,

identical to ``scipy.signal.convolve(image, kernel, mode="same")`` and to lenstronomy's
``PixelKernelConvolution``. It is computed as a *circular* convolution on an explicitly
zero-padded array of shape ``(ny + 2 hy, nx + 2 hx)`` (at least): pixels that the kernel reaches
from inside the image never wrap around, so the cropped circular result equals the zero-padded
linear one exactly. Letting ``rfft2`` pad implicitly (its ``s=`` argument) gives the same numbers
but is about 2x slower on XLA:CPU (``docs/performance.md``), so the padding is explicit.

The adjoint of convolution is correlation: in Fourier space, multiplication by the complex
conjugate of the kernel transform (Press et al., *Numerical Recipes*, 3rd ed., sec. 13.1).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array, Float, Image, Kernel

__all__ = ["PSF", "gaussian_psf", "validate_psf_kernel", "fft_shape_for"]

_SUM_TOLERANCE = 1e-3


def gaussian_psf(fwhm: float, pixel_scale: float, size: int | None = None) -> np.ndarray:
    """A circular Gaussian PSF kernel sampled at pixel centres, normalised to unit sum.

    Parameters
    ----------
    fwhm
        Full width at half maximum in arcsec; ``sigma = fwhm / (2 sqrt(2 ln 2))``.
    pixel_scale
        Pixel side length in arcsec.
    size
        Odd kernel side length in pixels. Default: the smallest odd size covering
        ``+-2 fwhm`` (e.g. 9 for FWHM 0.1" at 0.05"/pix, 17 at 0.025"/pix).

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` kernel, float64, unit sum, centred on the middle pixel.
    """
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"PSF fwhm must be a positive number of arcsec, got {fwhm}.")
    if not (np.isfinite(pixel_scale) and pixel_scale > 0):
        raise ValueError(f"PSF pixel_scale must be positive (arcsec/pixel), got {pixel_scale}.")
    if size is None:
        half = int(math.floor(2.0 * fwhm / pixel_scale + 1e-9))
        size = 2 * max(half, 1) + 1
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"PSF size must be a positive odd integer, got {size}.")
    size = int(size)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    r = (np.arange(size) - (size - 1) / 2) * pixel_scale
    g = np.exp(-0.5 * (r / sigma) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def validate_psf_kernel(kernel, name: str = "PSF kernel") -> np.ndarray:
    """Check a PSF kernel and return it as a float64 NumPy array.

    A valid kernel is 2-D, odd-sized along both axes (so it has a central pixel), finite,
    and sums to 1 within ``1e-3``. Nothing is fixed silently: each failure raises a
    ``ValueError`` that names the problem and the fix.
    """
    k = np.asarray(kernel)
    if k.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {k.shape}.")
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(
            f"{name} has even size {k.shape}: it must be odd-sized along both axes so that it has a "
            "central pixel. Re-sample or crop it to an odd size (e.g. drop one row/column)."
        )
    if not np.issubdtype(k.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {k.dtype}.")
    k = k.astype(np.float64)
    if not np.all(np.isfinite(k)):
        raise ValueError(f"{name} contains NaN or infinite values; fix or replace the kernel.")
    total = float(k.sum())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(
            f"{name} sums to {total:.6g}, not 1 (tolerance {_SUM_TOLERANCE:g}): normalise it "
            "(kernel / kernel.sum()) before use so that flux is conserved."
        )
    return k


def fft_shape_for(image_shape: tuple[int, int], kernel_shape: tuple[int, int]) -> tuple[int, int]:
    """The padded FFT shape ``(ny + ky - 1, nx + kx - 1)`` that makes circular convolution exact."""
    return (image_shape[0] + kernel_shape[0] - 1, image_shape[1] + kernel_shape[1] - 1)


class PSF(eqx.Module):
    """A PSF kernel bound to an image shape, with its FFT precomputed for explicitly padded convolution.

    Parameters
    ----------
    kernel
        Odd-sized, finite kernel with unit sum (checked by :func:`validate_psf_kernel`),
        sampled at the image pixel scale.
    image_shape
        ``(ny, nx)`` of the images it will convolve.

    Notes
    -----
    ``convolve`` and ``correlate`` are exact adjoints of each other (``<K*x, y> = <x, K^T y>``).
    ``convolve_padded``/``correlate_padded`` work on arrays already laid out on the padded
    FFT grid (the image in the centre, a zero ring of ``(ky-1)/2, (kx-1)/2`` pixels) and are used by
    :class:`~blindlens.lensing_operator.LensingOperator` to avoid an extra pad/crop.
    """

    kernel: Kernel
    kernel_fft: Array
    image_shape: tuple[int, int] = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, kernel, image_shape: tuple[int, int]):
        if len(image_shape) != 2 or min(image_shape) < 1:
            raise ValueError(f"PSF image_shape must be (ny, nx) with positive sizes, got {image_shape}.")
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        dtype = jnp.asarray(0.0).dtype  # float32, or float64 under jax_enable_x64
        if isinstance(kernel, jax.core.Tracer):
            # Built inside a transformation from a traced kernel: only the shape can be checked
            # here (values were checked when the kernel entered, e.g. by Observation).
            if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
                raise ValueError(f"PSF kernel must be 2-D and odd-sized, got shape {kernel.shape}.")
            self.fft_shape = fft_shape_for(self.image_shape, kernel.shape)
            self.kernel = kernel.astype(dtype)
            self.kernel_fft = jnp.fft.rfft2(_wrap_kernel_jax(self.kernel, self.fft_shape))
            return
        k = validate_psf_kernel(kernel)
        self.fft_shape = fft_shape_for(self.image_shape, k.shape)
        self.kernel = jnp.asarray(k, dtype)
        self.kernel_fft = jnp.asarray(np.fft.rfft2(_wrap_kernel(k, self.fft_shape)).astype(
            np.complex128 if dtype == jnp.float64 else np.complex64))

    @property
    def half_size(self) -> tuple[int, int]:
        """``((ky - 1) / 2, (kx - 1) / 2)``: the zero ring width of the padded layout."""
        return ((self.kernel.shape[0] - 1) // 2, (self.kernel.shape[1] - 1) // 2)

    def pad(self, image: Image) -> Float[Array, "fy fx"]:
        """Embed an image in the centre of the zero-padded FFT grid."""
        hy, hx = self.half_size
        fy, fx = self.fft_shape
        ny, nx = self.image_shape
        return jnp.pad(image, ((hy, fy - ny - hy), (hx, fx - nx - hx)))

    def crop(self, padded: Float[Array, "fy fx"]) -> Image:
        """Cut the image back out of the padded FFT grid (the transpose of :meth:`pad`)."""
        hy, hx = self.half_size
        ny, nx = self.image_shape
        return padded[hy : hy + ny, hx : hx + nx]

    def convolve_padded(self, padded: Float[Array, "fy fx"]) -> Float[Array, "fy fx"]:
        """Circular convolution on the padded grid; exact "same" convolution in the central crop."""
        return jnp.fft.irfft2(jnp.fft.rfft2(padded) * self.kernel_fft, s=self.fft_shape).astype(
            padded.dtype
        )

    def correlate_padded(self, padded: Float[Array, "fy fx"]) -> Float[Array, "fy fx"]:
        """Circular correlation on the padded grid: the exact transpose of :meth:`convolve_padded`."""
        return jnp.fft.irfft2(
            jnp.fft.rfft2(padded) * jnp.conj(self.kernel_fft), s=self.fft_shape
        ).astype(padded.dtype)

    def convolve(self, image: Image) -> Image:
        """Zero-padded "same" convolution, ``scipy.signal.convolve(image, kernel, mode="same")``."""
        self._check_shape(image)
        return self.crop(self.convolve_padded(self.pad(image)))

    def correlate(self, image: Image) -> Image:
        """The exact adjoint of :meth:`convolve` (correlation with the kernel, zero-padded)."""
        self._check_shape(image)
        return self.crop(self.correlate_padded(self.pad(image)))

    adjoint = correlate

    def _check_shape(self, image):
        if tuple(image.shape[-2:]) != self.image_shape:
            raise ValueError(
                f"PSF was built for images of shape {self.image_shape}, got {tuple(image.shape)}; "
                "build a PSF for this image shape."
            )


def _wrap_kernel(kernel: np.ndarray, fft_shape: tuple[int, int]) -> np.ndarray:
    """Place the kernel on the FFT grid with its centre at index (0, 0) (circularly wrapped)."""
    ky, kx = kernel.shape
    out = np.zeros(fft_shape, dtype=np.float64)
    out[:ky, :kx] = kernel
    return np.roll(out, (-(ky // 2), -(kx // 2)), axis=(0, 1))


def _wrap_kernel_jax(kernel, fft_shape: tuple[int, int]):
    """:func:`_wrap_kernel` for a (possibly traced) JAX array."""
    ky, kx = kernel.shape
    out = jnp.zeros(fft_shape, kernel.dtype).at[:ky, :kx].set(kernel)
    return jnp.roll(out, (-(ky // 2), -(kx // 2)), axis=(0, 1))
