"""Tests for blindlens.lenstronomy_bridge: round trips, deflection and light agreement with
lenstronomy (imported inside the tests, as an oracle only), negative controls, errors, and
posterior draws/means from an ArviZ container."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from blindlens.lens_models import EPL, SIE, SIS, CompositeLens, ExternalShear, Multipole, Shift
from blindlens.lenstronomy_bridge import (
    SUPPORTED_LENS_PROFILES,
    from_lenstronomy,
    from_lenstronomy_light,
    lens_from_posterior,
    to_lenstronomy,
    to_lenstronomy_kwargs,
    to_lenstronomy_light,
)

# every supported profile alone, and the composites of the issue
LENSES = {
    "SIS": lambda: SIS(1.05, 0.04, -0.07),
    "SIE": lambda: SIE(1.2, 0.13, -0.07, 0.05, -0.03),
    "EPL": lambda: EPL(1.1, 2.17, -0.09, 0.16, -0.06, 0.08),
    "SHEAR": lambda: ExternalShear(0.031, -0.022, 0.1, -0.2),
    "MULTIPOLE": lambda: Multipole(4, 0.021, 0.37, 0.05, -0.03),
    "SHIFT": lambda: Shift(0.013, -0.021),
    "SIE+SHEAR": lambda: SIE(1.2, 0.13, -0.07, 0.05, -0.03) + ExternalShear(0.031, -0.022),
    "EPL+SHEAR+MULTIPOLE": lambda: (
        EPL(1.1, 2.17, -0.09, 0.16, -0.06, 0.08)
        + ExternalShear(0.031, -0.022)
        + Multipole(3, 0.013, -0.8, -0.06, 0.08)
        + Multipole(4, 0.021, 0.37, -0.06, 0.08)
    ),
}
NAMES = {
    "SIS": ["SIS"], "SIE": ["SIE"], "EPL": ["EPL"], "SHEAR": ["SHEAR"], "MULTIPOLE": ["MULTIPOLE"], "SHIFT": ["SHIFT"],
    "SIE+SHEAR": ["SIE", "SHEAR"], "EPL+SHEAR+MULTIPOLE": ["EPL", "SHEAR", "MULTIPOLE", "MULTIPOLE"],
}


def _points(dtype):
    """A grid of positions away from the profile centres, exactly representable in ``dtype``."""
    g = np.linspace(-2.4, 2.4, 13)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    keep = np.hypot(x, y) > 0.4
    return x[keep].astype(dtype).astype(float), y[keep].astype(dtype).astype(float)


def _identical(a, b):
    """Same tree structure (classes, static fields such as ``m``), dtypes and exact values."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    return tree_a == tree_b and all(
        u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v)
        for u, v in zip(leaves_a, leaves_b)
    )


def _max_alpha_difference(names, kwargs, lens, dtype):
    from lenstronomy.LensModel.lens_model import LensModel

    x, y = _points(dtype)
    ax, ay = LensModel(names).alpha(x, y, kwargs)
    bx, by = lens.deflection(jnp.asarray(x, dtype), jnp.asarray(y, dtype))
    assert bx.dtype == dtype
    return max(np.max(np.abs(ax - np.asarray(bx, float))), np.max(np.abs(ay - np.asarray(by, float))))


# ---------------------------------------------------------------------------------------------
# (a) round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(LENSES))
def test_round_trip_blindlens_lenstronomy_blindlens(key):
    lens = LENSES[key]()
    names, kwargs = to_lenstronomy(lens)
    assert names == NAMES[key]
    for kw in kwargs:
        for k, v in kw.items():
            assert type(v) is (int if k == "m" else float), (k, v)
    back = from_lenstronomy(names, kwargs)
    assert type(back) is type(lens)
    assert _identical(back, lens)


def test_round_trip_lenstronomy_blindlens_lenstronomy(x64):
    names = ["EPL", "SHEAR", "MULTIPOLE", "SIS", "SIE"]
    kwargs = [
        {"theta_E": 1.1, "gamma": 2.17, "e1": -0.09, "e2": 0.16, "center_x": -0.06, "center_y": 0.08},
        {"gamma1": 0.031, "gamma2": -0.022, "ra_0": 0.1, "dec_0": -0.2},
        {"m": 4, "a_m": 0.021, "phi_m": 0.37, "center_x": 0.05, "center_y": -0.03},
        {"theta_E": 0.3, "center_x": 1.0, "center_y": 0.5},
        {"theta_E": 1.2, "e1": 0.13, "e2": -0.07, "center_x": 0.05, "center_y": -0.03},
    ]
    assert to_lenstronomy(from_lenstronomy(names, kwargs)) == (names, kwargs)


