"""Run checkpoints (data-only, fingerprinted, exact resume), output-path checks and bad input files."""

import os
import pickle
import types
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from blindlens.testing.gold_problem import LowRankExactGuidance, Problem
from numpyro.infer import MCMC, NUTS

from blindlens import chain_runner, cli, run_checkpoint
from blindlens.gibbs_kernel import BlindLensGibbs
from blindlens.observation import save_observation
from blindlens.run_checkpoint import (
    CheckpointError,
    check_fingerprint,
    check_output_paths,
    checkpoint_path,
    load_checkpoint,
    restore_state,
    save_checkpoint,
)
from blindlens.source_posterior import SourceSamplerConfig

LENS_FILE = (
    "import numpyro, numpyro.distributions as dist\n"
    "from blindlens.lens_models import SIS\n"
    "def lens():\n"
    "    return SIS(theta_E=numpyro.sample('theta_E', dist.Uniform(0.4, 0.9)))\n"
)


class _FakeState(NamedTuple):
    z: dict
    rng_key: jax.Array
    i: np.ndarray


def _fake_state():
    return _FakeState({"theta_E": np.float32(0.1), "source": np.zeros((8, 8), np.float32)}, jr.key(3), np.int32(4))


@pytest.fixture(scope="module")
def problem():
    return Problem(source_shape=(8, 8), image_shape=(12, 12), pixel_scale=0.15, rank=30, length_scale=1.5,
                   theta_E=0.6)


@pytest.fixture
def joint_cli(problem, tmp_path, monkeypatch):
    """argv of a tiny joint ``blindlens sample`` run (observation ``obs.npz``); sampling is forbidden."""
    save_observation(problem.observation, tmp_path / "obs.npz")
    (tmp_path / "my_lens.py").write_text(LENS_FILE)
    monkeypatch.setattr(cli, "_load_source_prior", lambda spec: problem.prior)

    def forbidden(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(MCMC, "warmup", forbidden)
    monkeypatch.setattr(MCMC, "run", forbidden)

    def argv(obs="obs.npz", out="post.nc", *extra):
        return ["sample", str(tmp_path / obs), "--out", str(tmp_path / out), "--lens-model",
                f"{tmp_path / 'my_lens.py'}:lens", "--chains", "1", "--warmup", "3", "--draws", "4",
                "--checkpoint-every", "2", "--steps", "30", "--warm-start-steps", "30", "--supersampling", "1",
                *extra]

    return argv


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------- exact kill and resume


def _nuts():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x, 0.5), obs=jnp.array([0.3, -0.1]))

    return NUTS(model)


