"""Score network shapes and pre-conditioning, prior serialisation, tiny training, galaxy sets."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from blindlens.diffusion_sde import VESDE
from blindlens.image_sets import load_image_set
from blindlens.score_network import ScoreNetworkConfig, ScoreUNet, conv2d, count_parameters
from blindlens.score_prior import ScorePrior
from blindlens.training import TrainingConfig, dsm_loss, heldout_loss_by_sigma, train_score_prior

TINY = ScoreNetworkConfig(image_size=16, channels=(8, 16), num_res_blocks=1, embedding_dim=16, sigma_data=0.5)


@pytest.mark.parametrize("size,channels", [(16, (8, 16)), (32, (8, 8, 16))])
def test_network_shapes(size, channels, getkey):
    net = ScoreUNet(ScoreNetworkConfig(image_size=size, channels=channels, embedding_dim=16), key=getkey())
    x = jr.normal(getkey(), (size, size))
    single = eqx.filter_jit(lambda n, z: (n.score(z, 0.3), n.epsilon(z, 0.3), n.denoise(z, 0.3)))
    for out in single(net, x):
        assert out.shape == (size, size) and bool(jnp.all(jnp.isfinite(out)))
    batched = eqx.filter_jit(lambda n, z: jax.vmap(lambda zi: n.score(zi, 0.3))(z))(net, jnp.stack([x, x]))
    assert np.allclose(batched[0], single(net, x)[0], atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        ScoreNetworkConfig(image_size=48)
    with pytest.raises(ValueError, match="divisible"):
        ScoreNetworkConfig(image_size=4, channels=(4, 4, 4, 4))


def test_untrained_network_is_the_gaussian_posterior_mean(getkey):
    """The last convolution starts at zero, so D(x) = c_skip x: exactly E[x0|x] for x0 ~ N(0, s_d^2)."""
    net = ScoreUNet(TINY, key=getkey())
    x = jr.normal(getkey(), (16, 16))
    fn = eqx.filter_jit(lambda n, z, s: (n.denoise(z, s), n.score(z, s)))
    for sigma in (0.01, 0.5, 10.0):
        sd2 = TINY.sigma_data**2
        d, s = fn(net, x, sigma)
        assert np.allclose(d, sd2 / (sd2 + sigma**2) * x, rtol=1e-5)
        assert np.allclose(s, -x / (sd2 + sigma**2), rtol=1e-4)


def _prior(key):
    return ScorePrior(ScoreUNet(TINY, key=key), VESDE(0.01, 5.0), 0.1, 1.0, {"note": "test"})


def test_prior_round_trip_and_units(tmp_path, getkey):
    prior = _prior(getkey())
    # perturb weights so the round trip is not trivially all-zeros
    prior = eqx.tree_at(lambda p: p.network.conv_out.weight, prior, jr.normal(getkey(), prior.network.conv_out.weight.shape))
    path = tmp_path / "p.eqx"
    prior.save(path)
    back = ScorePrior.load(path)
    x = jr.normal(getkey(), (16, 16))
    assert back.shape == (16, 16) and back.pixel_scale == 0.1 and back.metadata == {"note": "test"}
    score = eqx.filter_jit(lambda p, z: p.score(z, 0.4))
    denoise = eqx.filter_jit(lambda p, z: p.denoise(z, 0.4))
    assert np.array_equal(score(back, x), score(prior, x))
    # flux scaling: score_phys(x) = score_net(x/f)/f and sigma_phys = f sigma_net
    f = 3.0
    bright = back.with_flux_scale(f)
    assert np.isclose(bright.sde.sigma_max, 5.0 * f)
    assert np.allclose(score(bright, f * x), score(back, x) / f, rtol=1e-4, atol=1e-6)
    assert np.allclose(denoise(bright, f * x), f * denoise(back, x), rtol=1e-4, atol=1e-6)
    # Tweedie consistency of the two code paths
    assert np.allclose(denoise(back, x), x + back.sde.sigma(0.4) ** 2 * score(back, x), atol=1e-5)


def test_prior_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ScorePrior.load(tmp_path / "missing.eqx")
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(b'{"format": "other"}\n1234')
    with pytest.raises(ValueError, match="not a blindlens score-prior"):
        ScorePrior.load(bad)


def test_default_prior_loads():
    prior = ScorePrior.default()
    assert prior.shape == (32, 32) and prior.pixel_scale == 0.1
    assert prior.metadata["training"]["num_images"] >= 30000
    x = jnp.zeros(prior.shape)
    assert bool(jnp.all(jnp.isfinite(eqx.filter_jit(lambda p, z: p.score(z, 0.5))(prior, x))))
    assert count_parameters(prior.network) > 1e5


def test_tiny_training_lowers_the_loss(tmp_path, getkey):
    """Smooth 16x16 blobs: the held-out denoising loss at moderate noise must drop after training."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    centres = rng.uniform(5, 11, size=(256, 2))
    widths = rng.uniform(1.5, 3.0, size=256)
    data = np.exp(-((xx - centres[:, 0, None, None]) ** 2 + (yy - centres[:, 1, None, None]) ** 2) / (2 * widths[:, None, None] ** 2))
    data = data.astype(np.float32)
    sde = VESDE(0.01, 5.0)
    net0 = ScoreUNet(ScoreNetworkConfig(16, (8, 16), 1, 16, float(data.std())), key=jr.key(0))
    batch = jnp.asarray(data[:64])
    loss_fn = eqx.filter_jit(dsm_loss)
    loss0 = float(loss_fn(net0, sde, batch, jr.key(1)))
    cfg = TrainingConfig(batch_size=32, learning_rate=3e-3, warmup_steps=10, ema_decay=0.9, sigma_min=0.01, sigma_max=5.0)
    out = tmp_path / "tiny.eqx"
    prior = train_score_prior(data, out, num_steps=120, network_config=net0.config, config=cfg,
                              checkpoint_every=60, progress=False, resume=False)
    loss1 = float(loss_fn(prior.network, sde, batch, jr.key(1)))
    assert loss1 < 0.7 * loss0
    sig = np.array([0.1, 0.3])
    before = heldout_loss_by_sigma(net0.denoise, data[200:], sig, key=jr.key(2))
    after = heldout_loss_by_sigma(prior.network.denoise, data[200:], sig, key=jr.key(2))
    assert np.all(after < before)
    # resume: continuing from the checkpoint reaches the same step count without restarting
    more = train_score_prior(data, out, num_steps=130, network_config=net0.config, config=cfg,
                             checkpoint_every=60, progress=False, resume=True)
    assert more.metadata["training"]["steps"] == 130


