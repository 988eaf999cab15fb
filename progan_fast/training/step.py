"""One PGGAN training iteration: D step (WGAN-GP) -> G step -> G EMA update.

Optimizers: Adam(beta1=0, beta2=0.99, eps=1e-8) for G and D, each with its own loss scaler under
fp16 (official: separate loss scaling per optimizer). A step whose gradients are not finite is
skipped (the optimizer is not stepped) and counted, under every precision.

No host synchronization: the skip is decided on the device. The fused Adam kernel takes a
`found_inf` flag and leaves parameters, moments and step count untouched when it is set (under fp16
the GradScaler hands it the same flag), and the skip counter is a device tensor read only when
asked. That is what lets `cuda_graph=True` capture the whole iteration (D step with the penalty's
double backward, G step, EMA) in one CUDA graph per phase shape and replay it: at 4-16 px the step is
bound by kernel launches, not by the GPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .. import ops
from .loss import _autocast, d_loss_wgangp, g_loss_wgan

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def unwrap(module):
    """The plain module under a DDP / torch.compile wrapper."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or getattr(module, "_orig_mod")
    return module


@dataclass
class _GraphEntry:
    """A captured iteration for one phase shape: the graph and its static input/output tensors."""
    warm: int = 0
    graph: "torch.cuda.CUDAGraph | None" = None
    reals: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


def default_cuda_graph(device: torch.device, world_size: int) -> bool:
    """Whether a run that does not say captures its steps: on one CUDA device. The eager step is
    launch-bound at every size measured: replaying it as a graph measured 9.8x the eager step's img/s
    at 4 px and 1.6x at 16 px (H100, bench/results/20261126T161220_nvidia-h100_cbcea2b9.md), 1.5x at
    64 px and 3.2x at 256 px (bench/results/20261126T175729_nvidia-h100_fac0fde9.md); the gradient all-reduce
    of a multi-process run is not captured."""
    return torch.device(device).type == "cuda" and world_size == 1