def test_killed_run_resumes_exactly_from_the_data_only_checkpoint(tmp_path, monkeypatch):
    """A run killed after its first chunk and resumed in a fresh kernel gives the uninterrupted draws bit for bit."""
    kw = dict(num_chains=1, num_warmup=3, num_draws=4, thinning=1, chain_method="sequential", chunk=2,
              progress=False, fingerprint={"run": "a"})
    full, full_stats = chain_runner.run_chains(_nuts(), jr.key(3), checkpoint=None, resume=False, **kw)[:2]
    ckpt = tmp_path / "post.nc.ckpt.npz"
    save = run_checkpoint.save_checkpoint

    def killed_after_the_first_chunk(path, **k):
        save(path, **k)
        if k["done"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_checkpoint, "save_checkpoint", killed_after_the_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        chain_runner.run_chains(_nuts(), jr.key(3), checkpoint=ckpt, resume=True, **kw)
    monkeypatch.setattr(run_checkpoint, "save_checkpoint", save)
    assert load_checkpoint(ckpt).done == 2
    resumed, resumed_stats = chain_runner.run_chains(_nuts(), jr.key(3), checkpoint=ckpt, resume=True, **kw)[:2]
    assert resumed["x"].shape == (1, 4)
    np.testing.assert_array_equal(resumed["x"], full["x"])
    for name in full_stats:
        np.testing.assert_array_equal(resumed_stats[name], full_stats[name])
    # the same checkpoint in a run with another fingerprint is refused before any sampling
    with pytest.raises(CheckpointError, match=r"run \"a\" -> \"b\".*--no-resume"):
        chain_runner.run_chains(_nuts(), jr.key(3), checkpoint=ckpt, resume=True, **{**kw, "fingerprint": {"run": "b"}})


def test_blindlens_gibbs_state_round_trips_through_the_template(problem, tmp_path):
    """The real kernel state (2 chains, PRNG keys, nested NamedTuples) comes back with the same
    structure, values and key type; a checkpoint that does not fit the template is refused."""

    def kernel():
        guidance = LowRankExactGuidance(basis=problem.basis)
        return BlindLensGibbs(problem.lens_model, problem.observation, problem.prior, warm_start=None,
                              source_config=SourceSamplerConfig(guidance=guidance, num_steps=4),
                              source_grid=problem.source_grid)

    one = kernel().init(jr.key(0), 0, None, (), {})
    state = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, one)  # two chains
    draws = {"theta_E": np.zeros((2, 3), np.float32)}
    path = save_checkpoint(tmp_path / "c.ckpt.npz", fingerprint={"seed": 1}, state=jax.device_get(state), done=3,
                           samples=draws, stats={"diverging": np.zeros((2, 3), bool)})
    ck = load_checkpoint(path)
    assert ck.done == 3 and ck.fingerprint == {"seed": 1}
    np.testing.assert_array_equal(ck.samples["theta_E"], draws["theta_E"])
    back = chain_runner.resume_state(kernel(), ck, 2)
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
            assert a.dtype == b.dtype
            a, b = jr.key_data(a), jr.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(CheckpointError, match="does not fit.*expected.*--no-resume"):
        restore_state(ck, one, num_chains=3)
    with pytest.raises(CheckpointError, match=r"it holds \d+ arrays, the sampler has 3"):
        restore_state(ck, {"only": one.z}, num_chains=2)


# --------------------------------------------------------------------------- refusing checkpoints


def test_stale_checkpoint_from_another_observation_and_seed_is_refused(problem, tmp_path, joint_cli, capsys):
    args = cli.build_parser().parse_args(joint_cli())
    save_checkpoint(checkpoint_path(tmp_path / "post.nc"), fingerprint=cli._sample_fingerprint(args, problem.prior),
                    state=_fake_state(), done=2, samples={"theta_E": np.zeros((1, 2), np.float32)})
    other = Problem(source_shape=(8, 8), image_shape=(12, 12), pixel_scale=0.15, rank=30, length_scale=1.5,
                    theta_E=0.7, seed=5)
    save_observation(other.observation, tmp_path / "other.npz")
    assert cli.main(joint_cli("other.npz", "post.nc", "--seed", "1")) == 2
    _one_line_error(capsys, "post.nc.ckpt.npz", "different run", "observation (other content)", "seed 0 -> 1",
                    "--no-resume")
    # with --no-resume the same command starts afresh
    with pytest.raises(AssertionError, match="sampling started"):
        cli.main(joint_cli("other.npz", "post.nc", "--seed", "1", "--no-resume"))


def test_the_same_run_with_a_checkpoint_that_does_not_fit_its_sampler_is_refused(problem, tmp_path, joint_cli,
                                                                                  capsys):
    args = cli.build_parser().parse_args(joint_cli())
    save_checkpoint(checkpoint_path(tmp_path / "post.nc"), fingerprint=cli._sample_fingerprint(args, problem.prior),
                    state=_fake_state(), done=2)
    assert cli.main(joint_cli()) == 2
    _one_line_error(capsys, "post.nc.ckpt.npz", "does not fit", "--no-resume")


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "npy"])
def test_damaged_checkpoint_gives_a_clear_error(tmp_path, joint_cli, capsys, damage):
    path = checkpoint_path(tmp_path / "post.nc")
    save_checkpoint(path, fingerprint={"seed": 0}, state=_fake_state(), done=0)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    else:
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError, match="damaged or not a blindlens run checkpoint.*--no-resume"):
        load_checkpoint(path)
    assert cli.main(joint_cli()) == 2
    _one_line_error(capsys, "post.nc.ckpt.npz", "damaged", "--no-resume")


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_planted_pickle_is_never_unpickled(tmp_path, joint_cli, capsys):
    marker = tmp_path / "code_ran"
    payload = pickle.dumps({"state": _Planted(marker), "done": 0})
    checkpoint_path(tmp_path / "post.nc").write_bytes(payload)
    (tmp_path / "post.nc.ckpt.pkl").write_bytes(payload)  # the old checkpoint name: ignored
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(checkpoint_path(tmp_path / "post.nc"))
    assert cli.main(joint_cli()) == 2
    assert not marker.exists()
    captured = capsys.readouterr()
    assert "never loaded" in captured.out and "--no-resume" in captured.err
    # without the new checkpoint the legacy pickle is still not read (sampling starts instead)
    checkpoint_path(tmp_path / "post.nc").unlink()
    with pytest.raises(AssertionError, match="sampling started"):
        cli.main(joint_cli())
    assert not marker.exists()


