"""Unit tests for lmkit.frontiers.generative (chapter 28)."""

import copy
import math

import torch
import torch.nn.functional as F

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


def test_train_vae_equals_a_written_out_loop():
    """Kills: a step that forgets zero_grad (gradients pile up over steps), a history that logs
    another loss than the one minimised, or other batches."""
    x, _ = load_digits_tensor()
    torch.manual_seed(0)
    m = VAE(latent=2, hidden=16)
    ref = copy.deepcopy(m)
    hist = train_vae(m, x, steps=6, batch_size=16, lr=1e-2, seed=4, log_every=2)

    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)  # the reparameterisation noise
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    ref.train()
    expected = []
    for step in range(1, 7):
        xb = x[torch.randint(0, x.shape[0], (16,), generator=g)]
        logits, mu, logvar = ref(xb)
        loss, recon, kl = vae_loss(logits, xb, mu, logvar)  # beta = 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 2 == 0:
            expected.append(dict(step=step, loss=loss.item(), recon=recon.item(), kl=kl.item()))
    assert hist == expected
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))


def test_train_gan_equals_a_written_out_loop():
    """Kills: either optimizer's zero_grad forgotten (the generator's backward also leaves gradients
    in D, which D's next update must not see), G judged by the D from before its update, the fakes
    not detached for D's update, or the two optimizers swapped."""
    x, _ = load_digits_tensor()
    torch.manual_seed(0)
    gen, disc = Generator(latent=4, hidden=16), Discriminator(hidden=16)
    rgen, rdisc = copy.deepcopy(gen), copy.deepcopy(disc)
    hist = train_gan(gen, disc, x, steps=6, batch_size=16, lr=1e-2, seed=4, log_every=3)

    g = torch.Generator().manual_seed(4)
    opt_g = torch.optim.Adam(rgen.parameters(), lr=1e-2, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(rdisc.parameters(), lr=1e-2, betas=(0.5, 0.999))
    ones, zeros = torch.ones(16), torch.zeros(16)
    expected = []
    for step in range(1, 7):
        real = x[torch.randint(0, x.shape[0], (16,), generator=g)]
        fake = rgen(torch.randn(16, 4, generator=g))
        on_real, on_fake = rdisc(real), rdisc(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            on_real, ones
        ) + F.binary_cross_entropy_with_logits(on_fake, zeros)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(rdisc(fake), ones)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        if step % 3 == 0:
            expected.append(
                dict(
                    step=step,
                    d_loss=d_loss.item(),
                    g_loss=g_loss.item(),
                    d_real=torch.sigmoid(on_real).mean().item(),
                    d_fake=torch.sigmoid(on_fake).mean().item(),
                )
            )
    assert hist == expected
    for a, b in ((gen, rgen), (disc, rdisc)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
