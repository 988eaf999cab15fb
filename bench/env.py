"""Who ran a benchmark where: device, library versions, git commit, date, command. Saved beside
every result so numbers are only ever compared with numbers from the same kind of machine."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys


def _git(*args) -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def device_class(name: str) -> str:
    """A short, stable class for a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100', any CPU -> 'cpu'."""
    if not name or name.lower().startswith("cpu"):
        return "cpu"
    m = re.search(r"\b(GB\d+|[ABHLTV]\d+[A-Z]?|RTX ?\w*\d+|A\d+G?)\b", name, re.IGNORECASE)
    slug = m.group(1) if m else name
    return "nvidia-" + re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-")


def collect() -> dict:
    import torch
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        # a copy of the tree without .git (a remote GPU machine) records PROGAN_GIT_COMMIT instead
        "git_commit": _git("rev-parse", "HEAD") or os.environ.get("PROGAN_GIT_COMMIT") or None,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        import progan_fast
        info["progan_fast"] = progan_fast.__version__
        info["backends"] = progan_fast.ops.available_backends()
        from progan_fast.ops import _backend
        info["auto_table"] = os.path.relpath(_backend.AUTO_TABLE_PATH)  # which table impl='auto' followed
        # which Triton conv layer the "triton" eq_conv2d cases measured (progan_fast/triton/__init__.py)
        info["triton_conv"] = os.environ.get("PROGAN_FAST_TRITON_CONV", "epilogue")
    except Exception as exc:
        info["progan_fast"] = f"unavailable: {exc}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device"] = props.name
        info["device_capability"] = f"{props.major}.{props.minor}"
        info["device_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["driver"] = _nvidia_smi_driver()
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"
        info["torch_threads"] = torch.get_num_threads()
    info["device_class"] = device_class(info["device"])
    return info


def _nvidia_smi_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        return out.splitlines()[0] if out else None
    except Exception:
        return None
