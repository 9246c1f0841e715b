"""The bundled HST-like example (``blindlens example``): what it holds, and that blindlens simulate makes it."""

import shlex

import numpy as np
import pytest
from astropy.io import fits

from blindlens import cli
from blindlens.observation import load_observation
from blindlens.simulation import EXAMPLE_SURVEY_COMMAND, example_survey_paths, load_truth, survey_pix2angle


def test_the_example_is_a_rotated_east_left_survey_exposure_with_flagged_cosmic_rays():
    paths = example_survey_paths()
    obs = load_observation(paths["observation"], psf=paths["psf"])
    assert obs.shape == (64, 64) and obs.pixel_scale == pytest.approx(0.05, rel=1e-6)
    # x = RA offset (east), y = Dec: east left (RA flipped) and the pixel axes rotated by 25 degrees
    np.testing.assert_allclose(np.asarray(obs.pix2angle), survey_pix2angle(25.0, 0.05), atol=1e-9)
    assert np.linalg.det(np.asarray(obs.pix2angle)) < 0
    with fits.open(paths["observation"]) as hdul:
        assert [h.name for h in hdul][1:] == ["SCI", "ERR", "DQ"]
        dq = np.asarray(hdul["DQ"].data)
    flagged = int(np.count_nonzero(dq))  # 5 cosmic-ray streaks, HST's cosmic-ray bit
    assert flagged >= 5 and np.all((dq[dq != 0] & 8192) != 0)
    assert int(np.sum(np.asarray(obs.mask) == 0)) == flagged and obs.noise_source == "ERR extension"
    truth = load_truth(paths["truth"])
    assert truth["lens"].light is not None and float(truth["lens"].mass.components[0].theta_E) == pytest.approx(1.1)


def test_the_example_is_what_its_documented_command_makes(tmp_path, monkeypatch):
    """Re-running EXAMPLE_SURVEY_COMMAND with the bundled lens file reproduces the bundled files."""
    paths = example_survey_paths()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lens.toml").write_bytes(paths["lens"].read_bytes())
    argv = shlex.split(EXAMPLE_SURVEY_COMMAND)
    assert argv[0] == "blindlens" and cli.main(argv[1:]) == 0
    with fits.open(tmp_path / "hst.fits") as new, fits.open(paths["observation"]) as shipped:
        peak = float(np.max(shipped["SCI"].data))
        np.testing.assert_allclose(new["SCI"].data, shipped["SCI"].data, atol=1e-5 * peak)
        np.testing.assert_allclose(new["ERR"].data, shipped["ERR"].data, rtol=1e-6)
        np.testing.assert_array_equal(new["DQ"].data, shipped["DQ"].data)
        assert new["SCI"].header["CD1_1"] == pytest.approx(shipped["SCI"].header["CD1_1"], rel=1e-12)
    np.testing.assert_allclose(fits.getdata(tmp_path / "psf.fits"), fits.getdata(paths["psf"]), rtol=1e-6, atol=1e-9)


def test_blindlens_example_writes_the_files_and_never_replaces_one(tmp_path, capsys):
    out = tmp_path / "example"
    assert cli.main(["example", "--out", str(out)]) == 0
    shipped = example_survey_paths()
    for role, name in (("observation", "hst.fits"), ("psf", "psf.fits"), ("truth", "hst_truth.npz"),
                       ("lens", "lens.toml")):
        assert (out / name).read_bytes() == shipped[role].read_bytes(), name
    text = capsys.readouterr().out
    assert f"blindlens sample {out / 'hst.fits'} --psf {out / 'psf.fits'}" in text
    assert cli.main(["example", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "hst.fits exists" in err and "\n" not in err
    (tmp_path / "afile").write_text("x")
    assert cli.main(["example", "--out", str(tmp_path / "afile")]) == 2
