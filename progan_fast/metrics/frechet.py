"""Fréchet distance between Gaussians fitted to two feature sets (FID), and the Inception-style score.

FID = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)).
S_a S_b is not symmetric, but for PSD S_a, S_b it is similar to the PSD matrix A S_b A with
A = S_a^(1/2) (A^-1 (A A S_b) A = A S_b A), so Tr((S_a S_b)^(1/2)) = sum sqrt(eig(A S_b A)):
two symmetric eigendecompositions in float64, no scipy and no complex arithmetic. Tiny negative
eigenvalues from rounding are clipped to 0.
"""
from __future__ import annotations

import math

import torch

__all__ = ["fid_from_features", "frechet_distance", "trace_sqrt_product", "feature_stats",
           "inception_score_from_logits"]


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(s)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def trace_sqrt_product(s_a: torch.Tensor, s_b: torch.Tensor) -> float:
    """Tr((S_a S_b)^(1/2)) for symmetric PSD S_a, S_b (float64)."""
    a = _psd_sqrt(s_a.double())
    m = a @ s_b.double() @ a
    m = (m + m.T) / 2  # exact symmetry for eigh
    return float(torch.linalg.eigvalsh(m).clamp(min=0).sqrt().sum())


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D]."""
    f = features.double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors [N, D], got {tuple(f.shape)}")
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(t, dtype=torch.float64) for t in (mu_a, mu_b, cov_a, cov_b))
    diff = float((mu_a - mu_b).square().sum())
    value = diff + float(torch.trace(cov_a) + torch.trace(cov_b)) - 2.0 * trace_sqrt_product(cov_a, cov_b)
    return max(value, 0.0)  # rounding can leave a tiny negative for identical sets


def fid_from_features(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    return frechet_distance(*feature_stats(feat_a), *feature_stats(feat_b))


def inception_score_from_logits(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) in each of `splits` consecutive chunks: (mean, std over chunks)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, classes], got {tuple(logits.shape)}")
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"the Inception-style score needs at least {max(splits, 1)} images ({splits} splits), got {n}")
    logp = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for i in range(splits):
        lp = logp[i * n // splits:(i + 1) * n // splits]
        log_py = torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])  # log of the chunk's marginal p(y)
        kl = (lp.exp() * (lp - log_py)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(correction=0)) if splits > 1 else 0.0