def test_training_is_deterministic(tmp_path):
    data = np.random.default_rng(1).normal(size=(40, 16, 16)).astype(np.float32)
    cfg = TrainingConfig(batch_size=8, warmup_steps=2)
    runs = [train_score_prior(data, tmp_path / f"r{i}.eqx", num_steps=3, network_config=TINY, config=cfg,
                              progress=False, resume=False) for i in range(2)]
    a, b = (jax.tree_util.tree_leaves(eqx.filter(r.network, eqx.is_inexact_array)) for r in runs)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_scanned_steps_match_single_steps(tmp_path):
    # steps_per_call (lax.scan, for accelerators) must give the same weights as one step per call,
    # including a tail of single steps (7 = 3 + 3 + 1) and the step counter used for resume.
    data = np.random.default_rng(1).normal(size=(40, 16, 16)).astype(np.float32)
    cfg = TrainingConfig(batch_size=8, warmup_steps=2)
    runs = [train_score_prior(data, tmp_path / f"s{n}.eqx", num_steps=7, network_config=TINY, config=cfg,
                              progress=False, resume=False, steps_per_call=n, checkpoint_every=2)
            for n in (1, 3)]
    a, b = (jax.tree_util.tree_leaves(eqx.filter(r.network, eqx.is_inexact_array)) for r in runs)
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)) < 1e-6
    assert runs[1].metadata["training"]["steps"] == 7
    with pytest.raises(ValueError, match="steps_per_call"):
        train_score_prior(data, tmp_path / "x.eqx", num_steps=1, network_config=TINY, steps_per_call=0)


def test_training_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        train_score_prior(np.zeros((4, 8, 16)), tmp_path / "x.eqx", num_steps=1)
    with pytest.raises(ValueError, match="NaN"):
        train_score_prior(np.full((4, 16, 16), np.nan), tmp_path / "x.eqx", num_steps=1)


def test_image_set_formats(tmp_path):
    from astropy.io import fits
    import h5py

    imgs = np.random.default_rng(0).normal(size=(5, 16, 16)).astype(np.float32)
    np.save(tmp_path / "a.npy", imgs)
    np.savez(tmp_path / "b.npz", images=imgs)
    fits.PrimaryHDU(imgs).writeto(tmp_path / "c.fits")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["images"] = imgs
    for name in ("a.npy", "b.npz", "c.fits", "d.h5"):
        assert np.allclose(load_image_set(tmp_path / name), imgs)
    np.save(tmp_path / "bad.npy", imgs[:, :, :8])
    with pytest.raises(ValueError, match="square"):
        load_image_set(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "x.txt").write_text("1")
        load_image_set(tmp_path / "x.txt")


def test_procedural_galaxies_are_deterministic_and_chunkable():
    galsim = pytest.importorskip("galsim")  # noqa: F841
    from blindlens.galaxies import GalaxyRecipe, draw_procedural_galaxies

    whole = draw_procedural_galaxies(4, seed=7)
    tail = draw_procedural_galaxies(2, seed=7, start=2)
    assert whole.shape == (4, 64, 64) and whole.dtype == np.float32
    assert np.array_equal(whole[2:], tail)
    peaks = whole.max(axis=(1, 2))
    lo, hi = GalaxyRecipe.peak_range
    assert np.all((peaks >= lo * 0.999) & (peaks <= hi * 1.001))
    assert np.all(whole >= -1e-6)


