"""``blindlens catalogue``: many lenses on Dask distributed (blindlens.catalogue), and the
single-lens pipeline options it shares with ``blindlens sample`` (blindlens.pipeline).

One real two-worker LocalCluster run (module fixture) on three tiny lenses and one corrupt file,
where one lens kills its worker process the first time it runs; the other tests read its outputs
or call the task function in this process.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest
from blindlens.testing.gold_problem import Problem

from blindlens import catalogue, cli
from blindlens.observation import save_observation
from blindlens.pipeline import DEFAULTS, SampleOptions, result_fingerprint

SIS_MODEL = (
    "import numpyro, numpyro.distributions as dist\n"
    "from blindlens.lens_models import SIS\n"
    "def lens():\n"
    "    return SIS(theta_E=numpyro.sample('theta_E', dist.Uniform(0.4, 0.9)))\n"
)
# the same model, but the first call (in whichever process) kills that process: a worker lost mid-lens
KILLER_MODEL = (
    "import os\n"
    "import numpyro, numpyro.distributions as dist\n"
    "from blindlens.lens_models import SIS\n"
    "MARKER = {marker!r}\n"
    "def lens():\n"
    "    if not os.path.exists(MARKER):\n"
    "        with open(MARKER, 'w') as f:\n"
    "            f.write(str(os.getpid()))\n"
    "        os._exit(17)\n"
    "    return SIS(theta_E=numpyro.sample('theta_E', dist.Uniform(0.4, 0.9)))\n"
)
NAMES = ("lens_a", "lens_b", "lens_c")


def _tiny_options(prior) -> SampleOptions:
    return SampleOptions(prior=prior, chains=1, warmup=0, draws=2, steps=2, warm_start_steps=2, warm_start_tries=1,
                         lens_prefit="none", supersampling=1, checkpoint_every=2)


@pytest.fixture(scope="module")
def problem():
    return Problem(source_shape=(8, 8), image_shape=(12, 12), pixel_scale=0.15, rank=30, length_scale=1.5,
                   theta_E=0.6)


@pytest.fixture(scope="module")
def inputs(problem, tmp_path_factory):
    """Three tiny observations, a corrupt FITS file and a CSV listing them (lens_b's model kills its worker once)."""
    folder = tmp_path_factory.mktemp("inputs")
    for k, name in enumerate(NAMES):
        lens = Problem(source_shape=(8, 8), image_shape=(12, 12), pixel_scale=0.15, rank=30, length_scale=1.5,
                       theta_E=0.55 + 0.05 * k, seed=k)
        save_observation(lens.observation, folder / f"{name}.npz")
    (folder / "bad.fits").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "sis.py").write_text(SIS_MODEL)
    (folder / "killer.py").write_text(KILLER_MODEL.format(marker=str(folder / "killed_once")))
    (folder / "lenses.csv").write_text(
        "observation,lens_model\n"
        "lens_a.npz,sis.py:lens\n"
        "lens_b.npz,killer.py:lens\n"
        "lens_c.npz,sis.py:lens\n"
        "bad.fits,sis.py:lens\n"
    )
    return folder


