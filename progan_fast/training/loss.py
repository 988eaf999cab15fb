"""WGAN-GP losses of the official code (loss.py: G_wgan_acgan / D_wgangp_acgan without labels).

D: D(fake) - D(real) + lambda/gamma^2 * (||grad D(x_hat)|| - gamma)^2 + eps_drift * D(real)^2,
x_hat a per-sample uniform mix of real and fake. G: -D(G(z)). The penalty's inner gradient is taken
on the loss-scaled score and unscaled afterwards, as the official fp16 path does, so fp16 loss scaling
stays correct through the double backward.
"""
from __future__ import annotations

import torch


def _autocast(device_type: str, dtype):
    # The autocast weight cache must be off while a CUDA graph is captured (its casts would live in the
    # graph's memory pool and be freed when the context exits).
    capturing = device_type == "cuda" and torch.cuda.is_current_stream_capturing()
    return torch.autocast(device_type=device_type, dtype=dtype or torch.float32, enabled=dtype is not None,
                          cache_enabled=not capturing)


def gradient_penalty(D, mixed: torch.Tensor, res_log2: int, alpha, *, gamma: float = 1.0, amp_dtype=None,
                     scaler=None):
    """Returns (mixed_scores [N,1], per-sample penalty (||grad|| - gamma)^2 / gamma^2 [N])."""
    mixed = mixed.detach().requires_grad_(True)
    with _autocast(mixed.device.type, amp_dtype):
        scores = D(mixed, res_log2, alpha)
    inner = scores.float().sum()
    if scaler is not None and scaler.is_enabled():
        inner = scaler.scale(inner)
    (grad,) = torch.autograd.grad(inner, mixed, create_graph=True)
    grad = grad.float()
    if scaler is not None and scaler.is_enabled():
        grad = grad / scaler._scale.to(grad.device)  # the scale as a tensor: no host sync
    norm = grad.flatten(1).norm(dim=1)
    return scores, (norm - gamma).square() / gamma ** 2


def d_loss_wgangp(D, reals: torch.Tensor, fakes: torch.Tensor, res_log2: int, alpha, *, mix: torch.Tensor,
                  lam: float = 10.0, gamma: float = 1.0, drift: float = 1e-3, amp_dtype=None, scaler=None):
    """The discriminator loss, averaged over the batch. `mix` [N,1,1,1] in [0,1) picks x_hat.
    Returns (loss, stats dict of detached 0-d tensors)."""
    fakes = fakes.detach().to(reals.dtype)
    with _autocast(reals.device.type, amp_dtype):
        real_scores = D(reals, res_log2, alpha).float()
        fake_scores = D(fakes, res_log2, alpha).float()
    mixed = reals + (fakes - reals) * mix.to(reals.dtype)
    _, penalty = gradient_penalty(D, mixed, res_log2, alpha, gamma=gamma, amp_dtype=amp_dtype, scaler=scaler)
    real_scores, fake_scores = real_scores.squeeze(1), fake_scores.squeeze(1)
    loss = fake_scores - real_scores + lam * penalty + drift * real_scores.square()
    stats = {"d_loss": loss.mean().detach(), "penalty": penalty.mean().detach(),
             "real_score": real_scores.mean().detach(), "fake_score": fake_scores.mean().detach()}
    return loss.mean(), stats


def g_loss_wgan(D, fakes: torch.Tensor, res_log2: int, alpha, *, amp_dtype=None):
    """-D(G(z)), averaged over the batch."""
    with _autocast(fakes.device.type, amp_dtype):
        scores = D(fakes, res_log2, alpha).float()
    return -scores.mean()