def test_bin_images_averages_blocks_exactly_and_rejects_bad_factors():
    from blindlens.image_sets import bin_images

    images = np.arange(2 * 4 * 6, dtype=float).reshape(2, 4, 6)
    binned = bin_images(images, 2)
    assert binned.shape == (2, 2, 3)
    assert binned[1, 1, 2] == np.mean(images[1, 2:4, 4:6])  # one block by hand
    assert np.sum(binned) * 4 == np.sum(images)  # flux per area conserved
    np.testing.assert_array_equal(bin_images(images[0], 1), images[0])
    with pytest.raises(ValueError, match="divide both sides"):
        bin_images(images, 4)


@pytest.mark.parametrize(
    "c_in,c_out,kernel,stride,padding",
    [(3, 5, 3, 1, 1), (4, 4, 3, 2, 1), (6, 2, 1, 1, 0), (2, 3, 3, 1, 0), (3, 3, 5, 2, 2)],
)
def test_im2col_convolution_matches_the_native_one(c_in, c_out, kernel, stride, padding, x64):
    """``conv2d`` (the loop-friendly matrix-product convolution) is the native convolution, values and gradients."""
    conv = eqx.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, key=jr.key(0))
    conv = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, conv)
    x = jr.normal(jr.key(1), (c_in, 12, 12), dtype=jnp.float64)
    np.testing.assert_allclose(conv2d(conv, x), conv(x), rtol=0, atol=1e-12)
    probe = jr.normal(jr.key(2), conv(x).shape, dtype=jnp.float64)
    g_ours = eqx.filter_grad(lambda c, z: jnp.sum(probe * conv2d(c, z)))(conv, x)
    g_native = eqx.filter_grad(lambda c, z: jnp.sum(probe * c(z)))(conv, x)
    np.testing.assert_allclose(g_ours.weight, g_native.weight, rtol=0, atol=1e-11)
    np.testing.assert_allclose(g_ours.bias, g_native.bias, rtol=0, atol=1e-11)
    gx_ours = jax.grad(lambda z: jnp.sum(probe * conv2d(conv, z)))(x)
    gx_native = jax.grad(lambda z: jnp.sum(probe * conv(z)))(x)
    np.testing.assert_allclose(gx_ours, gx_native, rtol=0, atol=1e-11)
    # A transposed kernel (the classic im2col ordering slip) is a different function.
    flipped = eqx.tree_at(lambda c: c.weight, conv, conv.weight.transpose(0, 1, 3, 2))
    if kernel > 1:
        assert float(jnp.max(jnp.abs(conv2d(flipped, x) - conv(x)))) > 1e-2


def test_shipped_prior_network_unchanged_by_the_matrix_product_convolution():
    """The shipped network evaluated through ``conv2d`` equals the native-convolution network (float32)."""
    from blindlens.score_network import native_convolutions

    net = ScorePrior.default().network
    x = jr.normal(jr.key(3), (net.config.image_size,) * 2)
    ours = net.denoise(x, 0.3)
    with native_convolutions():
        native = net.denoise(x, 0.3)
    np.testing.assert_allclose(ours, native, rtol=0, atol=2e-5 * float(jnp.max(jnp.abs(native))))


def test_native_convolutions_context_switches_the_traced_form_not_the_function():
    """Outside the context the CPU network has no XLA convolution; inside it has only those; same output."""
    from blindlens.score_network import native_convolutions

    net = ScoreUNet(TINY, key=jr.key(0))
    # random weights everywhere (the zero-initialised output convolution would hide any difference)
    leaves, treedef = jax.tree_util.tree_flatten(net)
    keys = iter(jr.split(jr.key(2), len(leaves)))
    net = jax.tree_util.tree_unflatten(
        treedef, [0.3 * jr.normal(next(keys), a.shape) if eqx.is_inexact_array(a) else a for a in leaves]
    )
    x = jr.normal(jr.key(1), (16, 16))
    default = str(jax.make_jaxpr(lambda z: net.denoise(z, 0.3))(x))
    with native_convolutions():
        native = str(jax.make_jaxpr(lambda z: net.denoise(z, 0.3))(x))
        out_native = net.denoise(x, 0.3)
    if jax.default_backend() == "cpu":
        assert "conv_general_dilated" not in default
    assert "conv_general_dilated" in native
    assert float(jnp.max(jnp.abs(out_native - net.preconditioning(0.3)[0] * x))) > 1e-2  # F is not 0
    np.testing.assert_allclose(net.denoise(x, 0.3), out_native, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(out_native))))
