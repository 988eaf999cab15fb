"""pytest-benchmark configuration for progan_fast: which shapes, which device, how long per case.

On a GPU every case uses the shapes the paper model runs (DESIGN §2 channels, the 1-GPU batch
schedule, bf16, channels_last); `--bench-quick` / PROGAN_BENCH_QUICK=1 keeps a representative
subset so the GPU check script fits its time budget. Without a GPU the same cases run at tiny
shapes in fp32 as a smoke test (the whole `pytest bench/` takes well under 3 minutes on 2 cores).

Environment knobs (all optional):
  PROGAN_BENCH_QUICK=1        representative subset (GPU)
  PROGAN_BENCH_RES=8,128      resolutions for op and layer cases
  PROGAN_BENCH_STEP_RES=4,16  resolutions for training-step cases
  PROGAN_BENCH_COMPILE=0|1    torch.compile cases (default: on with a GPU, off on CPU)
  PROGAN_BENCH_CASE_S=0.2     time budget per op/layer case in seconds (step cases get 4x)
  PROGAN_BENCH_DEVICE=cpu     force the CPU profile on a GPU machine
  PROGAN_BENCH_THREADS=1      torch threads for the CPU profile
  PROGAN_BENCH_GRAPH_MAX_RES=256 the CUDA-graph step variant (fast_graph) up to this resolution
  PROGAN_BENCH_GRAPH_OPS=0|1  op cases also as CUDA-graph replays, modes fwd_graph and fwdbwd_graph (default: on with a GPU)
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import pytest
import torch

from . import env
from .paper import BATCH_1GPU, RESOLUTIONS, block_channels, prev_channels
from progan_fast.training.trainer import configure_cudnn

from .roofline import measure_ceilings

BACKENDS = ("ref", "compile", "triton", "cuda")


def _env_res(name):
    raw = os.environ.get(name)
    return tuple(int(r) for r in raw.split(",") if r.strip()) if raw else None


@dataclass
class Settings:
    device: torch.device
    quick: bool
    dtype: torch.dtype
    channels_last: bool
    fmap: dict
    op_resolutions: tuple
    step_resolutions: tuple
    compile: bool
    compile_resolutions: tuple       # op / layer resolutions that also get torch.compile cases
    compile_step_resolutions: tuple  # training-step resolutions that get the torch.compile variant
    compile_only: tuple | None       # op / layer names that get torch.compile cases (None: all)
    case_budget_s: float
    round_s: float                   # target duration of one timed round (amortizes the sync)
    min_rounds: int = 5
    max_rounds: int = 200
    cpu_batch: int = 4
    graph_max_res: int = 256         # CUDA-graph step variant up to this resolution
    graph_ops: bool = False          # op cases also timed as CUDA-graph replays (*_graph modes, GPU)
    extra_variants: bool = False     # fused_scale layer variants (every GPU run)
    notes: list = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def batch(self, res: int) -> int:
        return BATCH_1GPU[res] if self.on_gpu else self.cpu_batch

    def channels(self, res: int) -> int:
        return block_channels(res, **self.fmap)

    def prev_channels(self, res: int) -> int:
        return prev_channels(res, **self.fmap)

    def tensor(self, *shape, requires_grad=False, dtype=None) -> torch.Tensor:
        """Random input (never zeros), in the bench dtype and memory format."""
        t = torch.randn(*shape, device=self.device, dtype=dtype or self.dtype)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(requires_grad)

    def describe(self) -> dict:
        return {"device": str(self.device), "quick": self.quick, "dtype": str(self.dtype).replace("torch.", ""),
                "channels_last": self.channels_last, "fmap": self.fmap,
                "op_resolutions": list(self.op_resolutions), "step_resolutions": list(self.step_resolutions),
                "compile": self.compile, "case_budget_s": self.case_budget_s}


def make_settings(quick_flag: bool) -> Settings:
    forced = os.environ.get("PROGAN_BENCH_DEVICE")
    device = torch.device(forced if forced else ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = bool(quick_flag) or os.environ.get("PROGAN_BENCH_QUICK", "0") == "1"
    compile_env = os.environ.get("PROGAN_BENCH_COMPILE")
    budget_env = os.environ.get("PROGAN_BENCH_CASE_S")
    if device.type == "cuda":
        res = (8, 128) if quick else RESOLUTIONS
        s = Settings(device=device, quick=quick, dtype=torch.bfloat16, channels_last=True,
                     fmap=dict(fmap_base=8192, fmap_decay=1.0, fmap_max=512),
                     op_resolutions=res,
                     step_resolutions=(4, 16, 64, 256) if quick else RESOLUTIONS,
                     compile=compile_env != "0",
                     compile_resolutions=(128,) if quick else RESOLUTIONS,
                     compile_step_resolutions=(16,) if quick else RESOLUTIONS,
                     # compiling costs seconds per case: the quick run compiles the fused epilogues
                     compile_only=(("bias_act_pixel_norm", "minibatch_stddev", "fade_reals", "g_conv", "d_down")
                                   if quick else None),
                     # fused_scale variants even in quick runs: the official default, 44 % of the
                     # up/down layers' FLOPs; whether it is also faster here decides the models' default
                     case_budget_s=0.1 if quick else 0.5, round_s=2e-3, extra_variants=True)
    else:  # tiny CPU smoke profile: 8 channels, batch 4, 4 and 8 px
        s = Settings(device=device, quick=True, dtype=torch.float32, channels_last=False,
                     fmap=dict(fmap_base=8192, fmap_decay=1.0, fmap_max=8),
                     op_resolutions=(4, 8), step_resolutions=(4, 8),
                     compile=compile_env == "1", compile_resolutions=(8,), compile_step_resolutions=(4,),
                     compile_only=("bias_act_pixel_norm", "g_conv"),
                     case_budget_s=0.03, round_s=1e-3, min_rounds=3, max_rounds=50)
    s.op_resolutions = _env_res("PROGAN_BENCH_RES") or s.op_resolutions
    s.step_resolutions = _env_res("PROGAN_BENCH_STEP_RES") or s.step_resolutions
    if _env_res("PROGAN_BENCH_RES") and not s.quick:
        s.compile_resolutions = s.op_resolutions
    if budget_env:
        s.case_budget_s = float(budget_env)
    s.graph_ops = s.on_gpu and os.environ.get("PROGAN_BENCH_GRAPH_OPS", "1") != "0"
    if os.environ.get("PROGAN_BENCH_GRAPH_MAX_RES"):
        s.graph_max_res = int(os.environ["PROGAN_BENCH_GRAPH_MAX_RES"])
    return s


def configure_backends(settings: Settings) -> None:
    """cuDNN as the trainer runs it (benchmark mode on CUDA; PROGAN_BENCH_CUDNN_BENCHMARK=0 keeps
    cuDNN's heuristics). Set when the first benchmark asks for its settings, not at collection, so a
    combined `pytest tests bench` leaves the tests' cuDNN alone; env.py records the flag."""
    if os.environ.get("PROGAN_BENCH_CUDNN_BENCHMARK", "1") != "0":
        configure_cudnn(settings.device)


def pytest_addoption(parser):
    group = parser.getgroup("progan_fast bench")
    group.addoption("--bench-quick", action="store_true", default=False,
                    help="representative subset of shapes (also PROGAN_BENCH_QUICK=1)")


def pytest_configure(config):
    config._progan_bench = make_settings(config.getoption("--bench-quick", default=False))
    config._progan_ceilings = None


def cpu_threads() -> int:
    """Torch threads of the CPU profile (PROGAN_BENCH_THREADS, default 1)."""
    return int(os.environ.get("PROGAN_BENCH_THREADS", "1"))


@contextlib.contextmanager
def bench_threads(settings: Settings):
    """CPU profile: one torch thread (PROGAN_BENCH_THREADS) while timing, restored afterwards, so a
    combined `pytest tests bench` run leaves the other suites alone. Tiny CPU shapes gain nothing
    from threads, and on a shared machine an OpenMP barrier waiting for a busy core turns 50 us
    into 20 ms."""
    if settings.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _bench_threads(request):
    with bench_threads(request.config._progan_bench):
        yield


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    configure_backends(request.config._progan_bench)
    return request.config._progan_bench


@pytest.fixture(scope="session")
def ceilings(request, settings) -> dict:
    """Device ceilings measured once per run, in the same process and thread setting as the cases."""
    with bench_threads(settings):
        c = measure_ceilings(settings.device)
    c["torch_threads"] = cpu_threads() if settings.device.type == "cpu" else None
    request.config._progan_ceilings = c
    return c


# The order a time-limited stage runs the modes in: forward+backward first (impl='auto' is derived
# from it), then forward, then the CUDA-graph replays; a stage cut short loses the last ones.
MODE_ORDER = ("fwdbwd", "fwd", "fwdbwd_graph", "fwd_graph")


def backend_cases(settings: Settings, names_at, graph_modes: bool = False, extra_backends: tuple = ()) -> list:
    """pytest params (name, res, mode, backend) for every bench resolution, every name `names_at(res)`
    yields there, fwd and fwdbwd (and fwd_graph, fwdbwd_graph: the same work replayed from a CUDA
    graph, where `graph_modes` and the settings ask for it; not for compile), and every backend.
    Cases run mode by mode (MODE_ORDER), every resolution within a mode; torch.compile cases the
    settings exclude are dropped and the rest move to the end of the run, so a stage that runs out
    of time loses compile cases (seconds each to build) before anything else."""
    modes = ("fwd", "fwdbwd") + (("fwd_graph", "fwdbwd_graph") if graph_modes and settings.graph_ops else ())
    keep, compiled = [], []
    for mode in sorted(modes, key=MODE_ORDER.index):
        for res in settings.op_resolutions:
            for name in names_at(res):
                for backend in BACKENDS + tuple(extra_backends):
                    if mode.endswith("_graph") and backend == "compile":
                        continue
                    case = pytest.param((name, res, mode, backend), id=f"{name}-r{res}-{mode}-{backend}")
                    if backend != "compile":
                        keep.append(case)
                    elif res in settings.compile_resolutions and (
                            settings.compile_only is None or name in settings.compile_only):
                        compiled.append(case)
    return keep + compiled


def skip_unless_backend(settings: Settings, backend: str, op: str) -> None:
    """Skip (with the reason) when `backend` cannot run `op` on the bench device."""
    from progan_fast import ops
    if backend == "ref":
        return
    if backend == "compile":
        if not settings.compile:
            pytest.skip("torch.compile cases are off here (PROGAN_BENCH_COMPILE=1 turns them on)")
        return
    dev = settings.device.type
    if backend in ("triton", "igemm") and dev == "cpu" and not ops.triton_interpret():
        pytest.skip(f"{backend} on CPU needs TRITON_INTERPRET=1")
    if backend == "cuda" and dev != "cuda":
        pytest.skip("the cuda backend needs a CUDA device")
    if backend not in ops.available_backends():
        pytest.skip(f"backend {backend!r} unavailable: {ops.backend_error(backend)}")
    try:
        ops.resolve(op, backend, dev)
    except (NotImplementedError, RuntimeError) as exc:
        pytest.skip(str(exc))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    info = env.collect()
    info["command"] = " ".join(["pytest", *config.invocation_params.args])
    output_json["progan_fast"] = {
        "env": info,
        "ceilings": config._progan_ceilings,
        "settings": config._progan_bench.describe(),
    }
