"""One PGGAN training iteration: D step (WGAN-GP) -> G step -> G EMA update.

Optimizers: Adam(beta1=0, beta2=0.99, eps=1e-8) for G and D, each with its own loss scaler under
fp16 (official: separate loss scaling per optimizer). A step whose gradients are not finite is
skipped (the optimizer is not stepped) and counted, under every precision.
"""
from __future__ import annotations

import copy

import torch

from .loss import _autocast, d_loss_wgangp, g_loss_wgan

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def unwrap(module):
    """The plain module under a DDP / torch.compile wrapper."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or getattr(module, "_orig_mod")
    return module


class TrainStep:
    """Holds G, D, Gs (EMA of G), the optimizers and loss scalers; `step(reals, res_log2, alpha)`."""

    def __init__(self, G, D, *, lr: float = 1e-3, betas=(0.0, 0.99), adam_eps: float = 1e-8, amp_dtype=None,
                 ema_beta: float = 0.999, wgan_lambda: float = 10.0, wgan_target: float = 1.0,
                 drift: float = 1e-3, channels_last: bool = False, device=None, Gs=None,
                 generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1,
                 cond_weight: float = 1.0):
        self.G, self.D = G, D
        g_mod = unwrap(G)
        self.device = torch.device(device) if device is not None else next(g_mod.parameters()).device
        if amp_dtype == torch.float16 and self.device.type != "cuda":
            raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 (--amp-dtype bf16) on CPU")
        self.Gs = Gs if Gs is not None else copy.deepcopy(g_mod).eval().requires_grad_(False)
        self.amp_dtype, self.ema_beta = amp_dtype, ema_beta
        self.wgan_lambda, self.wgan_target, self.drift = wgan_lambda, wgan_target, drift
        self.channels_last = channels_last
        self.lr, self.betas, self.adam_eps = lr, tuple(betas), adam_eps
        self.opt_g = self.opt_d = None
        self.reset_optimizers()
        fp16 = amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.generator = generator or torch.Generator(self.device).manual_seed(0)
        self.skipped_steps = 0
        # Data parallel: every rank holds the same generator state and draws the *global* batch of
        # latents / mixing factors, keeping its interleaved share (the data stream shards the same
        # way), so N ranks x B compute exactly what 1 rank x N*B would, and resume works at any size.
        self.rank, self.world_size = rank, world_size
        self.cond_weight = cond_weight  # AC-GAN label-loss weight (official cond_weight 1.0)

    # -- optimizer state -------------------------------------------------------------------------------
    def _adam(self, module):
        kw = dict(lr=self.lr, betas=self.betas, eps=self.adam_eps)
        if self.device.type == "cuda":
            kw["foreach"] = True
        return torch.optim.Adam(unwrap(module).parameters(), **kw)

    def reset_optimizers(self) -> None:
        """Fresh Adam state (the official code resets it whenever floor(lod) or ceil(lod) changes)."""
        self.opt_g, self.opt_d = self._adam(self.G), self._adam(self.D)

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

    # -- the iteration ---------------------------------------------------------------------------------
    def _latents(self, n: int) -> torch.Tensor:
        z = torch.randn(n * self.world_size, unwrap(self.G).latent_size, device=self.device, generator=self.generator)
        return z[self.rank::self.world_size]

    def _labels(self, n: int) -> torch.Tensor:
        """Fake labels for the G step, uniform over the classes; drawn and sharded like the latents."""
        y = torch.randint(unwrap(self.G).num_classes, (n * self.world_size,), device=self.device,
                          generator=self.generator)
        return y[self.rank::self.world_size]

    def _mix(self, n: int) -> torch.Tensor:
        u = torch.rand(n * self.world_size, 1, 1, 1, device=self.device, generator=self.generator)
        return u[self.rank::self.world_size]

    def _allreduce_grads(self, params) -> None:
        """Average gradients over ranks in one flat all-reduce (once per optimizer step)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
        grads = [p.grad for p in params if p.grad is not None]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def _apply(self, loss, opt, scaler, params) -> bool:
        """Backward + optimizer step unless the gradients are non-finite. Returns True if applied."""
        opt.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            self._allreduce_grads(params)
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            applied = scaler.get_scale() >= before
        else:
            loss.backward()
            self._allreduce_grads(params)
            grads = [p.grad for p in params if p.grad is not None]
            applied = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
            if applied:
                opt.step()
        if not applied:
            self.skipped_steps += 1
            opt.zero_grad(set_to_none=True)
        return applied

    def __call__(self, reals: torch.Tensor, res_log2: int, alpha, labels: torch.Tensor | None = None) -> dict:
        return self.step(reals, res_log2, alpha, labels)

    def step(self, reals: torch.Tensor, res_log2: int, alpha, labels: torch.Tensor | None = None) -> dict:
        """One D, G and EMA step. `labels` [N] (class-conditional runs only): the reals' classes; the
        D step's fakes are made from them (official), the G step draws uniform fake labels."""
        G, D, dev = self.G, self.D, self.device
        if labels is not None:
            labels = labels.to(dev, non_blocking=True)
        cond = {} if labels is None else dict(labels=labels, cond_weight=self.cond_weight)
        reals = reals.to(dev, torch.float32, non_blocking=True)
        if self.channels_last:
            reals = reals.contiguous(memory_format=torch.channels_last)
        n = reals.shape[0]
        d_params = list(unwrap(D).parameters())
        g_params = list(unwrap(G).parameters())

        # D step
        unwrap(D).requires_grad_(True)
        with torch.no_grad(), _autocast(dev.type, self.amp_dtype):
            fakes = G(self._latents(n), res_log2, alpha, *([labels] if cond else []))
        mix = self._mix(n)
        d_loss, stats = d_loss_wgangp(D, reals, fakes, res_log2, alpha, mix=mix, lam=self.wgan_lambda,
                                      gamma=self.wgan_target, drift=self.drift, amp_dtype=self.amp_dtype,
                                      scaler=self.scaler_d, **cond)
        self._apply(d_loss, self.opt_d, self.scaler_d, d_params)

        # G step (D frozen so no parameter gradients are computed for it)
        unwrap(D).requires_grad_(False)
        z = self._latents(n)
        if cond:
            cond["labels"] = self._labels(n)
        with _autocast(dev.type, self.amp_dtype):
            fakes = G(z, res_log2, alpha, *([cond["labels"]] if cond else []))
        g_loss = g_loss_wgan(D, fakes, res_log2, alpha, amp_dtype=self.amp_dtype, stats=stats, **cond)
        self._apply(g_loss, self.opt_g, self.scaler_g, g_params)
        unwrap(D).requires_grad_(True)

        self.update_ema()
        stats["g_loss"] = g_loss.detach()
        return stats

    @torch.no_grad()
    def update_ema(self) -> None:
        """Gs = lerp(G, Gs, beta) for every parameter and buffer."""
        src = unwrap(self.G)
        torch._foreach_lerp_(list(self.Gs.parameters()), list(src.parameters()), 1.0 - self.ema_beta)
        for b_gs, b in zip(self.Gs.buffers(), src.buffers()):
            b_gs.copy_(b)

    # -- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"G": unwrap(self.G).state_dict(), "D": unwrap(self.D).state_dict(), "Gs": self.Gs.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                "generator": self.generator.get_state(), "skipped_steps": self.skipped_steps, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.G).load_state_dict(state["G"])
        unwrap(self.D).load_state_dict(state["D"])
        self.Gs.load_state_dict(state["Gs"])
        self.lr = state["lr"]
        self.reset_optimizers()
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        try:
            self.generator.set_state(state["generator"])
        except (RuntimeError, TypeError):  # e.g. a CPU run resumed on a GPU: another generator type
            import warnings
            warnings.warn("the checkpoint's latent generator belongs to another device type; latents are "
                          "reseeded, so this resume is not bit-exact", RuntimeWarning)
        self.skipped_steps = state["skipped_steps"]
