r"""Thin-lens mass profiles in lenstronomy's conventions, as pure functions and Equinox Modules.

Every profile exists twice (the other pure functions of a profile take the parameters
documented on its ``deflection_<name>``; potentials in arcsec^2, convergence dimensionless):

* pure functions ``deflection_<name>(x, y, *params)``, ``potential_<name>``,
  ``convergence_<name>``, ``hessian_<name>`` (elementwise over arrays of any shape), and
* an :class:`AbstractLens` subclass whose fields are the physical parameters under
  lenstronomy's keyword names (``SIE(theta_E, e1, e2, center_x, center_y)``, ...), with
  ``deflection``, ``potential``, ``convergence``, ``hessian``, ``magnification`` and
  ``ray_shoot``. Lenses add: ``SIE(...) + ExternalShear(...)`` is a :class:`CompositeLens`.

The package holds one concept per module; every name is re-exported here, so
``from blindlens.lens_models import SIE`` is the import to use:

* :mod:`~blindlens.lens_models.base`: :class:`AbstractLens` and :class:`CompositeLens`;
* :mod:`~blindlens.lens_models.isothermal`: ``SIS`` and ``SIE`` (pure functions and Modules);
* :mod:`~blindlens.lens_models.epl`: ``EPL`` and its hypergeometric series;
* :mod:`~blindlens.lens_models.shear`: ``ExternalShear``;
* :mod:`~blindlens.lens_models.shift`: ``Shift`` (a constant deflection);
* :mod:`~blindlens.lens_models.multipole`: ``Multipole``;
* :mod:`~blindlens.lens_models.critical_curves`: :func:`inverse_magnification_map`,
  :func:`critical_curves_and_caustics`;
* :mod:`~blindlens.lens_models._helpers`: the shared numerical helpers (private).

Conventions (lenstronomy 1.14, verified against it in ``tests/test_lens_models.py``):
angles in arcsec, position angles counter-clockwise from +x, deflections are *reduced*
(scaled by ``D_ls / D_s``), the lens equation is ``beta = theta - alpha(theta)``.
Ellipticity ``e1 + i e2 = (1 - q)/(1 + q) exp(2 i phi)`` with ``q`` the minor/major axis ratio;
the Einstein radius is lenstronomy's intermediate-axis ("circularised") one.

Numerics: an ellipticity-free complex formulation
--------------------------------------------------
The textbook SIE/EPL formulas rotate into the major-axis frame with
``phi = atan2(e2, e1)/2`` and use ``q = (1-|e|)/(1+|e|)``; both are non-differentiable at
``e = 0`` (``jax.grad`` returns NaN there) and the SIE closed form has a ``0/0`` at ``q = 1``.
We instead write the Tessore & Metcalf (2015) solution directly in the sky frame.  With
``z = (x - center_x) + i (y - center_y)`` and ``epsilon = e1 + i e2``, the major-axis elliptical
coordinate ``Z = q x' + i y'`` of T&M satisfies

.. math::  w \equiv z - \epsilon \bar z = (1 + |e|)\, e^{i\phi} Z ,

so ``|w| = (1+|e|) R`` and the elliptical angle is ``exp(i theta) = exp(-i phi) w/|w|``.
Substituting into T&M eqs. (13), (22) and ``b = theta_E sqrt(q)`` (lenstronomy's EPL) gives

.. math::
    \kappa = \frac{2-t}{2} \left(\frac{b_e}{|w|}\right)^{t}, \qquad
    \alpha_x + i\alpha_y = b_e \left(\frac{b_e}{|w|}\right)^{t-1} \hat w\;
        {}_2F_1\!\left(1, \tfrac{t}{2}; 2 - \tfrac{t}{2}; -\bar\epsilon\, \hat w^2\right),

with ``t = gamma - 1``, ``hat w = w/|w|`` and ``b_e = theta_E sqrt(1 - e1^2 - e2^2)``
(because ``q (1+|e|)^2 = 1 - |e|^2``).  Every quantity is a polynomial or an analytic function
of ``(e1, e2)``: no ``atan2``, no ``|e|``, so values *and* gradients are smooth through
``e = 0``.  The only remaining singular point is the exact centre ``z = 0``, handled with the
"double-where" trick (compute on a safe dummy value, then select), see :func:`_safe_modulus`.
For speed the SIE uses Keeton's real closed form when ``|e| >= 1e-3`` and this complex form
(with a Taylor series) only below, see :func:`deflection_sie`.

The public pure functions are wrapped in ``jax.jit`` (``m`` and ``n_terms`` static), so eager
calls (plots, notebooks) hit XLA's cache instead of re-tracing ``lax.cond``/``lax.scan`` on
every call; inside a user's ``jit`` they are inlined.

At the exact centre the profiles return their symmetric limit for the deflection and the
potential (0, as lenstronomy does for SIS/SIE/EPL), and finite but meaningless values for the
convergence and Hessian (evaluated at radius ``1e-8`` arcsec with zero shear); gradients there
are finite.  lenstronomy's ``MULTIPOLE`` uses ``atan2(0, 0) = 0`` at its centre, and so do we.

References
----------
Tessore N., Metcalf R. B., 2015, A&A 580, A79 (arXiv:1507.01819), "The elliptical power law
profile lens" (EPL deflection: eqs. 13, 15, 22, 23; shear: eq. 17 of the corrigendum).
Kormann R., Schneider P., Bartelmann M., 1994, A&A 284, 285 (SIE closed form).
Keeton C. R., 2001, arXiv:astro-ph/0102341 (SIE/NIE formulas as used by lenstronomy).
Xu D. et al., 2013, MNRAS 435, 607, App. B3, eq. B12 (circular multipoles, lenstronomy
``MULTIPOLE``).
Schneider P., Ehlers J., Falco E. E., 1992, *Gravitational Lenses*, ch. 5 (potential,
convergence ``kappa = Laplacian(psi)/2``, shear, magnification ``1/det A``).
Birrer S. et al., 2021, JOSS 6, 3283 (lenstronomy II; parameter conventions).
"""

