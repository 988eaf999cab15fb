"""WGAN-GP losses of the official code (loss.py: G_wgan_acgan / D_wgangp_acgan without labels).

D: D(fake) - D(real) + lambda/gamma^2 * (||grad D(x_hat)|| - gamma)^2 + eps_drift * D(real)^2,
x_hat a per-sample uniform mix of real and fake. G: -D(G(z)). The penalty's inner gradient is taken
on the loss-scaled score and unscaled afterwards, as the official fp16 path does, so fp16 loss scaling
stays correct through the double backward.

Class-conditional runs pass `labels`. With a projection D they are a D input (the penalty's mixed
samples take the real labels: the D-step fakes are made from the reals' labels, as in the official
code, so both ends of each mix share one label). With an AC-GAN D (outputs [score, logits]) the
official label penalty is added: cond_weight * (CE(real logits, y) + CE(fake logits, y)) to D's loss,
cond_weight * CE(fake logits, y_fake) to G's; the gradient penalty uses the score column only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _autocast(device_type: str, dtype):
    # The autocast weight cache must be off while a CUDA graph is captured (its casts would live in the
    # graph's memory pool and be freed when the context exits).
    capturing = device_type == "cuda" and torch.cuda.is_current_stream_capturing()
    return torch.autocast(device_type=device_type, dtype=dtype or torch.float32, enabled=dtype is not None,
                          cache_enabled=not capturing)


def _d(D, x, res_log2, alpha, labels):
    """D's output; labels are passed only to conditional runs (unconditional calls stay as they were)."""
    return D(x, res_log2, alpha) if labels is None else D(x, res_log2, alpha, labels)


def _split(out: torch.Tensor):
    """[N, 1 (+ K)] -> (scores [N, 1], AC-GAN class logits [N, K] or None)."""
    return (out, None) if out.shape[1] == 1 else (out[:, :1], out[:, 1:])


def gradient_penalty(D, mixed: torch.Tensor, res_log2: int, alpha, *, gamma: float = 1.0, amp_dtype=None,
                     scaler=None, labels=None):
    """Returns (mixed_scores [N,1], per-sample penalty (||grad|| - gamma)^2 / gamma^2 [N])."""
    mixed = mixed.detach().requires_grad_(True)
    with _autocast(mixed.device.type, amp_dtype):
        scores, _ = _split(_d(D, mixed, res_log2, alpha, labels))
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
                  lam: float = 10.0, gamma: float = 1.0, drift: float = 1e-3, amp_dtype=None, scaler=None,
                  labels: torch.Tensor | None = None, cond_weight: float = 1.0):
    """The discriminator loss, averaged over the batch. `mix` [N,1,1,1] in [0,1) picks x_hat.
    `labels` [N] (conditional runs): the class of each real and of the fake made from it.
    Returns (loss, stats dict of detached 0-d tensors)."""
    fakes = fakes.detach().to(reals.dtype)
    with _autocast(reals.device.type, amp_dtype):
        real_scores, real_logits = _split(_d(D, reals, res_log2, alpha, labels).float())
        fake_scores, fake_logits = _split(_d(D, fakes, res_log2, alpha, labels).float())
    mixed = reals + (fakes - reals) * mix.to(reals.dtype)
    _, penalty = gradient_penalty(D, mixed, res_log2, alpha, gamma=gamma, amp_dtype=amp_dtype, scaler=scaler,
                                  labels=labels)
    real_scores, fake_scores = real_scores.squeeze(1), fake_scores.squeeze(1)
    loss = fake_scores - real_scores + lam * penalty + drift * real_scores.square()
    stats = {"d_loss": None, "penalty": penalty.mean().detach(),
             "real_score": real_scores.mean().detach(), "fake_score": fake_scores.mean().detach()}
    if real_logits is not None:
        if labels is None:
            raise ValueError("an AC-GAN discriminator needs the real labels for its label loss")
        label_loss = (F.cross_entropy(real_logits, labels, reduction="none")
                      + F.cross_entropy(fake_logits, labels, reduction="none"))
        loss = loss + cond_weight * label_loss
        stats["d_label_loss"] = label_loss.mean().detach()
        stats["real_acc"] = (real_logits.argmax(1) == labels).float().mean()
    loss = loss.mean()
    stats["d_loss"] = loss.detach()
    return loss, stats


def g_loss_wgan(D, fakes: torch.Tensor, res_log2: int, alpha, *, amp_dtype=None,
                labels: torch.Tensor | None = None, cond_weight: float = 1.0, stats: dict | None = None):
    """-D(G(z)) (+ cond_weight * CE(D's logits, labels) for AC-GAN), averaged over the batch.
    If `stats` is a dict, the AC-GAN label loss is recorded there as g_label_loss."""
    with _autocast(fakes.device.type, amp_dtype):
        scores, logits = _split(_d(D, fakes, res_log2, alpha, labels).float())
    loss = -scores.mean()
    if logits is not None:
        if labels is None:
            raise ValueError("an AC-GAN discriminator needs the fakes' labels for G's label loss")
        label_loss = F.cross_entropy(logits, labels)
        loss = loss + cond_weight * label_loss
        if stats is not None:
            stats["g_label_loss"] = label_loss.detach()
    return loss
