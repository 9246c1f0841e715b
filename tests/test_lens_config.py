"""Lens TOML configurations <-> lens Modules."""

from importlib import resources

import jax.numpy as jnp
import numpy as np
import pytest

from blindlens.lens_config import (
    dumps_lens_config,
    lens_from_config,
    lens_to_config,
    load_lens_config,
    save_lens_config,
)
from blindlens.lens_models import EPL, SIE, SIS, CompositeLens, ExternalShear, Multipole


def test_example_lens_loads():
    path = resources.files("blindlens") / "data" / "example_lens.toml"
    lens = load_lens_config(path)
    assert isinstance(lens, CompositeLens)
    sie, shear = lens.components
    assert isinstance(sie, SIE) and isinstance(shear, ExternalShear)
    assert float(sie.theta_E) == pytest.approx(1.2)
    assert float(shear.gamma2) == pytest.approx(-0.02)


def test_round_trip_all_types(tmp_path):
    lens = (
        SIE(theta_E=1.1, e1=0.1, e2=-0.05, center_x=0.01, center_y=0.02)
        + EPL(theta_E=0.9, gamma=2.1, e1=0.0, e2=0.1, center_x=0.0, center_y=0.0)
        + SIS(theta_E=0.1, center_x=0.5, center_y=0.5)
        + ExternalShear(gamma1=0.03, gamma2=-0.02)
        + Multipole(m=4, a_m=0.01, phi_m=0.3, center_x=0.0, center_y=0.0)
    )
    path = save_lens_config(lens, tmp_path / "lens.toml")
    back = load_lens_config(path)
    assert lens_to_config(back) == lens_to_config(lens)
    assert [type(c) for c in back.components] == [type(c) for c in lens.components]
    x = jnp.linspace(-2, 2, 7)
    for a, b in zip(lens.deflection(x, x[::-1]), back.deflection(x, x[::-1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "type = \"MULTIPOLE\"" in dumps_lens_config(lens)


def test_single_profile_is_not_composite():
    lens = lens_from_config({"profile": [{"type": "sis", "theta_E": 1.0, "center_x": 0.0, "center_y": 0.0}]})
    assert isinstance(lens, SIS)


@pytest.mark.parametrize(
    "config, match",
    [
        ({}, "at least one"),
        ({"profile": []}, "at least one"),
        ({"profile": [{"theta_E": 1.0}]}, "no 'type'"),
        ({"profile": [{"type": "NFW", "Rs": 1.0}]}, "unknown type"),
        ({"profile": [{"type": "SIE", "theta_E": 1.0, "e1": 0.0, "e2": 0.0, "center_x": 0.0}]}, "missing parameter"),
        ({"profile": [{"type": "SHEAR", "gamma1": 0.0, "gamma2": 0.0, "psi_ext": 0.1}]}, "unknown parameter"),
        ({"profile": [{"type": "SHEAR", "gamma1": "big", "gamma2": 0.0}]}, "must be a number"),
        ({"profile": [{"type": "SHEAR", "gamma1": float("nan"), "gamma2": 0.0}]}, "finite"),
        ({"profile": [{"type": "MULTIPOLE", "m": 4.5, "a_m": 0.0, "phi_m": 0.0, "center_x": 0.0, "center_y": 0.0}]}, "integer"),
        ({"lens": []}, "unknown top-level"),
    ],
)
def test_config_errors(config, match):
    with pytest.raises(ValueError, match=match):
        lens_from_config(config)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_lens_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[profile]\ntype = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_lens_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[profile]]\ntype = "SIE"\ntheta_E = 1.0\n')
    with pytest.raises(ValueError, match="wrong.toml.*missing parameter"):
        load_lens_config(wrong)


def test_light_tables_round_trip_and_bad_light_is_refused():
    import tomllib

    from blindlens.light_profiles import LensWithLight

    text = (
        '[[profile]]\ntype = "SIE"\ntheta_E = 1.1\ne1 = 0.1\ne2 = -0.05\ncenter_x = 0.02\ncenter_y = 0.0\n\n'
        '[[light]]\ntype = "SERSIC_ELLIPSE"\namp = 20.0\nR_sersic = 0.8\nn_sersic = 4.0\ne1 = 0.05\ne2 = 0.0\n'
        'center_x = 0.02\ncenter_y = 0.0\n'
    )
    lens = lens_from_config(tomllib.loads(text))
    assert isinstance(lens, LensWithLight) and float(lens.light.components[0].R_sersic) == pytest.approx(0.8)
    again = lens_from_config(tomllib.loads(dumps_lens_config(lens)))
    assert float(again.light.components[0].amp) == 20.0 and float(again.mass.theta_E) == pytest.approx(1.1)
    with pytest.raises(ValueError, match=r"\[\[light\]\] #1: unknown type 'SERSIC'"):
        lens_from_config(tomllib.loads(text.replace('"SERSIC_ELLIPSE"', '"SERSIC"')))
    with pytest.raises(ValueError, match="missing parameter"):
        lens_from_config(tomllib.loads(text.replace("n_sersic = 4.0\n", "")))
