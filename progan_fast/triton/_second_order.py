"""Second-order terms of the nonlinear backward ops, as plain differentiable torch.

They run only when a first-order gradient is itself differentiated (WGAN-GP penalty in D; never in
G's training step), on small tensors (D's 4x4 stddev block) or once per step, so clarity wins over a
kernel here. Math in float32 (float64 for float64 inputs). Notation for pixel norm over a dim with
C entries: r = rsqrt(mean(z^2) + eps), y = z r, Jacobian J = r I - r^3 z z^T / C (symmetric).
"""
from __future__ import annotations

import torch


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def _dot(a, b, dim):
    return (a * b).sum(dim=dim, keepdim=True)


def pn_jvp(w, z, dim, eps):
    """J(z) w (= J(z)^T w): the pixel-norm Jacobian applied to w."""
    c = z.shape[dim]
    r = torch.rsqrt(z.square().mean(dim=dim, keepdim=True) + eps)
    return r * w - r ** 3 * z * _dot(z, w, dim) / c


def pn_hess(g, w, z, dim, eps):
    """sum_ij g_i w_j dJ_ij/dz_k: derivative of <w, J(z) g> with respect to z."""
    c = z.shape[dim]
    r = torch.rsqrt(z.square().mean(dim=dim, keepdim=True) + eps)
    gz, wz, gw = _dot(g, z, dim), _dot(w, z, dim), _dot(g, w, dim)
    r3 = r ** 3
    return -r3 * z * gw / c + 3 * r3 * r * r * z * gz * wz / (c * c) - r3 / c * (g * wz + w * gz)


def act_parts(x, b, act, slope, gain):
    """(z, a) with u = x + b, a = act'(u) (piecewise constant), z = gain * act(u) = gain * a * u."""
    u = _acc(x)
    if b is not None:
        u = u + _acc(b).reshape([1, -1] + [1] * (x.dim() - 2))
    if act == "lrelu":
        a = torch.where(u > 0, 1.0, slope).to(u.dtype)
    elif act == "relu":
        a = (u > 0).to(u.dtype)
    else:
        a = torch.ones_like(u)
    return gain * a * u, a


def minibatch_stddev_grad_backward(v, dy, x, group_size, eps):
    """Adjoints of dx = mbstd_grad(dy, x) for an upstream v (shaped like x): (d_dy, d_x).
    With groups g of M = N/G strided samples, u = x - mean_g, s = sqrt(mean_g(u^2) + eps),
    gs_m = sum of dy[:, C] over group m and H, W, L = C*H*W:  dx = dy[:, :C] + gs_m / (L G) * u / s."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    m = n // g
    length = c * h * w
    xf = _acc(x).reshape(g, m, c, h, w)
    vf = _acc(v).reshape(g, m, c, h, w)
    u = xf - xf.mean(dim=0)
    s = (u.square().mean(dim=0) + eps).sqrt()
    gs = _acc(dy[:, c]).reshape(g, m, h * w).sum(dim=(0, 2))
    coef = (gs / (length * g)).reshape(1, m, 1, 1, 1)
    t = (vf * u / s).sum(dim=(0, 2, 3, 4)) / (length * g)
    d_stat = t.reshape(1, m, 1, 1, 1).expand(g, m, 1, h, w).reshape(n, 1, h, w)
    d_dy = torch.cat([_acc(v), d_stat], dim=1).to(dy.dtype)
    vu = (vf * u).sum(dim=0)
    d_x = coef * ((vf - vf.mean(dim=0)) / s - vu * u / (g * s ** 3))
    return d_dy, d_x.reshape(n, c, h, w).to(x.dtype)
