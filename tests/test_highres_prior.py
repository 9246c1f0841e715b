"""The sub-pixel stem, lifting a coarse prior to a finer grid, and the broad galaxy population."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from blindlens.diffusion_sde import VESDE
from blindlens.score_network import (
    ScoreNetworkConfig,
    ScoreUNet,
    depth_to_space,
    lift_to_subpixel,
    space_to_depth,
)
from blindlens.score_prior import ScorePrior
from blindlens.training import TrainingConfig, train_score_prior

TINY = ScoreNetworkConfig(image_size=16, channels=(8, 16), num_res_blocks=1, embedding_dim=16, sigma_data=0.5)


def _randomised(net, key):
    """Give every layer (zero-initialised ones too) random weights, so outputs depend on all of them."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, treedef = jax.tree_util.tree_flatten(params)
    flat = [0.1 * jr.normal(k, x.shape, x.dtype) for k, x in zip(jr.split(key, len(flat)), flat)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, flat), static)


def _block_mean(x, r):
    h, w = x.shape
    return x.reshape(h // r, r, w // r, r).mean(axis=(1, 3))


def test_space_to_depth_layout_and_inverse():
    x = jnp.arange(64.0).reshape(8, 8)
    d = space_to_depth(x, 2)
    assert d.shape == (4, 4, 4)
    for i in range(2):
        for j in range(2):
            assert np.array_equal(d[2 * i + j], x[i::2, j::2])
    assert np.array_equal(depth_to_space(d, 2), x)
    assert np.array_equal(depth_to_space(space_to_depth(x, 4), 4), x)


def test_stem_network_runs_at_the_coarse_size_and_round_trips(tmp_path, getkey):
    config = ScoreNetworkConfig(image_size=32, channels=(8, 16), embedding_dim=16, sigma_data=0.5, pixel_unshuffle=2)
    net = _randomised(ScoreUNet(config, key=getkey()), getkey())
    assert net.conv_in.weight.shape[1] == 4 and net.conv_out.weight.shape[0] == 4
    x = jr.normal(getkey(), (32, 32))
    out = net.score(x, 0.3)
    assert out.shape == (32, 32) and bool(jnp.all(jnp.isfinite(out)))
    prior = ScorePrior(net, VESDE(0.01, 5.0), 0.05, 1.0, {})
    prior.save(tmp_path / "p.eqx")
    back = ScorePrior.load(tmp_path / "p.eqx")
    assert back.network.config.pixel_unshuffle == 2
    assert np.allclose(back.score(x, 0.4), prior.score(x, 0.4))


def test_files_without_the_stem_field_load_as_plain_networks(tmp_path, getkey):
    prior = ScorePrior(ScoreUNet(TINY, key=getkey()), VESDE(0.01, 5.0), 0.1, 1.0, {})
    prior.save(tmp_path / "p.eqx")
    raw = (tmp_path / "p.eqx").read_bytes()
    newline = raw.find(b"\n")
    header = json.loads(raw[:newline])
    del header["architecture"]["pixel_unshuffle"]  # as written before the stem existed
    (tmp_path / "old.eqx").write_bytes(json.dumps(header).encode() + raw[newline:])
    assert ScorePrior.load(tmp_path / "old.eqx").network.config.pixel_unshuffle == 1


def test_config_rejects_bad_stems():
    with pytest.raises(ValueError, match="pixel_unshuffle"):
        ScoreNetworkConfig(image_size=16, channels=(8,), pixel_unshuffle=3)
    with pytest.raises(ValueError, match="pixel_unshuffle"):
        ScoreNetworkConfig(image_size=8, channels=(8,), pixel_unshuffle=4)


@pytest.mark.parametrize("factor", [2, 4])
def test_lifted_network_is_the_coarse_one_on_block_means(factor, getkey):
    """Before fine-tuning, F_fine(x) = upsample(F_coarse(block_mean(x))) exactly."""
    coarse = _randomised(ScoreUNet(TINY, key=getkey()), getkey())
    fine = lift_to_subpixel(coarse, factor)
    assert fine.config.image_size == 16 * factor and fine.config.pixel_unshuffle == factor
    x = jr.normal(getkey(), (16 * factor, 16 * factor))
    for c_noise in (-1.0, 0.3):
        expect = jnp.repeat(jnp.repeat(coarse.raw(_block_mean(x, factor), c_noise), factor, 0), factor, 1)
        assert np.allclose(fine.raw(x, c_noise), expect, atol=1e-5)
    # a stem that sums instead of averaging the sub-pixels is not the same network
    wrong = eqx.tree_at(lambda n: n.conv_in.weight, fine, fine.conv_in.weight * factor**2)
    assert not np.allclose(wrong.raw(x, 0.3), expect, atol=1e-3)
    with pytest.raises(ValueError, match="plain network"):
        lift_to_subpixel(fine, 2)


def test_training_starts_from_the_given_network(tmp_path, getkey):
    fine = lift_to_subpixel(_randomised(ScoreUNet(TINY, key=getkey()), getkey()), 2)
    data = np.asarray(0.3 * jr.normal(getkey(), (8, 32, 32)), np.float32)
    config = TrainingConfig(batch_size=4, warmup_steps=1, learning_rate=1e-4)
    prior = train_score_prior(data, tmp_path / "p.eqx", num_steps=1, config=config, init_network=fine,
                              progress=False)
    # one small step from the lifted weights: close to them, far from a fresh initialisation
    moved = np.abs(prior.network.emb_mlp.layers[0].weight - fine.emb_mlp.layers[0].weight).max()
    assert moved < 1e-3
    with pytest.raises(ValueError, match="differs"):
        train_score_prior(data, tmp_path / "q.eqx", num_steps=1, config=config, init_network=fine,
                          network_config=TINY, progress=False)


def test_broad_population_is_deterministic_and_broad():
    pytest.importorskip("galsim")
    from blindlens.galaxies import BroadGalaxyRecipe, GalaxyRecipe, draw_procedural_galaxies
    from blindlens.morphology import morphology_summaries

    whole = draw_procedural_galaxies(24, seed=5, recipe=BroadGalaxyRecipe())
    tail = draw_procedural_galaxies(4, seed=5, start=20, recipe=BroadGalaxyRecipe())
    assert np.array_equal(whole[20:], tail)
    assert np.all(np.isfinite(whole)) and np.allclose(whole.max(axis=(1, 2)), whole.max(axis=(1, 2)).clip(0.5, 2.0))
    disk = draw_procedural_galaxies(24, seed=5, recipe=GalaxyRecipe())
    r_broad = morphology_summaries(whole, 0.05)["half_light_radius"]
    r_disk = morphology_summaries(disk, 0.05)["half_light_radius"]
    # compact members make the broad population reach smaller sizes than the disk one
    assert r_broad.min() < 0.8 * r_disk.min()
    assert not np.array_equal(whole, disk)


def test_galaxies_drawn_finer_are_the_same_galaxies_in_the_same_brightness_units():
    pytest.importorskip("galsim")
    from blindlens.galaxies import BroadGalaxyRecipe, draw_procedural_galaxies

    coarse = draw_procedural_galaxies(6, seed=5, recipe=BroadGalaxyRecipe())
    fine = draw_procedural_galaxies(6, seed=5, recipe=BroadGalaxyRecipe(image_size=128, pixel_scale=0.025))
    assert fine.shape == (6, 128, 128)
    binned = fine.reshape(6, 64, 2, 64, 2).mean(axis=(2, 4))
    # the peak of the 0.05" average is the drawn peak, exactly that of the 0.05" drawing
    assert np.allclose(binned.max(axis=(1, 2)), coarse.max(axis=(1, 2)), rtol=1e-5)
    # the same galaxy: point samples at 0.05" against 2x2 means of 0.025" samples differ only by
    # the sub-pixel averaging (a broken stream or a transposed/shifted drawing differs by O(1))
    diff = np.abs(binned - coarse).max(axis=(1, 2)) / coarse.max(axis=(1, 2))
    assert diff.max() < 0.15, diff
    assert np.abs(binned[0] - coarse[1]).max() / coarse[1].max() > 0.3
    # finer pixels resolve the peak further: never below the 0.05" average's
    assert np.all(fine.max(axis=(1, 2)) >= binned.max(axis=(1, 2)) * (1 - 1e-6))
    with pytest.raises(ValueError, match="whole pixels"):
        BroadGalaxyRecipe(image_size=100, pixel_scale=0.032)


def test_a_damaged_training_checkpoint_is_a_clear_error(tmp_path, getkey):
    data = np.asarray(0.3 * jr.normal(getkey(), (8, 16, 16)), np.float32)
    config = TrainingConfig(batch_size=4, warmup_steps=1)
    train_score_prior(data, tmp_path / "p.eqx", num_steps=1, network_config=TINY, config=config, progress=False)
    ckpt = tmp_path / "p.eqx.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="damaged.*--no-resume"):
        train_score_prior(data, tmp_path / "p.eqx", num_steps=2, network_config=TINY, config=config, progress=False)
    wide = ScoreNetworkConfig(image_size=16, channels=(8, 8), embedding_dim=16, sigma_data=0.5)
    train_score_prior(data, tmp_path / "q.eqx", num_steps=1, network_config=TINY, config=config, progress=False)
    with pytest.raises(ValueError, match="another network"):
        train_score_prior(data, tmp_path / "q.eqx", num_steps=2, network_config=wide, config=config, progress=False)


def test_shipped_priors_by_name():
    from blindlens.score_prior import SHIPPED_PRIORS

    high = ScorePrior.shipped("highres")
    assert high.shape == (64, 64) and high.pixel_scale == 0.05 and high.network.config.pixel_unshuffle == 2
    assert ScorePrior.default().shape == (32, 32) and set(SHIPPED_PRIORS) == {"default", "highres", "fine"}
    x = 0.05 * jr.normal(jr.key(0), (64, 64))
    assert bool(jnp.all(jnp.isfinite(high.score(x, 0.5))))
    fine = ScorePrior.shipped("fine")
    assert fine.shape == (128, 128) and fine.pixel_scale == 0.025 and fine.network.config.pixel_unshuffle == 2
    assert fine.shape[0] * fine.pixel_scale == high.shape[0] * high.pixel_scale  # the same 3.2" field
    assert bool(jnp.all(jnp.isfinite(fine.score(0.05 * jr.normal(jr.key(1), (128, 128)), 0.5))))
    with pytest.raises(ValueError, match="unknown shipped prior 'hires'"):
        ScorePrior.shipped("hires")


def test_make_galaxies_draws_a_finer_grid_over_the_same_field(tmp_path, capsys):
    from blindlens.cli import main

    assert main(["make-galaxies", "--out", str(tmp_path / "bad"), "--num", "1", "--pixel-scale", "0.03"]) != 0
    assert "--pixel-scale 0.03 does not divide the 3.2\" field" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["make-galaxies", "--out", str(tmp_path / "bad"), "--num", "1", "--pixel-scale", "0"]) != 0
    assert "does not divide the 3.2\" field" in capsys.readouterr().err
    pytest.importorskip("galsim")
    assert main(["make-galaxies", "--out", str(tmp_path / "g"), "--num", "2", "--pixel-scale", "0.025"]) == 0
    (chunk,) = (tmp_path / "g").glob("*.npy")
    assert chunk.name == "galaxies_broad_128px_seed1_0000000.npy" and np.load(chunk).shape == (2, 128, 128)