@pytest.fixture(scope="module")
def cluster_run(problem, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("catalogue")
    table = catalogue.run_catalogue(inputs / "lenses.csv", out, _tiny_options(problem.prior), workers=2,
                                    progress=False)
    return out, table


def test_a_two_worker_cluster_finishes_every_lens_and_reports_the_corrupt_one(cluster_run, inputs):
    out, table = cluster_run
    assert list(table["name"]) == [*NAMES, "bad"]
    rows = table.set_index("name")
    for name in NAMES:
        row = rows.loc[name]
        # 2 draws cannot pass the R-hat/ESS checks: a finished lens is "flagged" with the reasons
        assert row["status"] in ("ok", "flagged") and pd.isna(row["error"]), row
        assert (out / f"{name}.nc").exists() and (out / f"{name}_summary.txt").exists()
        assert not (out / f"{name}.nc.ckpt.npz").exists()
        assert row["num_chains"] == 1 and row["num_draws"] == 2 and row["wall_seconds"] > 0
        assert row["theta_E_q16"] <= row["theta_E_mean"] <= row["theta_E_q84"] and row["theta_E_sd"] >= 0
        assert np.isfinite(row["chi2_per_pixel"]) and not row["cached"]
        if row["status"] == "flagged":
            assert "R-hat" in row["flags"]
    bad = rows.loc["bad"]
    assert bad["status"] == "error" and "Error" in bad["error"] and pd.isna(bad["netcdf"])
    assert not (out / "bad.nc").exists() and not (out / "bad.json").exists()
    assert "Traceback" in (out / "logs" / "bad.log").read_text()
    # the summary table on disk, in both formats
    csv, parquet = pd.read_csv(out / "summary.csv"), pd.read_parquet(out / "summary.parquet")
    assert list(csv["name"]) == list(parquet["name"]) == list(table["name"])
    for column in ("status", "error", "max_rhat", "min_ess", "chi2_per_pixel", "flags", "wall_seconds",
                   "theta_E_mean", "theta_E_sd", "theta_E_q16", "theta_E_q84"):
        assert column in csv and column in parquet
    np.testing.assert_allclose(parquet["theta_E_mean"], table["theta_E_mean"])


def test_a_worker_killed_mid_lens_loses_nothing(cluster_run, inputs):
    out, table = cluster_run
    assert (inputs / "killed_once").exists()  # lens_b's first attempt killed its worker process ...
    log = (out / "logs" / "lens_b.log").read_text()
    assert log.count("=== lens_b") == 2  # ... and Dask ran it again
    assert table.set_index("name").loc["lens_b", "status"] in ("ok", "flagged")
    assert json.loads((out / "lens_b.json").read_text())["row"]["status"] in ("ok", "flagged")


def test_a_rerun_skips_finished_lenses_and_retries_failed_ones(cluster_run, inputs, problem, monkeypatch):
    out, first = cluster_run
    stamps = {name: (out / f"{name}.nc").stat().st_mtime_ns for name in NAMES}
    ran = []
    real = catalogue.process_lens
    monkeypatch.setattr(catalogue, "process_lens",
                        lambda entry, *a, **k: ran.append(entry.name) or real(entry, *a, **k))
    table = catalogue.run_catalogue(inputs / "lenses.csv", out, _tiny_options(problem.prior), workers=0,
                                    progress=False)
    assert ran == ["bad"]  # only the failed lens runs again (in this process: workers=0)
    rows = table.set_index("name")
    assert rows.loc[list(NAMES), "cached"].all() and not rows.loc["bad", "cached"]
    assert {name: (out / f"{name}.nc").stat().st_mtime_ns for name in NAMES} == stamps
    for column in ("status", "theta_E_mean", "wall_seconds", "max_rhat"):
        pd.testing.assert_series_equal(rows.loc[list(NAMES), column], first.set_index("name").loc[list(NAMES), column])
    # a changed setting or input is not the finished lens
    entry = catalogue.read_catalogue(inputs / "lenses.csv", _tiny_options(problem.prior))[0]
    same = result_fingerprint(entry.observation, entry.options, problem.prior)
    assert catalogue._finished_row(out, entry.name, same) is not None
    for changed in (entry.options.replace(seed=1), entry.options.replace(draws=4), entry.options.replace(steps=3)):
        assert catalogue._finished_row(out, entry.name, result_fingerprint(entry.observation, changed,
                                                                           problem.prior)) is None


def test_the_task_turns_any_failure_into_a_row(problem, inputs, tmp_path):
    entry = catalogue.LensEntry("bad", str(inputs / "bad.fits"), _tiny_options(problem.prior))
    row = catalogue.process_lens(entry, tmp_path, {"any": 1}, problem.prior)
    assert row["status"] == "error" and row["error"] and row["netcdf"] is None, row
    assert not (tmp_path / "bad.json").exists() and "Traceback" in (tmp_path / "logs" / "bad.log").read_text()
    missing = catalogue.LensEntry("gone", str(tmp_path / "gone.npz"), _tiny_options(problem.prior))
    assert catalogue.process_lens(missing, tmp_path, {}, problem.prior)["status"] == "error"


def test_batched_lenses_share_one_program_and_a_bad_file_is_still_one_error_row(problem, inputs, tmp_path):
    """--batch-size 2 on lens_a, lens_c and the corrupt file: one batch of the two good lenses (records
    marked with the batch engine), the corrupt one falls back to a lens of its own and is an error row;
    a rerun skips the finished lenses."""
    csv = tmp_path / "lenses.csv"
    csv.write_text("observation,lens_model\n"
                   + "".join(f"{inputs / f},{inputs / 'sis.py'}:lens\n" for f in ("lens_a.npz", "lens_c.npz", "bad.fits")))
    out = tmp_path / "out"
    table = catalogue.run_catalogue(csv, out, _tiny_options(problem.prior), workers=0, progress=False, batch_size=2)
    status = dict(zip(table["name"], table["status"]))
    assert status["bad"] == "error" and {status["lens_a"], status["lens_c"]} <= {"ok", "flagged"}, status
    for name in ("lens_a", "lens_c"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["fingerprint"]["engine"] == catalogue.BATCH_ENGINE
        assert "batch" in (out / "logs" / f"{name}.log").read_text()
    assert "fixed-length HMC" in az_attrs(out / "lens_c.nc")["lens_move"]
    assert (out / "logs" / "batch_lens_a.log").exists() and (out / "logs" / "batch_bad.log").exists()
    again = catalogue.run_catalogue(csv, out, _tiny_options(problem.prior), workers=0, progress=False, batch_size=2)
    cached = dict(zip(again["name"], again["cached"]))
    assert cached["lens_a"] and cached["lens_c"] and not cached["bad"]
    # the single-lens pipeline does not take the batch's records as its own
    entry = catalogue.read_catalogue(csv, _tiny_options(problem.prior))[0]
    plain = result_fingerprint(entry.observation, entry.options, problem.prior)
    assert catalogue._finished_row(out, "lens_a", plain) is None
    with pytest.raises(ValueError, match="--batch-size"):
        catalogue.run_catalogue(csv, out, _tiny_options(problem.prior), workers=0, progress=False, batch_size=0)


def az_attrs(path):
    import xarray as xr

    with xr.open_dataset(path, group="posterior") as ds:
        return dict(ds.attrs)


def test_catalogue_inputs(inputs, tmp_path):
    # a directory: observation files only (not truth files, CSVs or lens-model files), sorted
    (tmp_path / "x_truth.npz").write_bytes(b"")
    for name in ("b.npz", "a.fits", "c.fits.gz"):
        (tmp_path / name).write_bytes(b"")
    entries = catalogue.read_catalogue(tmp_path)
    assert [e.name for e in entries] == ["a", "b", "c"] and all(os.path.isabs(e.observation) for e in entries)
    assert [e.name for e in catalogue.read_catalogue(str(tmp_path / "*.npz"))] == ["b"]
    # a CSV: relative paths against the CSV's folder, per-lens option columns typed by the option
    (tmp_path / "l.csv").write_text("observation,name,seed,lens-model,source_center\n"
                                    "a.fits,first,3,m.py:lens,0.1 -0.2\nb.npz,,,,\n")
    first, second = catalogue.read_catalogue(tmp_path / "l.csv", DEFAULTS.replace(chains=1))
    assert first.name == "first" and first.options.seed == 3 and first.options.chains == 1
    assert first.options.lens_model == f"{tmp_path / 'm.py'}:lens" and first.options.source_center == (0.1, -0.2)
    assert second.name == "b" and second.options == DEFAULTS.replace(chains=1)
    (tmp_path / "u.csv").write_text("observation,colour\na.fits,red\n")
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['colour'\]"):
        catalogue.read_catalogue(tmp_path / "u.csv")
    (tmp_path / "d.csv").write_text("observation\na.fits\na.fits\n")
    with pytest.raises(ValueError, match="two lenses are named 'a'"):
        catalogue.read_catalogue(tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError, match="no observation files"):
        catalogue.read_catalogue(str(tmp_path / "nothing*.fits"))


def test_sample_options_are_the_parsers_defaults_and_fields():
    """One place per option: every SampleOptions field is a `sample` and `catalogue` option with its default."""
    parser = cli.build_parser()
    sample = parser.parse_args(["sample", "obs.fits", "--out", "post.nc"])
    cat = parser.parse_args(["catalogue", "lenses.csv", "--out", "dir"])
    for args in (sample, cat):
        assert SampleOptions.from_namespace(args) == DEFAULTS
        for name in SampleOptions.__dataclass_fields__:
            assert hasattr(args, name), name
    args = parser.parse_args(["catalogue", "x", "--out", "d", "--warmup", "3", "--source-center", "1", "2",
                              "--refresh-sigma", "none", "--workers", "4", "--scheduler", "tcp://h:8786"])
    options = SampleOptions.from_namespace(args)
    assert options.warmup == 3 and options.source_center == (1.0, 2.0) and options.refresh_sigma is None
    assert (args.workers, args.scheduler) == (4, "tcp://h:8786")
    with pytest.raises(ValueError, match="--chains must be >= 1"):
        DEFAULTS.replace(chains=0).validate()
    with pytest.raises(ValueError, match="--warm-start-pool must be full or adaptive"):
        DEFAULTS.replace(warm_start_pool="some").validate()
    from blindlens import gibbs_kernel, sample_options
    assert sample_options.WARM_START_POOLS == gibbs_kernel.WARM_START_POOLS  # the option's two copies agree


def test_worker_environment_shares_the_cores():
    env = catalogue.worker_environment(2, cores=2)
    assert env["OMP_NUM_THREADS"] == "1" and "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
    assert catalogue.worker_environment(2, cores=16)["OMP_NUM_THREADS"] == "8"


def test_a_network_prior_has_the_same_fingerprint_in_every_process():
    """Finished lenses are recognised (and checkpoints resumed) by another process: a network's digest
    must not depend on object addresses (it holds activation functions as leaves)."""
    import subprocess
    import sys

    code = ("import jax; from blindlens.score_network import ScoreNetworkConfig, ScoreUNet; "
            "from blindlens.run_checkpoint import tree_sha256; "
            "net = ScoreUNet(ScoreNetworkConfig(image_size=8, channels=(4, 4), embedding_dim=8), "
            "key=jax.random.key(0)); "
            "print(tree_sha256(net))")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
               for _ in range(2)}
    assert len(digests) == 1 and digests.pop().startswith("sha256:")
