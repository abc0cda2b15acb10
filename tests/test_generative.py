"""Unit tests for lmkit.frontiers.generative (chapter 28)."""

import math

import torch

from lmkit.frontiers.generative import (
    VAE,
    Discriminator,
    Generator,
    gaussian_kl,
    interpolate,
    load_digits_tensor,
    train_gan,
    train_vae,
    vae_loss,
)


def test_load_digits_tensor():
    x, y = load_digits_tensor()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_gaussian_kl_closed_form():
    mu = torch.full((1, 5), 0.5)
    logvar = torch.full((1, 5), math.log(0.01))
    expect = 5 * 0.5 * (0.01 + 0.25 - 1 - math.log(0.01))
    assert abs(gaussian_kl(mu, logvar).item() - expect) < 1e-4
    assert gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2)).abs().max() < 1e-7
    # agrees with torch.distributions
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert abs(torch.distributions.kl_divergence(q, p).sum().item() - expect) < 1e-4


def test_vae_shapes_and_training_lowers_loss():
    x, _ = load_digits_tensor()
    torch.manual_seed(0)
    m = VAE(latent=2, hidden=32)
    logits, mu, logvar = m(x[:4])
    assert logits.shape == (4, 64) and mu.shape == (4, 2) and logvar.shape == (4, 2)
    l0, r0, k0 = vae_loss(logits, x[:4], mu, logvar)
    assert l0.item() > 0 and k0.item() >= 0
    hist = train_vae(m, x, steps=60, batch_size=64, log_every=20)
    assert hist[-1]["loss"] < 44.4  # 64 * ln 2 would be a uniform Bernoulli guess
    assert m.sample(3).shape == (3, 64)


def test_gan_shapes_and_train():
    x, _ = load_digits_tensor()
    torch.manual_seed(0)
    g, d = Generator(latent=4, hidden=16), Discriminator(hidden=16)
    assert g(torch.randn(5, 4)).shape == (5, 64)
    assert d(torch.rand(5, 64)).shape == (5,)
    hist = train_gan(g, d, x, steps=20, batch_size=32, log_every=10)
    assert len(hist) == 2 and 0 <= hist[-1]["d_real"] <= 1
    s = g.sample(3)
    assert s.shape == (3, 64) and float(s.min()) >= 0 and float(s.max()) <= 1


def test_interpolate():
    z = interpolate(torch.zeros(2), torch.ones(2), n=5)
    assert z.shape == (5, 2)
    assert torch.allclose(z[2], torch.full((2,), 0.5))