from __future__ import annotations

from ._helpers import _CENTRE_FLOOR as _CENTRE_FLOOR
from ._helpers import _as_coordinates as _as_coordinates
from ._helpers import _check_ellipticity as _check_ellipticity
from ._helpers import _check_nonnegative as _check_nonnegative
from ._helpers import _complex_offset as _complex_offset
from ._helpers import _floored as _floored
from ._helpers import _hessian_from_kappa_gamma as _hessian_from_kappa_gamma
from ._helpers import _is_concrete as _is_concrete
from ._helpers import _Pair as _Pair
from ._helpers import _Quad as _Quad
from ._helpers import _safe_modulus as _safe_modulus
from ._helpers import _split as _split
from .base import AbstractLens, CompositeLens
from .base import _param as _param
from .critical_curves import critical_curves_and_caustics, inverse_magnification_map
from .epl import _EPL_DEFAULT_TERMS as _EPL_DEFAULT_TERMS
from .epl import EPL, convergence_epl, deflection_epl, hessian_epl, potential_epl
from .epl import _epl_alpha as _epl_alpha
from .epl import _hyp2f1_epl as _hyp2f1_epl
from .epl import _hyp2f1_epl_jvp as _hyp2f1_epl_jvp
from .epl import _hyp2f1_epl_series as _hyp2f1_epl_series
from .isothermal import _SERIES_SWITCH as _SERIES_SWITCH
from .isothermal import (
    SIE,
    SIS,
    convergence_sie,
    convergence_sis,
    deflection_sie,
    deflection_sis,
    hessian_sie,
    hessian_sis,
    potential_sie,
    potential_sis,
)
from .isothermal import _sie_alpha_keeton as _sie_alpha_keeton
from .isothermal import _sie_alpha_round as _sie_alpha_round
from .isothermal import _sie_parts as _sie_parts
from .multipole import (
    Multipole,
    convergence_multipole,
    deflection_multipole,
    hessian_multipole,
    potential_multipole,
)
from .multipole import _check_multipole_order as _check_multipole_order
from .multipole import _multipole_parts as _multipole_parts
from .shear import (
    ExternalShear,
    convergence_shear,
    deflection_shear,
    hessian_shear,
    potential_shear,
)
from .shift import (
    Shift,
    convergence_shift,
    deflection_shift,
    hessian_shift,
    potential_shift,
)

__all__ = [
    "AbstractLens",
    "CompositeLens",
    "SIS",
    "SIE",
    "EPL",
    "ExternalShear",
    "Multipole",
    "Shift",
    "deflection_sis",
    "potential_sis",
    "convergence_sis",
    "hessian_sis",
    "deflection_sie",
    "potential_sie",
    "convergence_sie",
    "hessian_sie",
    "deflection_epl",
    "potential_epl",
    "convergence_epl",
    "hessian_epl",
    "deflection_shear",
    "potential_shear",
    "convergence_shear",
    "hessian_shear",
    "deflection_shift",
    "potential_shift",
    "convergence_shift",
    "hessian_shift",
    "deflection_multipole",
    "potential_multipole",
    "convergence_multipole",
    "hessian_multipole",
    "inverse_magnification_map",
    "critical_curves_and_caustics",
]