def test_lenstronomy_defaults_and_extra_multipole_key():
    """Keys lenstronomy defaults may be omitted (0, as there); MULTIPOLE's r_E is accepted."""
    lens = from_lenstronomy(
        ["SHEAR", "SIE", "MULTIPOLE"],
        [{"gamma1": 0.02, "gamma2": 0.01}, {"theta_E": 1.0, "e1": 0.1, "e2": 0.0},
         {"m": 3.0, "a_m": 0.01, "phi_m": 0.2, "r_E": 1.3}],
    )
    shear, sie, multipole = lens.components
    assert float(shear.ra_0) == float(shear.dec_0) == 0.0
    assert float(sie.center_x) == float(sie.center_y) == 0.0
    assert multipole.m == 3 and isinstance(multipole.m, int)


# ---------------------------------------------------------------------------------------------
# (b) deflections agree with lenstronomy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(LENSES))
def test_deflections_agree_with_lenstronomy_float32(key):
    lens = LENSES[key]()
    names, kwargs = to_lenstronomy(lens)
    assert _max_alpha_difference(names, kwargs, lens, np.float32) < 1e-6  # measured <= 2.4e-7


@pytest.mark.parametrize("key", ["SIE+SHEAR", "EPL+SHEAR+MULTIPOLE"])
def test_deflections_agree_with_lenstronomy_float64(key, x64):
    lens = LENSES[key]()
    names, kwargs = to_lenstronomy(lens)
    assert _max_alpha_difference(names, kwargs, lens, np.float64) < 1e-8  # SIE: 1e-10 core


def test_shear_gamma_psi_is_read_as_cartesian_shear(x64):
    kw = {"gamma_ext": 0.04, "psi_ext": 0.6, "ra_0": 0.1, "dec_0": 0.0}
    lens = from_lenstronomy(["SHEAR_GAMMA_PSI"], [kw])
    assert isinstance(lens, ExternalShear)
    assert _max_alpha_difference(["SHEAR_GAMMA_PSI"], [kw], lens, np.float64) < 1e-12
    assert to_lenstronomy(lens)[0] == ["SHEAR"]


# ---------------------------------------------------------------------------------------------
# (c) a wrong mapping is detected
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, index, swap",
    [("SIE+SHEAR", 0, ("e1", "e2")), ("EPL+SHEAR+MULTIPOLE", 0, ("e1", "e2")),
     ("SIE+SHEAR", 1, ("gamma1", "gamma2")), ("EPL+SHEAR+MULTIPOLE", 0, ("center_x", "center_y"))],
)
def test_swapped_keys_disagree_beyond_tolerance(key, index, swap):
    lens = LENSES[key]()
    names, kwargs = to_lenstronomy(lens)
    a, b = swap
    kwargs[index][a], kwargs[index][b] = kwargs[index][b], kwargs[index][a]
    assert _max_alpha_difference(names, kwargs, lens, np.float32) > 1e-3


def test_wrong_multipole_angle_sign_disagrees():
    lens = LENSES["MULTIPOLE"]()
    names, kwargs = to_lenstronomy(lens)
    kwargs[0]["phi_m"] = -kwargs[0]["phi_m"]
    assert _max_alpha_difference(names, kwargs, lens, np.float32) > 1e-3


# ---------------------------------------------------------------------------------------------
# (d) errors
# ---------------------------------------------------------------------------------------------


def test_unsupported_profile_is_named():
    with pytest.raises(ValueError, match="NFW") as info:
        from_lenstronomy(["SIE", "NFW"], [{"theta_E": 1.0, "e1": 0, "e2": 0},
                                          {"Rs": 1.0, "alpha_Rs": 0.5}])
    message = str(info.value)
    assert "\n" not in message
    assert "lens_model_list[1]" in message
    for name in SUPPORTED_LENS_PROFILES:
        assert name in message


