"""Generative models beyond language models: a VAE and a GAN on scikit-learn's 8x8 digits.

Both models are small multilayer perceptrons over flattened 8x8 images (64 pixels scaled to
[0, 1]), small enough to train on a CPU in seconds. Explained in chapter 28.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.nn import device_of
from lmkit.optim import optimizer_step

__all__ = [
    "load_digits_tensor",
    "VAE",
    "vae_loss",
    "gaussian_kl",
    "train_vae",
    "Generator",
    "Discriminator",
    "train_gan",
    "interpolate",
]


def load_digits_tensor() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(X, y)``: X (1797, 64) float32 in [0, 1], y (1797,) int64.

    The original pixels are integers 0..16; we divide by 16. Explained in chapter 28.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def _mlp(sizes: list[int], act=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per example: (B, d) -> (B,).

    Closed form 0.5 * sum(exp(logvar) + mu^2 - 1 - logvar). Explained in chapter 28.
    """
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


class VAE(nn.Module):
    """Variational autoencoder with a Gaussian encoder q(z|x) and a Bernoulli decoder p(x|z).

    encode: x (B, 64) -> (mu, logvar), each (B, latent); decode: z (B, latent) -> logits (B, 64);
    forward: x -> (logits, mu, logvar) using the reparameterisation z = mu + sigma * eps.
    Explained in chapter 28.
    """

    def __init__(self, n_in: int = 64, hidden: int = 128, latent: int = 2):
        super().__init__()
        self.latent = latent
        self.enc = _mlp([n_in, hidden, hidden])
        self.to_mu = nn.Linear(hidden, latent)
        self.to_logvar = nn.Linear(hidden, latent)
        self.dec = _mlp([latent, hidden, hidden, n_in])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.enc(x))
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ N(0, I) and return decoder means (n, 64) in [0, 1]."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent, generator=generator).to(p.device)
        return torch.sigmoid(self.decode(z))


def vae_loss(logits, x, mu, logvar, beta: float = 1.0):
    """Negative ELBO averaged over the batch: (loss, recon, kl), scalars in nats per image.

    recon = -log p(x|z) with a Bernoulli likelihood on pixels in [0, 1] (binary cross-entropy
    summed over the 64 pixels); kl = KL(q(z|x) || N(0, I)). Explained in chapter 28.
    """
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean()
    kl = gaussian_kl(mu, logvar).mean()
    return recon + beta * kl, recon, kl


def train_vae(
    model: VAE,
    x: torch.Tensor,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    beta: float = 1.0,
    seed: int = 0,
    log_every: int = 100,
) -> list[dict]:
    """Train a VAE with Adam on x (N, 64); returns a history of {step, loss, recon, kl}.

    Explained in chapter 28.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    dev = device_of(model)
    x = x.to(dev)
    hist = []
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g).to(dev)
        xb = x[idx]
        logits, mu, logvar = model(xb)
        loss, recon, kl = vae_loss(logits, xb, mu, logvar, beta)
        value = optimizer_step(loss, opt)
        if step % log_every == 0 or step == steps:
            hist.append({"step": step, "loss": value, "recon": recon.item(), "kl": kl.item()})
    model.eval()
    return hist


class Generator(nn.Module):
    """GAN generator: z (B, latent) -> images (B, 64) in [0, 1] (sigmoid output).

    Explained in chapter 28.
    """

    def __init__(self, latent: int = 16, hidden: int = 128, n_out: int = 64):
        super().__init__()
        self.latent = latent
        self.net = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, n_out),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.parameters())
        z = torch.randn(n, self.latent, generator=generator).to(p.device)
        return self(z)


class Discriminator(nn.Module):
    """GAN discriminator: images (B, 64) -> logits (B,) of "real". Explained in chapter 28."""

    def __init__(self, n_in: int = 64, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def train_gan(
    gen: Generator,
    disc: Discriminator,
    x: torch.Tensor,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-4,
    seed: int = 0,
    log_every: int = 100,
) -> list[dict]:
    """Train a GAN with the non-saturating generator loss (Goodfellow et al. 2014).

    Each step: one discriminator update on a real and a fake batch, then one generator update.
    Returns a history of {step, d_loss, g_loss, d_real, d_fake} where d_real / d_fake are the
    mean probabilities D assigns to "real" on real and on generated images. Explained in chapter 28.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    dev = device_of(gen)
    x = x.to(dev)
    ones = torch.ones(batch_size, device=dev)
    zeros = torch.zeros(batch_size, device=dev)
    hist = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g).to(dev)
        real = x[idx]
        z = torch.randn(batch_size, gen.latent, generator=g).to(dev)
        fake = gen(z)
        lr_ = disc(real)
        lf_ = disc(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(lr_, ones) + F.binary_cross_entropy_with_logits(
            lf_, zeros
        )
        d_value = optimizer_step(d_loss, opt_d)  # updates D only: fake was detached
        lg = disc(fake)  # the updated D judges the same fakes
        g_loss = F.binary_cross_entropy_with_logits(lg, ones)  # non-saturating: max log D(G(z))
        # g_loss also leaves gradients in D; opt_d clears them before D's next update
        g_value = optimizer_step(g_loss, opt_g)
        if step % log_every == 0 or step == steps:
            hist.append(
                {
                    "step": step,
                    "d_loss": d_value,
                    "g_loss": g_value,
                    "d_real": torch.sigmoid(lr_).mean().item(),
                    "d_fake": torch.sigmoid(lf_).mean().item(),
                }
            )
    return hist


def interpolate(z0: torch.Tensor, z1: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Points on the segment from z0 to z1: (d,), (d,) -> (n, d). Explained in chapter 28."""
    t = torch.linspace(0, 1, n, device=z0.device).unsqueeze(1)
    return (1 - t) * z0 + t * z1