def test_fingerprint_message_names_each_difference():
    saved = {"observation": "sha256:aa", "seed": 0, "chains": 2, "source_center": (0.0, 0.0)}
    check_fingerprint(saved, dict(saved, source_center=[0.0, 0.0]), "c.npz")  # tuples and lists compare equal
    with pytest.raises(CheckpointError) as info:
        check_fingerprint(saved, {"observation": "sha256:bb", "seed": 0, "chains": 4, "blindlens": "9"}, "c.npz")
    text = str(info.value)
    assert "observation (other content)" in text and "chains 2 -> 4" in text and 'blindlens "<absent>" -> "9"' in text
    assert "seed" not in text and "\n" not in text


def test_a_completed_run_removes_its_checkpoint_only_after_its_outputs_are_written(tmp_path, joint_cli,
                                                                                     monkeypatch):
    import blindlens.arviz_conversion as conversion

    def fake_inference(kernel, key, *, checkpoint, **kwargs):
        checkpoint.write_bytes(b"checkpoint")
        return chain_runner.ChainRun({}, {}, 4, None, "fixed length", ())

    written = []

    def fake_outputs(idata, out, *args, **kwargs):
        if not written:
            raise OSError("disk full")
        out.write_bytes(b"posterior")
        return tmp_path / "post_summary.txt"

    monkeypatch.setattr(chain_runner, "run_chains", fake_inference)
    monkeypatch.setattr(conversion, "to_inference_data",
                        lambda *a, **k: types.SimpleNamespace(posterior=types.SimpleNamespace(attrs={})))
    monkeypatch.setattr(cli, "_write_joint_outputs", fake_outputs)
    monkeypatch.setattr(cli, "_report_run", lambda *a, **k: 0)
    import blindlens.pipeline as pipeline

    monkeypatch.setattr(pipeline, "write_posterior_fits", lambda *a, **k: {})  # (the fake posterior has no draws)
    ckpt = checkpoint_path(tmp_path / "post.nc")
    with pytest.raises(OSError, match="disk full"):
        cli.main(joint_cli())
    assert ckpt.exists()  # the outputs failed: the checkpoint keeps the work
    written.append(True)
    assert cli.main(joint_cli()) == 0
    assert (tmp_path / "post.nc").exists() and not ckpt.exists()


# --------------------------------------------------------------------------- output paths


@pytest.mark.parametrize(
    "out, needle",
    [("post.png", "must end in .nc"), ("missing_dir/post.nc", "does not exist"), (".", "must end in .nc")],
)
def test_bad_sample_outputs_are_refused_before_sampling(tmp_path, joint_cli, capsys, out, needle):
    assert cli.main(joint_cli("obs.npz", out)) == 2
    _one_line_error(capsys, "--out", needle)
    assert not (tmp_path / "post.png").exists()


def test_fixed_lens_plot_must_not_be_the_posterior(tmp_path, joint_cli, capsys):
    from blindlens.simulation import example_lens_path

    argv = ["sample", str(tmp_path / "obs.npz"), "--fixed-lens", str(example_lens_path()), "--out",
            str(tmp_path / "a.nc")]
    assert cli.main([*argv, "--plot", str(tmp_path / "a.nc")]) == 2
    _one_line_error(capsys, "--plot", "must end in")
    assert cli.main([*argv, "--plot", str(tmp_path / "nowhere" / "a.png")]) == 2
    _one_line_error(capsys, "--plot", "does not exist")


