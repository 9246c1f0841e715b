"""Convergence-driven runs (blindlens.chain_runner): stop at the target, at a budget, and continue exactly."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import NUTS

from blindlens import cli
from blindlens.chain_runner import ConvergenceTarget, RunClock, convergence_check, run_chains


def _normal_model():
    numpyro.sample("x", dist.Normal(1.0, 2.0))
    numpyro.sample("y", dist.Normal(0.0, 1.0).expand([2]))


def _bimodal_model():
    mix = dist.MixtureSameFamily(dist.Categorical(jnp.array([0.5, 0.5])), dist.Normal(jnp.array([-8.0, 8.0]), 0.5))
    numpyro.sample("x", mix)


def test_a_run_stops_at_the_first_chunk_that_reaches_the_target():
    """NUTS on a Gaussian: the run ends converged, the returned draws meet the target, the check before did not."""
    target = ConvergenceTarget(target_ess=300.0, max_rhat=1.01, max_draws=2000)
    run = run_chains(NUTS(_normal_model), jr.key(0), num_chains=2, num_warmup=100, target=target, chunk=50,
                     progress=False)
    assert run.converged is True and run.stop_reason == "converged"
    assert run.draws % 50 == 0 and run.samples["x"].shape == (2, run.draws)
    final = convergence_check(run.samples, ["x", "y"], run.draws)
    assert final.reached(target)
    assert final.min_ess == pytest.approx(run.history[-1].min_ess)
    assert [c.draws for c in run.history] == list(range(50, run.draws + 1, 50))
    assert all(not c.reached(target) for c in run.history[:-1])
    assert {c.least for c in run.history} <= {"x", "y[0]", "y[1]"}  # vector sites are judged per component
    assert run.draws < 2000


def test_chains_stuck_in_separate_modes_never_count_as_converged():
    """The broken case: two chains started in two well-separated modes, which NUTS does not jump between.
    R-hat stays far above 1 (rank-normalised: about 1.8 for chains that never overlap) and the draw
    budget, not convergence, ends the run."""
    target = ConvergenceTarget(target_ess=50.0, max_draws=150)
    run = run_chains(NUTS(_bimodal_model), jr.key(1), num_chains=2, num_warmup=50, target=target, chunk=50,
                     init_params={"x": jnp.array([-8.0, 8.0])}, progress=False)
    x = run.samples["x"]
    assert np.all(x[0] < 0) and np.all(x[1] > 0)  # the premise: each chain stays in its mode
    assert run.converged is False and run.stop_reason == "draw budget" and run.draws == 150
    assert run.history[-1].max_rhat > 1.5 and not run.history[-1].reached(target)


def test_the_time_budget_stops_a_run_before_a_chunk_would_overrun_it():
    """A fake clock: each call advances 10 s. With a 2-minute budget the run stops early, never past it."""
    now = [0.0]

    def timer():
        now[0] += 10.0
        return now[0]

    clock = RunClock(enabled=False, timer=timer)
    target = ConvergenceTarget(target_ess=1e9, max_minutes=2.0, max_draws=10_000)
    run = run_chains(NUTS(_normal_model), jr.key(2), num_chains=1, num_warmup=10, target=target, chunk=10,
                     progress=False, clock=clock)
    assert run.converged is False and run.stop_reason == "time budget"
    assert 10 <= run.draws < 10_000
    assert run.history[-1].seconds <= 120.0


def test_a_budget_stopped_run_continues_from_its_checkpoint_exactly(tmp_path):
    """Stopped by the draw budget, then rerun with a larger one: the draws equal one uninterrupted run's."""
    kw = dict(num_chains=2, num_warmup=20, chunk=20, progress=False, fingerprint={"run": "a"})
    long = run_chains(NUTS(_normal_model), jr.key(4), target=ConvergenceTarget(target_ess=1e9, max_draws=60), **kw)
    ckpt = tmp_path / "post.nc.ckpt.npz"
    short = run_chains(NUTS(_normal_model), jr.key(4), target=ConvergenceTarget(target_ess=1e9, max_draws=20),
                       checkpoint=ckpt, **kw)
    assert short.draws == 20 and ckpt.exists()
    resumed = run_chains(NUTS(_normal_model), jr.key(4), target=ConvergenceTarget(target_ess=1e9, max_draws=60),
                         checkpoint=ckpt, **kw)
    assert resumed.draws == 60 and [c.draws for c in resumed.history] == [20, 40, 60]
    np.testing.assert_array_equal(resumed.samples["x"], long.samples["x"])
    np.testing.assert_array_equal(resumed.samples["y"], long.samples["y"])


