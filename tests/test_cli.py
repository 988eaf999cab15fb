"""The command lines as a user meets them: a tiny real run, interrupt + resume, generation, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

TINY = ["--fmap-base", "32", "--fmap-max", "8", "--latent-size", "8", "--stable-kimg", "0.032",
        "--fade-kimg", "0.032", "--minibatch", "4:8,8:8,16:8,32:8", "--tick-kimg", "0.032", "--grid-size", "4",
        "--no-progress", "--device", "cpu"]


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    r = _run(["progan_fast.train", "--amp", "--outdir", str(out), "--total-kimg", "0.096", *TINY])
    assert r.returncode == 0, r.stderr
    (run_dir,) = out.iterdir()
    return run_dir


def test_train_writes_run_outputs(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "log.jsonl", "checkpoint-latest.pt", "reals.png"} <= names
    assert any(n.startswith("fakes") and n.endswith(".png") for n in names)
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["resolution"] == 32 and cfg["num_channels"] == 1 and cfg["amp"] is True
    rec = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    assert rec[-1]["kimg"] >= 0.096 and all(np.isfinite(r["d_loss"]) for r in rec)


def test_generate_writes_uint8_nhwc(trained_run, tmp_path):
    out, png = tmp_path / "s.npz", tmp_path / "g.png"
    r = _run(["progan_fast.generate", "--ckpt", str(trained_run), "--n", "5", "--out", str(out), "--grid", str(png),
              "--seed", "3"])
    assert r.returncode == 0, r.stderr
    images = np.load(out)["images"]
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[0] == 5 and images.shape[3] == 1
    assert images.std() > 0 and png.exists()
    again = tmp_path / "s2.npz"
    _run(["progan_fast.generate", "--ckpt", str(trained_run), "--n", "5", "--out", str(again), "--seed", "3"])
    assert np.array_equal(np.load(again)["images"], images)  # seeds reproduce


def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "progan_fast.train", "--run-dir", str(run_dir), "--total-kimg", "0.5", *TINY]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    r = _run(["progan_fast.train", "--resume", str(run_dir), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])["kimg"] >= 0.5


@pytest.mark.parametrize("args,match", [
    (["--data", "/nonexistent/imgs"], "does not exist"),
    (["--resolution", "48"], "power of two"),
    (["--resolution", "64"], "exceeds the dataset's resolution 32"),
    (["--amp", "--amp-dtype", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device"),
    (["--cuda-graph-max-res", "48"], "--cuda-graph-max-res: resolution must be a power of two"),
    (["--minibatch", "4-128"], "RES:VALUE"),
    (["--ema-beta", "1.5"], "ema-beta"),
    (["--resume", "/nonexistent/run"], "no checkpoint-latest.pt"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, match):
    r = _run(["progan_fast.train", "--outdir", str(tmp_path), *args])
    assert r.returncode == 2
    assert match in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_resume_with_another_config_is_refused(trained_run):
    r = _run(["progan_fast.train", "--resume", str(trained_run), "--fmap-max", "16"])
    assert r.returncode == 2 and "different configuration" in r.stderr and "fmap_max" in r.stderr


def test_corrupt_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "checkpoint-latest.pt"
    bad.write_bytes(b"not a checkpoint")
    r = _run(["progan_fast.generate", "--ckpt", str(tmp_path), "--out", str(tmp_path / "x.npz")])
    assert r.returncode == 2 and "unreadable" in r.stderr


def test_help_explains():
    r = _run(["progan_fast.train", "--help"])
    assert r.returncode == 0 and "--amp" in r.stdout and "--resume" in r.stdout and "FashionMNIST" in r.stdout



@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backend_on_cpu_is_a_one_line_error(backend, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = _run(["progan_fast.train", "--backend", backend, "--outdir", str(tmp_path), *TINY], env=env)
    assert r.returncode == 2, r.stderr
    assert f"error: --backend {backend} needs a CUDA device" in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # refused before a run directory is made


def test_cuda_graph_is_left_to_the_device_unless_given():
    """No flag: the config keeps None (the trainer turns capture on for one CUDA device, with an eager
    fallback); --no-cuda-graph / --cuda-graph are stored as given."""
    import torch
    from progan_fast.train import _given_to_config, build_parser, resolve_config
    given = lambda *argv: _given_to_config(vars(build_parser().parse_args(list(argv))))  # noqa: E731
    assert "cuda_graph" not in given() and resolve_config(given(), torch.device("cpu")).cuda_graph is None
    assert given("--no-cuda-graph")["cuda_graph"] is False and given("--cuda-graph")["cuda_graph"] is True