def test_output_paths_never_collide_with_each_other_or_inputs(tmp_path):
    (tmp_path / "obs.npz").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="--out and --plot would both be written"):
        check_output_paths({"--out": tmp_path / "a.png", "--plot": tmp_path / "sub" / ".." / "a.png"})
    with pytest.raises(ValueError, match="would overwrite the input the observation"):
        check_output_paths({"--out": tmp_path / "obs.npz"}, inputs={"the observation": tmp_path / "obs.npz"})
    with pytest.raises(ValueError, match="is a directory"):
        check_output_paths({"--out": tmp_path})
    paths = check_output_paths({"--out": tmp_path / "a.NC"}, suffixes={"--out": (".nc",)}, inputs={"--truth": None})
    assert paths["--out"] == tmp_path / "a.NC"


def test_simulate_and_plot_outputs_are_checked_first(tmp_path, capsys):
    src = tmp_path / "src.npy"
    np.save(src, np.ones((8, 8)))
    assert cli.main(["simulate", "--source", str(src), "--source-pixel-scale", "0.1", "--out", str(src)]) == 2
    _one_line_error(capsys, "--out", ".fits or")
    assert cli.main(["simulate", "--out", str(tmp_path / "o.npz"), "--plot", str(tmp_path / "o.nc")]) == 2
    _one_line_error(capsys, "--plot", "must end in .png")
    assert cli.main(["simulate", "--out", str(tmp_path / "no" / "o.npz")]) == 2
    _one_line_error(capsys, "does not exist")
    assert not list(tmp_path.glob("o*"))
    assert cli.main(["plot-observation", str(tmp_path / "obs.npz"), "--out", str(tmp_path / "fig.nc")]) == 2
    _one_line_error(capsys, "--out", "must end in .png")
    assert cli.main(["train-prior", "--data", str(src), "--out", str(tmp_path / "prior.nc")]) == 2
    _one_line_error(capsys, "--out", ".eqx")
    (tmp_path / "file").write_text("")
    assert cli.main(["demo", "--out", str(tmp_path / "file")]) == 2
    _one_line_error(capsys, "not a directory")


# --------------------------------------------------------------------------- bad input files


def test_truncated_prior_file_is_a_one_line_error(problem, tmp_path, capsys):
    from blindlens.score_prior import ScorePrior
    from blindlens.simulation import example_lens_path

    data = (resources.files("blindlens") / "data" / "default_prior.eqx").read_bytes()
    (tmp_path / "cut.eqx").write_bytes(data[: len(data) // 2])
    (tmp_path / "header_only.eqx").write_bytes(data[: data.index(b"\n") + 1])
    for name in ("cut.eqx", "header_only.eqx"):
        with pytest.raises(ValueError, match="truncated or damaged"):
            ScorePrior.load(tmp_path / name)
    save_observation(problem.observation, tmp_path / "obs.npz")
    rc = cli.main(["sample", str(tmp_path / "obs.npz"), "--fixed-lens", str(example_lens_path()), "--prior",
                   str(tmp_path / "cut.eqx"), "--out", str(tmp_path / "x.nc")])
    assert rc == 2
    _one_line_error(capsys, "cut.eqx", "truncated or damaged")


def test_truncated_npy_and_npz_inputs_are_one_line_errors(tmp_path, capsys):
    np.save(tmp_path / "src.npy", np.ones((16, 16)))
    data = (tmp_path / "src.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    assert cli.main(["simulate", "--source", str(tmp_path / "cut.npy"), "--source-pixel-scale", "0.1", "--out",
                     str(tmp_path / "o.npz")]) == 2
    _one_line_error(capsys, "--source", "cut.npy")
    np.savez(tmp_path / "set.npz", images=np.ones((4, 16, 16)))
    data = (tmp_path / "set.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert cli.main(["train-prior", "--data", str(tmp_path / "cut.npz"), "--out", str(tmp_path / "p.eqx")]) == 2
    _one_line_error(capsys, "--data", "cut.npz")