def test_run_chains_rejects_both_or_neither_stopping_rule():
    with pytest.raises(ValueError, match="not both"):
        run_chains(NUTS(_normal_model), jr.key(0), num_draws=10, target=ConvergenceTarget(), progress=False)
    with pytest.raises(ValueError, match="not both"):
        run_chains(NUTS(_normal_model), jr.key(0), progress=False)
    with pytest.raises(ValueError, match="target_ess > 0"):
        run_chains(NUTS(_normal_model), jr.key(0), target=ConvergenceTarget(target_ess=0.0), progress=False)


@pytest.mark.parametrize("extra, needle", [
    (["--target-ess", "0"], "--target-ess must be > 0"),
    (["--target-ess", "400", "--max-rhat", "0.9"], "--max-rhat must be > 1"),
    (["--target-ess", "400", "--max-minutes", "-1"], "--max-minutes must be > 0"),
    (["--max-minutes", "5"], "--max-minutes needs --target-ess"),
    (["--target-ess", "400", "--draws", "2"], "--draws must be >= 4"),
    (["--max-extra-warmup", "-1"], "--max-extra-warmup must be >= 0"),
])
def test_cli_convergence_options_are_checked_in_one_line(tmp_path, capsys, extra, needle):
    np.savez(tmp_path / "obs.npz", image=np.zeros((8, 8)), noise_sigma=1.0, pixel_scale=0.1)
    code = cli.main(["sample", str(tmp_path / "obs.npz"), "--out", str(tmp_path / "post.nc"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_cli_refuses_convergence_options_with_a_fixed_lens(tmp_path, capsys):
    (tmp_path / "lens.toml").write_text("")
    code = cli.main(["sample", str(tmp_path / "obs.npz"), "--out", str(tmp_path / "post.nc"), "--fixed-lens",
                     str(tmp_path / "lens.toml"), "--target-ess", "400"])
    assert code == 2 and "--target-ess and --max-minutes are for joint runs" in capsys.readouterr().err


def test_sampling_in_chunks_compiles_once_and_keeps_quiet(capfd):
    """Without progress bars NumPyro's own silent loop would compile the whole sampling program
    again for every chain of every chunk (and keep each executable: a long --target-ess run ran out
    of code memory). Chunks after the first must compile nothing; nothing is drawn on stderr."""
    import jax
    from jax import monitoring

    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    class ChunkClock(RunClock):
        def say(self, message):
            marks.append((message, len(compiles)))

    marks = []
    monitoring.register_event_duration_secs_listener(count)
    try:
        target = ConvergenceTarget(target_ess=1e9, max_rhat=1.01, max_draws=120)
        run = run_chains(NUTS(_normal_model), jr.key(3), num_chains=2, num_warmup=30, target=target, chunk=30,
                         progress=False, clock=ChunkClock(False))
    finally:
        monitoring.unregister_event_duration_listener(count)
    assert run.draws == 120 and run.samples["x"].shape == (2, 120)
    after_chunk = [n for message, n in marks if "draws per chain: max R-hat" in message]
    assert len(after_chunk) == 4
    assert after_chunk[0] > 0  # the listener sees compilations at all (JAX's event name is unchanged)
    assert after_chunk[-1] == after_chunk[0], f"chunks 2-4 compiled {after_chunk[-1] - after_chunk[0]} programs"
    assert "\r" not in capfd.readouterr().err
    jax.clear_caches()


def test_hidden_progress_bars_drop_only_the_bars():
    """What a run without progress writes to stderr: bar redraws and the newlines ending them go,
    printed and warned lines stay whole."""
    import io

    from blindlens.inference.chain_runner import _WithoutProgressBars

    out = io.StringIO()
    stream = _WithoutProgressBars(out)
    for text in ["\r  0%|   | 0/5", "\r100%|###| 5/5", "\n", "printed", "\n", "UserWarning: kept\n", "\n", "\rbar"]:
        assert stream.write(text) == len(text)
    assert out.getvalue() == "printed\nUserWarning: kept\n"
    stream.flush()
    assert not stream.isatty() and stream.getvalue() == out.getvalue()  # the rest is the real stream's
