"""Conversion between blindlens lenses and lenstronomy's ``lens_model_list`` / ``kwargs_lens``.

lenstronomy (Birrer & Amara 2018; Birrer et al. 2021) describes a lens by a list of profile
names and a list of keyword dictionaries, e.g. ``["SIE", "SHEAR"]`` and
``[{"theta_E": 1.2, "e1": 0.1, ...}, {"gamma1": 0.02, "gamma2": -0.01}]``.  The mass profiles of
:mod:`blindlens.lens_models` already use lenstronomy's parameter names and conventions (angles
and positions in arcsec, position angles in radians counter-clockwise from +x, ellipticity
``e1 + i e2 = (1 - q)/(1 + q) exp(2 i phi)``, reduced deflections), so the conversion is a
renaming with no change of values:

* :class:`~blindlens.lens_models.SIS` is ``SIS``: ``theta_E, center_x, center_y``;
* :class:`~blindlens.lens_models.SIE` is ``SIE``: ``theta_E, e1, e2, center_x, center_y``;
* :class:`~blindlens.lens_models.EPL` is ``EPL``: ``theta_E, gamma, e1, e2, center_x, center_y``;
* :class:`~blindlens.lens_models.ExternalShear` is ``SHEAR``: ``gamma1, gamma2, ra_0, dec_0``;
* :class:`~blindlens.lens_models.Multipole` is ``MULTIPOLE``: ``m, a_m, phi_m, center_x, center_y``;
* :class:`~blindlens.lens_models.Shift` is ``SHIFT``: ``alpha_x, alpha_y``.

:func:`from_lenstronomy` also reads ``SHEAR_GAMMA_PSI`` (``gamma_ext, psi_ext, ra_0, dec_0``,
converted to ``gamma1 = gamma_ext cos 2 psi_ext``, ``gamma2 = gamma_ext sin 2 psi_ext``) and
accepts the ``r_E`` key of lenstronomy's ``MULTIPOLE``, which only enters its ``m = 1`` branch
(blindlens implements ``m >= 2``, where ``r_E`` has no effect, so it is dropped).  Keys that
lenstronomy gives a default (``center_x``, ``center_y``, ``ra_0``, ``dec_0``) may be left out
and default to 0 as there.

The deflector light of :mod:`blindlens.light_profiles` converts the same way
(:func:`to_lenstronomy_light`, :func:`from_lenstronomy_light`): ``SersicEllipse`` is
lenstronomy's ``SERSIC_ELLIPSE`` (``amp, R_sersic, n_sersic, e1, e2, center_x, center_y``), and
the round ``SERSIC`` is read as a ``SersicEllipse`` with ``e1 = e2 = 0``.

Posterior draws and summaries: :func:`lens_from_posterior` runs the user's lens model (a NumPyro
model that returns a lens, see :mod:`blindlens.numpyro_model`) with its sites fixed to a dict of
values, to one draw of an ArviZ posterior, or to the posterior mean of each site;
:func:`to_lenstronomy_kwargs` converts the result.  The mean is taken over the *sites* (the
parameters the model samples), then the lens is built from it.

lenstronomy is not imported here (it is an optional, test-only dependency of blindlens); the
agreement of the deflections is checked against it in ``tests/test_lenstronomy_bridge.py``.

References
----------
Birrer S., Amara A., 2018, Phys. Dark Universe 22, 189, "lenstronomy: Multi-purpose gravitational
lens modelling software package" (arXiv:1803.09746).
Birrer S. et al., 2021, JOSS 6, 3283, "lenstronomy II: A gravitational lensing software ecosystem".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from ..physics.lens_models import (
    EPL,
    SIE,
    SIS,
    AbstractLens,
    CompositeLens,
    ExternalShear,
    Multipole,
    Shift,
)

__all__ = [
    "to_lenstronomy",
    "from_lenstronomy",
    "lens_from_posterior",
    "to_lenstronomy_kwargs",
    "to_lenstronomy_light",
    "from_lenstronomy_light",
    "SUPPORTED_LENS_PROFILES",
    "SUPPORTED_LIGHT_PROFILES",
]

# lenstronomy name -> (blindlens class, required keys, optional keys with lenstronomy's defaults).
# The key order is lenstronomy's ``param_names`` order (what :func:`to_lenstronomy` writes).
_MASS = {
    "SIS": (SIS, ("theta_E",), {"center_x": 0.0, "center_y": 0.0}),
    "SIE": (SIE, ("theta_E", "e1", "e2"), {"center_x": 0.0, "center_y": 0.0}),
    "EPL": (EPL, ("theta_E", "gamma", "e1", "e2"), {"center_x": 0.0, "center_y": 0.0}),
    "SHEAR": (ExternalShear, ("gamma1", "gamma2"), {"ra_0": 0.0, "dec_0": 0.0}),
    "MULTIPOLE": (Multipole, ("m", "a_m", "phi_m"), {"center_x": 0.0, "center_y": 0.0}),
    "SHIFT": (Shift, ("alpha_x", "alpha_y"), {}),
}
# keys lenstronomy accepts that blindlens reads but does not keep (see the module docstring)
_IGNORED_KEYS = {"MULTIPOLE": ("r_E",)}
# parameterisations that are read only (written back in the canonical form)
_READ_ONLY_MASS = {"SHEAR_GAMMA_PSI": (("gamma_ext", "psi_ext"), {"ra_0": 0.0, "dec_0": 0.0})}

SUPPORTED_LENS_PROFILES = tuple(sorted([*_MASS, *_READ_ONLY_MASS]))
"""lenstronomy lens-profile names that :func:`from_lenstronomy` reads."""

_SERSIC_ELLIPSE_KEYS = ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y")
_LIGHT = {
    "SERSIC_ELLIPSE": (("amp", "R_sersic", "n_sersic", "e1", "e2"), {"center_x": 0.0, "center_y": 0.0}),
    "SERSIC": (("amp", "R_sersic", "n_sersic"), {"center_x": 0.0, "center_y": 0.0}),
}
SUPPORTED_LIGHT_PROFILES = tuple(sorted(_LIGHT))
"""lenstronomy light-profile names that :func:`from_lenstronomy_light` reads."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _plain_float(value, where: str) -> float:
    """A scalar parameter as a Python float, with a clear error for arrays and traced values."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{where} is a traced JAX value (inside jit/vmap/grad); convert lenses to lenstronomy "
            "outside transformed functions."
        )
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise ValueError(
            f"{where} has shape {arr.shape}, but lenstronomy takes one scalar per parameter; "
            "convert a single posterior draw or summary (e.g. lens_from_posterior(model, idata))."
        )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{where} must be a real number, got {value!r}.")
    return float(arr)


def _integer(value, where: str) -> int:
    number = _plain_float(value, where)
    if not number.is_integer():
        raise ValueError(f"{where} must be an integer, got {value!r}.")
    return int(number)


def _mass_of(lens):
    """The mass part of a lens that carries deflector light (:class:`LensWithLight`)."""
    mass = getattr(lens, "mass", None)
    return mass if isinstance(mass, AbstractLens) else lens


def _check_lists(names, kwargs_list, kind: str, supported: Sequence[str]):
    list_name, kwargs_name = f"{kind}_model_list", f"kwargs_{kind}"
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(
            f"{list_name} must be a list of lenstronomy profile names, e.g. [{supported[0]!r}], "
            f"got {names!r}."
        )
    if isinstance(kwargs_list, Mapping) or not isinstance(kwargs_list, Sequence):
        raise ValueError(
            f"{kwargs_name} must be a list with one dict of keyword arguments per profile, "
            f"got {type(kwargs_list).__name__}."
        )
    if len(names) != len(kwargs_list):
        raise ValueError(
            f"{list_name} has {len(names)} profile(s) but {kwargs_name} has {len(kwargs_list)} "
            "dict(s); they must match one to one."
        )
    if not names:
        raise ValueError(f"{list_name} is empty; give at least one profile.")
    for i, (name, kw) in enumerate(zip(names, kwargs_list)):
        if name not in supported:
            raise ValueError(
                f"{list_name}[{i}] = {name!r} is not supported by blindlens; supported "
                f"profiles: {', '.join(supported)}."
            )
        if not isinstance(kw, Mapping):
            raise ValueError(f"{kwargs_name}[{i}] ({name}) must be a dict, got {type(kw).__name__}.")


def _read_keys(kw: Mapping, name: str, where: str, required, optional: Mapping, ignored=()):
    """Scalar values of the keys of one profile, with the defaults filled in."""
    keys = set(kw)
    missing = [k for k in required if k not in keys]
    extra = sorted(keys - set(required) - set(optional) - set(ignored), key=str)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing key(s) {missing}")
        if extra:
            problems.append(f"unknown key(s) {extra}")
        accepted = f"required {list(required)}, optional {list(optional) + list(ignored)}"
        raise ValueError(f"{where} ({name}): {' and '.join(problems)}; {name} takes {accepted}.")
    values = dict(optional)
    values.update({k: kw[k] for k in required})
    values.update({k: kw[k] for k in optional if k in kw})
    return {k: (v if k == "m" else _plain_float(v, f"{where}[{k!r}]")) for k, v in values.items()}


# --------------------------------------------------------------------------------------------
# mass
# --------------------------------------------------------------------------------------------


def to_lenstronomy(lens: AbstractLens) -> tuple[list[str], list[dict[str, float]]]:
    """lenstronomy's ``lens_model_list`` and ``kwargs_lens`` for a blindlens lens.

    Parameters
    ----------
    lens
        A mass profile of :mod:`blindlens.lens_models` (``SIS``, ``SIE``, ``EPL``,
        ``ExternalShear``, ``Multipole``), a :class:`~blindlens.lens_models.CompositeLens` of
        them (``SIE(...) + ExternalShear(...)``), or a lens with deflector light (its mass is
        converted; use :func:`to_lenstronomy_light` for the light).  Every parameter must be a
        scalar: convert one posterior draw or summary, not a batch.

    Returns
    -------
    lens_model_list : list of str
        lenstronomy profile names, one per component, in the order of ``lens.components``.
    kwargs_lens : list of dict
        One dict per component with lenstronomy's keyword names and plain Python ``float``
        values (``int`` for the multipole order ``m``): positions, Einstein radii and
        multipole strengths ``a_m`` in arcsec, angles in radians, ``gamma``, ``e1``, ``e2``,
        ``gamma1``, ``gamma2`` dimensionless.  ``LensModel(lens_model_list).alpha(x, y,
        kwargs_lens)`` then equals ``lens.deflection(x, y)``.

    Raises
    ------
    ValueError
        For a component blindlens cannot express in lenstronomy (e.g. a user-defined
        ``AbstractLens`` subclass), array-valued (batched) or traced parameters.

    Notes
    -----
    The EPL's ``n_terms`` (a numerical setting of its series) has no lenstronomy counterpart
    and is not written.  See Birrer & Amara (2018) and Birrer et al. (2021, JOSS 6, 3283) for
    lenstronomy's profile definitions.

    Examples
    --------
    >>> from blindlens.lens_models import SIE, ExternalShear
    >>> to_lenstronomy(SIE(1.0, 0.1, 0.0) + ExternalShear(0.02, 0.0))[0]
    ['SIE', 'SHEAR']
    """
    mass = _mass_of(lens)
    if not isinstance(mass, AbstractLens):
        raise ValueError(
            f"to_lenstronomy needs a blindlens lens (blindlens.lens_models), got {type(lens)!r}."
        )
    components = mass.components if isinstance(mass, CompositeLens) else (mass,)
    names, kwargs = [], []
    for i, comp in enumerate(components):
        entry = next(((n, spec) for n, spec in _MASS.items() if type(comp) is spec[0]), None)
        if entry is None:
            raise ValueError(
                f"Lens component {i} is a {type(comp).__name__}, which has no lenstronomy "
                f"counterpart here; supported classes: "
                f"{', '.join(spec[0].__name__ for spec in _MASS.values())}."
            )
        name, (_, required, optional) = entry
        kw = {}
        for key in (*required, *optional):
            where = f"{type(comp).__name__}.{key} (component {i})"
            kw[key] = int(comp.m) if key == "m" else _plain_float(getattr(comp, key), where)
        names.append(name)
        kwargs.append(kw)
    return names, kwargs


def from_lenstronomy(
    lens_model_list: Sequence[str], kwargs_lens: Sequence[Mapping[str, float]]
) -> AbstractLens:
    """A blindlens lens from lenstronomy's ``lens_model_list`` and ``kwargs_lens``.

    Parameters
    ----------
    lens_model_list
        lenstronomy profile names; supported: ``SIS``, ``SIE``, ``EPL``, ``SHEAR``,
        ``SHEAR_GAMMA_PSI``, ``MULTIPOLE`` (order ``m >= 2``).
    kwargs_lens
        One dict of keyword arguments per profile, as lenstronomy takes them (arcsec for
        positions, Einstein radii and ``a_m``; radians for angles).  Keys with a default in
        lenstronomy (``center_x``, ``center_y``, ``ra_0``, ``dec_0``, the multipole's ``r_E``)
        may be omitted; ``r_E`` has no effect for ``m >= 2`` and is dropped.

    Returns
    -------
    AbstractLens
        The single profile for a one-element list, else a
        :class:`~blindlens.lens_models.CompositeLens` with the components in list order.
        Parameters are stored at JAX's default precision (float32 unless x64 is enabled).

    Raises
    ------
    ValueError
        One line naming the problem: an unsupported profile (e.g. ``NFW``; the message lists
        the supported ones), missing or unknown keys, non-scalar values, lists of different
        lengths, or parameters outside a profile's domain (``e1^2 + e2^2 >= 1``, ...).

    Notes
    -----
    Conventions are lenstronomy's (Birrer & Amara 2018; Birrer et al. 2021, JOSS 6, 3283);
    the values are copied, not transformed, except ``SHEAR_GAMMA_PSI``:
    ``gamma1 = gamma_ext cos(2 psi_ext)``, ``gamma2 = gamma_ext sin(2 psi_ext)``.

    Examples
    --------
    >>> lens = from_lenstronomy(["SIE", "SHEAR"], [
    ...     {"theta_E": 1.1, "e1": 0.1, "e2": -0.05, "center_x": 0.0, "center_y": 0.0},
    ...     {"gamma1": 0.03, "gamma2": 0.01}])
    >>> type(lens).__name__
    'CompositeLens'
    """
    _check_lists(lens_model_list, kwargs_lens, "lens", SUPPORTED_LENS_PROFILES)
    components = []
    for i, (name, kw) in enumerate(zip(lens_model_list, kwargs_lens)):
        where = f"kwargs_lens[{i}]"
        if name == "SHEAR_GAMMA_PSI":
            required, optional = _READ_ONLY_MASS[name]
            v = _read_keys(kw, name, where, required, optional)
            g, psi = v.pop("gamma_ext"), v.pop("psi_ext")
            cls, v = ExternalShear, dict(gamma1=g * np.cos(2 * psi), gamma2=g * np.sin(2 * psi), **v)
        else:
            cls, required, optional = _MASS[name]
            v = _read_keys(kw, name, where, required, optional, _IGNORED_KEYS.get(name, ()))
            if name == "MULTIPOLE":
                v["m"] = _integer(v["m"], f"{where}['m']")
        try:
            components.append(cls(**v))
        except ValueError as err:
            raise ValueError(f"{where} ({name}): {err}") from err
    return components[0] if len(components) == 1 else CompositeLens(components)


# --------------------------------------------------------------------------------------------
# posterior draws and summaries
# --------------------------------------------------------------------------------------------


def _posterior_group(posterior):
    """The group holding one variable per site: ``idata.posterior`` or a Dataset itself."""
    group = getattr(posterior, "posterior", None)
    if group is not None:
        return group
    if hasattr(posterior, "data_vars"):  # an xarray Dataset (or DataTree node) of draws
        return posterior
    return None


def _select(variable, name: str, chain, draw) -> np.ndarray:
    """One site of a posterior group: the chosen draw, or the mean over the rest."""
    dims = tuple(variable.dims)
    if chain is not None:
        if "chain" not in dims:
            raise ValueError(f"Posterior variable {name!r} has no 'chain' dimension (dims {dims}).")
        variable = variable.isel(chain=chain)
    if draw is not None:
        if "draw" not in dims:
            raise ValueError(f"Posterior variable {name!r} has no 'draw' dimension (dims {dims}).")
        if chain is None and "chain" in dims and variable.sizes["chain"] > 1:
            raise ValueError(
                f"draw={draw} is ambiguous with {variable.sizes['chain']} chains; pass chain= too."
            )
        variable = variable.isel(draw=draw)
    mean_dims = [d for d in ("chain", "draw") if d in variable.dims]
    if mean_dims:
        variable = variable.mean(mean_dims)
    return np.asarray(variable.values, dtype=float)


def lens_from_posterior(
    lens_model: Callable[[], AbstractLens],
    posterior,
    *,
    chain: int | None = None,
    draw: int | None = None,
) -> AbstractLens:
    """The lens of ``lens_model`` at one posterior draw, a summary, or a dict of site values.

    Parameters
    ----------
    lens_model
        The NumPyro lens model the posterior came from (a function without arguments that
        samples the lens sites and returns a lens, e.g. :func:`blindlens.numpyro_model.sie_shear`).
    posterior
        Either a mapping ``site name -> value`` (constrained values, e.g. a posterior summary
        you computed; keys that are not lens sites, like ``"source"``, are ignored), or an ArviZ
        ``InferenceData`` / ``DataTree`` whose ``posterior`` group holds one variable per lens
        site with dims ``(chain, draw)``, or that posterior group (an xarray ``Dataset``) itself.
    chain, draw
        Indices into the posterior group.  Both ``None`` (default): the posterior mean of
        every site over all chains and draws.  ``chain`` only: the mean over that chain's draws.
        ``draw`` (with ``chain``, which may be left out for a single chain): that draw.

    Returns
    -------
    AbstractLens
        ``lens_model()`` with every site fixed to the selected values
        (:func:`blindlens.numpyro_model.lens_from_values`).  Means are of the sites, so a lens
        built from derived quantities (e.g. the multipoles of
        :func:`~blindlens.numpyro_model.epl_shear_multipole`) uses the mean sites, not mean
        derived parameters.

    Raises
    ------
    ValueError
        When a lens site is missing from ``posterior``, or ``chain``/``draw`` are given with a
        plain mapping or are ambiguous.
    """
    from ..inference.numpyro_model import lens_from_values, lens_site_names

    sites = lens_site_names(lens_model)
    group = _posterior_group(posterior)
    if group is not None:
        values = {}
        for name in sites:
            try:
                variable = group[name]
            except KeyError:
                variable = None
            if variable is None:
                raise ValueError(
                    f"The posterior has no variable {name!r}; the lens model samples {list(sites)}. "
                    "Pass the lens model the posterior was sampled with."
                )
            values[name] = _select(variable, name, chain, draw)
    elif isinstance(posterior, Mapping):
        if chain is not None or draw is not None:
            raise ValueError(
                "chain=/draw= select from an ArviZ posterior; for a dict of values pass one draw "
                "or summary and leave them out."
            )
        missing = [name for name in sites if name not in posterior]
        if missing:
            raise ValueError(
                f"Lens site(s) {missing} have no value; the lens model samples {list(sites)}."
            )
        values = {name: np.asarray(posterior[name], dtype=float) for name in sites}
    else:
        raise ValueError(
            "posterior must be a dict of site values, an ArviZ InferenceData/DataTree or its "
            f"posterior Dataset, got {type(posterior).__name__}."
        )
    return lens_from_values(lens_model, values)


def to_lenstronomy_kwargs(
    lens_model: Callable[[], AbstractLens],
    posterior,
    *,
    chain: int | None = None,
    draw: int | None = None,
) -> tuple[list[str], list[dict[str, float]]]:
    """lenstronomy's ``lens_model_list`` and ``kwargs_lens`` for a posterior draw or summary.

    ``to_lenstronomy(lens_from_posterior(lens_model, posterior, chain=chain, draw=draw))``:
    with an ArviZ ``InferenceData`` and no ``chain``/``draw`` this is the lens at the posterior
    mean of every site; with a dict of site values (e.g. one draw), the lens at those values.
    See :func:`lens_from_posterior` for the arguments and :func:`to_lenstronomy` for the result
    (units: arcsec and radians, plain Python floats).

    Examples
    --------
    With ``idata = arviz.from_netcdf("post.nc")`` from ``blindlens sample`` (default model)::

        from blindlens.numpyro_model import sie_shear
        names, kwargs = to_lenstronomy_kwargs(sie_shear, idata)  # ['SIE', 'SHEAR'], posterior mean
        names, kwargs = to_lenstronomy_kwargs(sie_shear, idata, chain=0, draw=10)  # one draw
    """
    return to_lenstronomy(lens_from_posterior(lens_model, posterior, chain=chain, draw=draw))


# --------------------------------------------------------------------------------------------
# deflector light
# --------------------------------------------------------------------------------------------


def to_lenstronomy_light(light) -> tuple[list[str], list[dict[str, float]]]:
    """lenstronomy's ``light_model_list`` and ``kwargs_light`` for blindlens deflector light.

    Parameters
    ----------
    light
        A :class:`~blindlens.light_profiles.SersicEllipse`, a
        :class:`~blindlens.light_profiles.LensLight` of them, or a lens carrying light
        (:class:`~blindlens.light_profiles.LensWithLight`, e.g. from :func:`lens_from_posterior`).

    Returns
    -------
    light_model_list : list of str
        ``"SERSIC_ELLIPSE"`` per component.
    kwargs_light : list of dict
        ``amp`` (surface brightness at ``R_sersic``, image units per arcsec^2), ``R_sersic``
        [arcsec], ``n_sersic``, ``e1``, ``e2``, ``center_x``, ``center_y`` [arcsec], as plain
        floats (lenstronomy ``SERSIC_ELLIPSE``; Birrer et al. 2021, JOSS 6, 3283).

    Raises
    ------
    ValueError
        For a lens without light, an unknown component type, or non-scalar parameters.
    """
    from ..physics.light_profiles import LensLight, SersicEllipse

    carried = getattr(light, "light", None)
    if isinstance(light, AbstractLens):
        if carried is None:
            raise ValueError(
                "This lens carries no deflector light; wrap it as LensWithLight(mass, light) or "
                "pass the light itself."
            )
        light = carried
    components = light.components if isinstance(light, LensLight) else (light,)
    names, kwargs = [], []
    for i, comp in enumerate(components):
        if not isinstance(comp, SersicEllipse):
            raise ValueError(
                f"Light component {i} is a {type(comp).__name__}; supported: SersicEllipse "
                "(lenstronomy SERSIC_ELLIPSE)."
            )
        names.append("SERSIC_ELLIPSE")
        kwargs.append({
            k: _plain_float(getattr(comp, k), f"SersicEllipse.{k} (component {i})")
            for k in _SERSIC_ELLIPSE_KEYS
        })
    return names, kwargs


def from_lenstronomy_light(light_model_list: Sequence[str], kwargs_light: Sequence[Mapping[str, float]]):
    """blindlens deflector light from lenstronomy's ``light_model_list`` and ``kwargs_light``.

    Parameters
    ----------
    light_model_list
        lenstronomy light-profile names: ``SERSIC_ELLIPSE`` or ``SERSIC`` (round, read as
        ``e1 = e2 = 0``).
    kwargs_light
        One dict per profile: ``amp``, ``R_sersic`` [arcsec], ``n_sersic``, (``e1``, ``e2``),
        and optionally ``center_x``, ``center_y`` [arcsec] (default 0, as in lenstronomy).
        lenstronomy's ``max_R_frac`` truncation is not modelled and is refused.

    Returns
    -------
    SersicEllipse or LensLight
        One :class:`~blindlens.light_profiles.SersicEllipse` for a one-element list, else a
        :class:`~blindlens.light_profiles.LensLight` of them in list order.  Combine with a
        mass as ``LensWithLight(mass, light)``.

    Raises
    ------
    ValueError
        For unsupported profiles (the message lists the supported ones), missing or unknown
        keys, or non-scalar values.
    """
    from ..physics.light_profiles import LensLight, SersicEllipse

    _check_lists(light_model_list, kwargs_light, "light", SUPPORTED_LIGHT_PROFILES)
    components = []
    for i, (name, kw) in enumerate(zip(light_model_list, kwargs_light)):
        required, optional = _LIGHT[name]
        values = {"e1": 0.0, "e2": 0.0}
        values.update(_read_keys(kw, name, f"kwargs_light[{i}]", required, optional))
        components.append(SersicEllipse(**values))
    return components[0] if len(components) == 1 else LensLight(components)