@pytest.mark.parametrize(
    "names, kwargs, match",
    [
        (["SIE"], [{"theta_E": 1.0, "e1": 0.1}], r"missing key\(s\) \['e2'\]"),
        (["SIE"], [{"theta_E": 1.0, "e1": 0.1, "e2": 0.0, "gamma": 2.0}], r"unknown key\(s\) \['gamma'\]"),
        (["SIE", "SHEAR"], [{"theta_E": 1.0, "e1": 0.1, "e2": 0.0}], "must match one to one"),
        ("SIE", [{"theta_E": 1.0, "e1": 0.1, "e2": 0.0}], "list of lenstronomy profile names"),
        (["SIE"], {"theta_E": 1.0, "e1": 0.1, "e2": 0.0}, "one dict of keyword arguments"),
        ([], [], "empty"),
        (["SIE"], [{"theta_E": 1.0, "e1": 0.9, "e2": 0.5}], r"kwargs_lens\[0\] \(SIE\).*ellipticity"),
        (["MULTIPOLE"], [{"m": 1, "a_m": 0.01, "phi_m": 0.0}], "m >= 2|>= 2"),
        (["MULTIPOLE"], [{"m": 3.5, "a_m": 0.01, "phi_m": 0.0}], "integer"),
        (["SIE"], [{"theta_E": [1.0, 1.1], "e1": 0.1, "e2": 0.0}], "shape"),
    ],
)
def test_bad_lenstronomy_input_gives_clear_errors(names, kwargs, match):
    with pytest.raises(ValueError, match=match):
        from_lenstronomy(names, kwargs)


def test_to_lenstronomy_refuses_batched_parameters():
    with pytest.raises(ValueError, match="shape"):
        to_lenstronomy(SIE(jnp.array([1.0, 1.2]), 0.1, 0.0))


# ---------------------------------------------------------------------------------------------
# (e) posterior draws and means
# ---------------------------------------------------------------------------------------------


def _fake_posterior():
    """An ArviZ container shaped like blindlens's: (chain, draw) per lens site, plus a source."""
    import xarray as xr
    from blindlens.numpyro_model import SIE_SHEAR_SITES
    from blindlens.results.arviz_conversion import make_inference_data

    rng = np.random.default_rng(3)
    centre = dict(theta_E=1.2, e1=0.1, e2=-0.05, center_x=0.02, center_y=-0.01, gamma1=0.03, gamma2=0.0)
    posterior = {name: centre[name] + 0.01 * rng.standard_normal((2, 5)) for name in SIE_SHEAR_SITES}
    posterior["source"] = rng.standard_normal((2, 5, 4, 4))
    dims = {name: ("chain", "draw") for name in SIE_SHEAR_SITES}
    dims["source"] = ("chain", "draw", "source_y", "source_x")
    dataset = xr.Dataset({name: (dims[name], value) for name, value in posterior.items()})
    # ArviZ's own container for the installed version (from_dict's signature differs across 0.x / 1.x)
    return make_inference_data({"posterior": dataset}), posterior


def test_to_lenstronomy_kwargs_uses_posterior_means_by_default():
    from blindlens.numpyro_model import sie_shear

    idata, draws = _fake_posterior()
    names, kwargs = to_lenstronomy_kwargs(sie_shear, idata)
    assert names == ["SIE", "SHEAR"]
    sie, shear = kwargs
    for kw in kwargs:
        for k, v in kw.items():
            assert type(v) is float
            if k in draws and k not in ("ra_0", "dec_0"):
                np.testing.assert_allclose(v, draws[k].mean(), rtol=1e-6, atol=1e-7)
    assert sie.keys() == {"theta_E", "e1", "e2", "center_x", "center_y"}
    assert shear["ra_0"] == shear["dec_0"] == 0.0
    # the posterior group itself works too, and the mean of one chain
    assert to_lenstronomy_kwargs(sie_shear, idata.posterior) == (names, kwargs)
    _, by_chain = to_lenstronomy_kwargs(sie_shear, idata, chain=1)
    np.testing.assert_allclose(by_chain[0]["theta_E"], draws["theta_E"][1].mean(), rtol=1e-6)


def test_to_lenstronomy_kwargs_single_draw_and_dict():
    from blindlens.numpyro_model import sie_shear

    idata, draws = _fake_posterior()
    _, kwargs = to_lenstronomy_kwargs(sie_shear, idata, chain=1, draw=3)
    np.testing.assert_allclose(kwargs[0]["e2"], draws["e2"][1, 3], rtol=1e-6)
    one_draw = {name: value[1, 3] for name, value in draws.items()}  # extra "source" is ignored
    assert to_lenstronomy_kwargs(sie_shear, one_draw) == (["SIE", "SHEAR"], kwargs)
    with pytest.raises(ValueError, match="chain="):
        to_lenstronomy_kwargs(sie_shear, idata, draw=3)  # two chains: ambiguous
    with pytest.raises(ValueError, match="theta_E"):
        lens_from_posterior(sie_shear, {k: v for k, v in one_draw.items() if k != "theta_E"})