def _lay_out_like_params(*optimizers) -> None:
    """Give each parameter's optimizer state the parameter's memory layout. A checkpoint keeps the
    strides it was saved with (an NCHW CPU run resumed channels_last on a GPU, or back), and CUDA's
    fused Adam requires params, grads and moments to share one layout."""
    for opt in optimizers:
        for param, st in opt.state.items():
            for key, value in st.items():
                if (isinstance(value, torch.Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    st[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class TrainStep:
    """Holds G, D, Gs (EMA of G), the optimizers and loss scalers; `step(reals, res_log2, alpha)`."""

    def __init__(self, G, D, *, lr: float = 1e-3, betas=(0.0, 0.99), adam_eps: float = 1e-8, amp_dtype=None,
                 ema_beta: float = 0.999, wgan_lambda: float = 10.0, wgan_target: float = 1.0,
                 drift: float = 1e-3, channels_last: bool = False, device=None, Gs=None,
                 generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1,
                 cuda_graph: bool = False, graph_max_res_log2: int = 8, graph_warmup: int = 2,
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
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        if cuda_graph and world_size > 1:
            raise ValueError("cuda_graph=True is single-process only for now (the gradient all-reduce is not "
                             "captured); run without it under torchrun")
        self.cuda_graph, self.graph_max_res_log2, self.graph_warmup = cuda_graph, graph_max_res_log2, graph_warmup
        self._graphs: dict[tuple, _GraphEntry] = {}
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        self._one = torch.ones((), dtype=torch.float32, device=self.device)
        self.opt_g = self.opt_d = None
        self.reset_optimizers()
        fp16 = amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.generator = generator or torch.Generator(self.device).manual_seed(0)
        # Data parallel: every rank holds the same generator state and draws the *global* batch of
        # latents / mixing factors, keeping its interleaved share (the data stream shards the same
        # way), so N ranks x B compute exactly what 1 rank x N*B would, and resume works at any size.
        self.rank, self.world_size = rank, world_size
        self.cond_weight = cond_weight  # AC-GAN label-loss weight (official cond_weight 1.0)

    # -- optimizer state -------------------------------------------------------------------------------
    def _adam(self, module):
        """Fused Adam: one kernel for all parameters, and it honours `found_inf` on the device. Under
        CUDA graphs it is capturable and its learning rate is a device tensor (set_lr fills it)."""
        lr = torch.tensor(self.lr, dtype=torch.float32, device=self.device) if self.cuda_graph else self.lr
        return torch.optim.Adam(unwrap(module).parameters(), lr=lr, betas=self.betas, eps=self.adam_eps,
                                fused=True, capturable=self.cuda_graph)

    def reset_optimizers(self) -> None:
        """Fresh Adam state (the official code resets it whenever floor(lod) or ceil(lod) changes).
        Captured graphs point at the old state, so they are dropped."""
        self._graphs.clear()
        self.opt_g, self.opt_d = self._adam(self.G), self._adam(self.D)

    def set_lr(self, lr: float) -> None:
        lr = float(lr)
        if lr != self.lr:
            self.lr = lr
            self._sync_lr()

    def _sync_lr(self) -> None:
        """Every param group's lr := self.lr (a device tensor, filled in place, when graphs are on)."""
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                if self.cuda_graph:
                    lr = group["lr"]
                    # A float, or a tensor loaded from a checkpoint (map_location="cpu"): a fresh
                    # device tensor, which captured graphs do not know, so they are dropped.
                    if not isinstance(lr, torch.Tensor) or lr.device.type != self.device.type:
                        group["lr"] = torch.tensor(self.lr, dtype=torch.float32, device=self.device)
                        self._graphs.clear()
                    group["lr"].fill_(self.lr)
                else:
                    group["lr"] = self.lr

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for non-finite gradients (reading it synchronizes with the device)."""
        return int(self._skipped)

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped.fill_(int(value))

    # -- the iteration ---------------------------------------------------------------------------------
    def _shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's interleaved share of a draw made for the global batch (see __init__)."""
        return t[self.rank::self.world_size]

    def _latents(self, n: int) -> torch.Tensor:
        return self._shard(torch.randn(n * self.world_size, unwrap(self.G).latent_size, device=self.device,
                                       generator=self.generator))

    def _labels(self, n: int) -> torch.Tensor:
        """Fake labels for the G step, uniform over the classes; drawn and sharded like the latents."""
        return self._shard(torch.randint(unwrap(self.G).num_classes, (n * self.world_size,), device=self.device,
                                         generator=self.generator))

    def _mix(self, n: int) -> torch.Tensor:
        return self._shard(torch.rand(n * self.world_size, 1, 1, 1, device=self.device, generator=self.generator))

    def _allreduce_grads(self, grads) -> None:
        """Average gradients over ranks in one flat all-reduce (once per optimizer step)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    @staticmethod
    def _grads(opt) -> list:
        """The gradients the backward just produced, for the parameters `opt` updates."""
        return [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]

    def _apply(self, loss, opt, scaler) -> None:
        """Backward + optimizer step; a step with non-finite gradients is skipped on the device and
        counted in self._skipped (no host synchronization either way)."""
        opt.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            self._allreduce_grads(self._grads(opt))
            before = scaler._scale.clone()  # the scale tensor; get_scale() would synchronize
            scaler.step(opt)  # fused Adam: the scaler passes grad_scale and found_inf to the kernel
            scaler.update()
            self._skipped += (scaler._scale < before).to(torch.int64)
        else:
            loss.backward()
            grads = self._grads(opt)
            self._allreduce_grads(grads)
            found_inf = torch.zeros((), dtype=torch.float32, device=self.device)
            if grads:  # sets found_inf to 1 if any entry is inf/nan (multiplies by 1: grads unchanged)
                torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, self._one)
            opt.found_inf = found_inf
            opt.step()
            self._skipped += found_inf.to(torch.int64)

    def __call__(self, reals: torch.Tensor, res_log2: int, alpha, labels: torch.Tensor | None = None) -> dict:
        return self.step(reals, res_log2, alpha, labels)

    def _prepare(self, reals: torch.Tensor) -> torch.Tensor:
        reals = reals.to(self.device, torch.float32, non_blocking=True)
        if self.channels_last:
            reals = reals.contiguous(memory_format=torch.channels_last)
        return reals

    def step(self, reals: torch.Tensor, res_log2: int, alpha, labels: torch.Tensor | None = None) -> dict:
        """One iteration. Returns detached 0-d stat tensors (d_loss, penalty, scores, g_loss).
        `labels` [N] (class-conditional runs only): the reals' classes; the D step's fakes are made
        from them (official), the G step draws uniform fake labels."""
        reals = self._prepare(reals)
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True)
        if self.cuda_graph and res_log2 <= self.graph_max_res_log2:
            return self._graphed_step(reals, res_log2, alpha, labels)
        return self._step(reals, res_log2, alpha, labels)

    def _step(self, reals: torch.Tensor, res_log2: int, alpha, labels: torch.Tensor | None = None) -> dict:
        G, D, dev = self.G, self.D, self.device
        cond = {} if labels is None else dict(labels=labels, cond_weight=self.cond_weight)
        n = reals.shape[0]

        # D step
        with torch.no_grad(), _autocast(dev.type, self.amp_dtype):
            fakes = G(self._latents(n), res_log2, alpha, *([labels] if cond else []))
        mix = self._mix(n)
        d_loss, stats = d_loss_wgangp(D, reals, fakes, res_log2, alpha, mix=mix, lam=self.wgan_lambda,
                                      gamma=self.wgan_target, drift=self.drift, amp_dtype=self.amp_dtype,
                                      scaler=self.scaler_d, **cond)
        self._apply(d_loss, self.opt_d, self.scaler_d)

        # G step (D frozen so no parameter gradients are computed for it; unfrozen even if it fails)
        unwrap(D).requires_grad_(False)
        try:
            z = self._latents(n)
            if cond:
                cond["labels"] = self._labels(n)
            with _autocast(dev.type, self.amp_dtype):
                fakes = G(z, res_log2, alpha, *([cond["labels"]] if cond else []))
            g_loss = g_loss_wgan(D, fakes, res_log2, alpha, amp_dtype=self.amp_dtype, stats=stats, **cond)
            self._apply(g_loss, self.opt_g, self.scaler_g)
        finally:
            unwrap(D).requires_grad_(True)

        self.update_ema()
        stats["g_loss"] = g_loss.detach()
        return stats

    # -- CUDA graphs -----------------------------------------------------------------------------------
    @staticmethod
    def _graph_key(reals: torch.Tensor, res_log2: int, alpha) -> tuple:
        """What one captured graph is specific to: resolution, batch shape, layout, and whether the
        fade-in blend runs (key[-1])."""
        from ..models import _fading
        return res_log2, tuple(reals.shape), reals.stride(), _fading(alpha)

    def _graphed_step(self, reals: torch.Tensor, res_log2: int, alpha, labels=None) -> dict:
        """Eager warm-up steps (on a side stream: lazy optimizer/scaler state, cuDNN and Triton autotuning),
        then one capture per (resolution, batch, fading, layout) and replays. Every call is a real
        training step; the capture's own step is executed by its first replay. During a fade the
        warm-ups, the capture and the replays all read alpha from the entry's device scalar, so
        they run the same code: a kernel specialized for a Python-float alpha in the warm-up would
        leave the capture's tensor-alpha variant to be compiled and loaded mid-capture, which fails."""
        key = self._graph_key(reals, res_log2, alpha)
        fading = key[-1]
        entry = self._graphs.get(key)
        if entry is None:
            self._graphs = {k: v for k, v in self._graphs.items() if k[0] == res_log2}  # older phases: free
            entry = self._graphs[key] = _GraphEntry()
            entry.alpha = torch.ones((), dtype=torch.float32, device=self.device)
        if fading and isinstance(alpha, torch.Tensor):
            entry.alpha.copy_(alpha)
        elif fading:
            entry.alpha.fill_(float(alpha))
        step_alpha = entry.alpha if fading else 1.0
        if entry.graph is None and entry.warm < self.graph_warmup:
            entry.warm += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), ops.graph_mode():  # the backends the capture will run
                stats = self._step(reals, res_log2, step_alpha, labels)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return stats
        if entry.graph is None:
            try:
                self._capture(entry, reals, res_log2, step_alpha, labels)
            except Exception as exc:
                # No eager fallback: a failed capture can leave the capture stream current and the
                # registered generators in capture mode, so the process cannot safely go on.
                raise RuntimeError(
                    f"cuda_graph: capturing the {2 ** res_log2} px step failed ({type(exc).__name__}: {exc}). "
                    "Capture is on by default on one GPU: train with --no-cuda-graph (continue this run "
                    "from its last checkpoint with --resume RUN_DIR --no-cuda-graph), or with "
                    f"--cuda-graph-max-res below {2 ** res_log2}") from exc
        entry.reals.copy_(reals)
        if labels is not None:
            entry.labels.copy_(labels)
        entry.graph.replay()
        return {k: v.clone() for k, v in entry.stats.items()}

    def capture(self, reals: torch.Tensor, res_log2: int, alpha, labels: torch.Tensor | None = None):
        """Warm up and capture this phase's iteration now (each warm-up is a real step); returns a
        callable that replays it on the captured inputs and returns the static stats (benchmarks)."""
        if not self.cuda_graph:
            raise ValueError("capture() needs TrainStep(cuda_graph=True)")
        reals = self._prepare(reals)
        labels = None if labels is None else labels.to(self.device)
        key = self._graph_key(reals, res_log2, alpha)
        while key not in self._graphs or self._graphs[key].graph is None:
            self._graphed_step(reals, res_log2, alpha, labels)
        entry = self._graphs[key]

        def replay() -> dict:
            entry.graph.replay()
            return entry.stats
        return replay

    def _capture(self, entry: "_GraphEntry", reals, res_log2: int, alpha, labels=None) -> None:
        """Capture one iteration on static copies of the inputs; `alpha` is the entry's device scalar
        during a fade, else 1.0."""
        entry.reals = reals.clone(memory_format=torch.preserve_format)
        entry.labels = None if labels is None else labels.clone()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)  # latents and mixing factors advance per replay
        with torch.cuda.graph(graph), ops.graph_mode():  # auto ranks backends by device time in a graph
            entry.stats = self._step(entry.reals, res_log2, alpha, entry.labels)
        entry.graph = graph

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
        _lay_out_like_params(self.opt_g, self.opt_d)
        self._sync_lr()  # the saved groups may carry the lr in the other form (float vs tensor)
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        try:
            self.generator.set_state(state["generator"])
        except (RuntimeError, TypeError):  # e.g. a CPU run resumed on a GPU: another generator type
            import warnings
            warnings.warn("the checkpoint's latent generator belongs to another device type; latents are "
                          "reseeded, so this resume is not bit-exact", RuntimeWarning)
        self.skipped_steps = state["skipped_steps"]