# ---------------------------------------------------------------------------------------------
# deflector light
# ---------------------------------------------------------------------------------------------

try:
    from blindlens import light_profiles
except ImportError:  # pragma: no cover - the light module is optional for these tests
    light_profiles = None
needs_light = pytest.mark.skipif(light_profiles is None, reason="blindlens.light_profiles is absent")


@needs_light
def test_light_round_trip_and_lenstronomy_agreement(x64):
    from lenstronomy.LightModel.light_model import LightModel

    sersic = light_profiles.SersicEllipse
    light = sersic(3.0, 0.8, 3.2, 0.12, -0.08, 0.03, -0.02) + sersic(1.5, 1.6, 1.0, -0.05, 0.1, 0.03, -0.02)
    names, kwargs = to_lenstronomy_light(light)
    assert names == ["SERSIC_ELLIPSE", "SERSIC_ELLIPSE"]
    assert _identical(from_lenstronomy_light(names, kwargs), light)
    x, y = _points(np.float64)
    ref = LightModel(names).surface_brightness(x, y, kwargs)
    ours = np.asarray(light.surface_brightness(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    swapped = [dict(kwargs[0], e1=kwargs[0]["e2"], e2=kwargs[0]["e1"]), kwargs[1]]
    assert np.max(np.abs(LightModel(names).surface_brightness(x, y, swapped) - ours) / ref) > 1e-2
    # a lens carrying light: its mass goes to to_lenstronomy, its light to to_lenstronomy_light
    lens = light_profiles.LensWithLight(SIE(1.0, 0.1, 0.0) + ExternalShear(0.01, 0.0), light)
    assert to_lenstronomy(lens)[0] == ["SIE", "SHEAR"]
    assert to_lenstronomy_light(lens) == (names, kwargs)


@needs_light
def test_round_sersic_and_light_errors(x64):
    from lenstronomy.LightModel.light_model import LightModel

    kw = {"amp": 2.0, "R_sersic": 0.7, "n_sersic": 4.0, "center_x": 0.1}
    light = from_lenstronomy_light(["SERSIC"], [kw])
    assert float(light.e1) == float(light.e2) == 0.0
    x, y = _points(np.float64)
    np.testing.assert_allclose(
        np.asarray(light.surface_brightness(jnp.asarray(x), jnp.asarray(y))),
        LightModel(["SERSIC"]).surface_brightness(x, y, [kw]), rtol=1e-10,
    )
    with pytest.raises(ValueError, match="HERNQUIST.*SERSIC_ELLIPSE"):
        from_lenstronomy_light(["HERNQUIST"], [{"amp": 1.0, "Rs": 1.0}])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_R_frac'\]"):
        from_lenstronomy_light(["SERSIC"], [dict(kw, max_R_frac=100.0)])
    with pytest.raises(ValueError, match="no deflector light"):
        to_lenstronomy_light(SIE(1.0, 0.1, 0.0))


def test_composite_lens_is_flat_after_from_lenstronomy():
    lens = from_lenstronomy(["SIE", "SHEAR", "SHEAR"], [
        {"theta_E": 1.0, "e1": 0.0, "e2": 0.0}, {"gamma1": 0.01, "gamma2": 0.0},
        {"gamma1": 0.0, "gamma2": 0.01}])
    assert isinstance(lens, CompositeLens) and len(lens.components) == 3


def test_epl_shear_multipole_model_draw_converts_and_agrees():
    """The built-in multipole model: a draw gives EPL + SHEAR + two MULTIPOLEs lenstronomy agrees with."""
    from blindlens.numpyro_model import epl_shear_multipole

    draw = dict(theta_E=1.1, gamma=2.1, e1=0.08, e2=-0.05, center_x=0.03, center_y=-0.02,
                gamma1=0.02, gamma2=0.01, a3_1=0.004, a3_2=-0.006, a4_1=0.01, a4_2=0.003)
    lens = lens_from_posterior(epl_shear_multipole, draw)
    names, kwargs = to_lenstronomy_kwargs(epl_shear_multipole, draw)
    assert names == ["EPL", "SHEAR", "MULTIPOLE", "MULTIPOLE"]
    assert [kw["m"] for kw in kwargs[2:]] == [3, 4]
    np.testing.assert_allclose(kwargs[3]["a_m"], np.hypot(0.01, 0.003) * 1.1, rtol=1e-6)
    assert _max_alpha_difference(names, kwargs, lens, np.float32) < 1e-6
