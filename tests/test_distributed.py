"""torchrun on CPU (gloo): N ranks x B == 1 rank x N*B, and resume with another world size."""
import subprocess
import sys

import pytest
import torch

TINY = ["--fmap-base", "32", "--fmap-max", "8", "--latent-size", "8", "--stable-kimg", "0.032", "--fade-kimg",
        "0.032", "--minibatch", "4:8,8:8,16:8,32:8", "--tick-kimg", "0.032", "--grid-size", "4", "--no-progress",
        "--device", "cpu"]


def _train(nproc, *args):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    r = subprocess.run([*launcher, "-m", "progan_fast.train", *TINY, *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoint-latest.pt", weights_only=False)
    return ckpt, {f"{n}.{k}": v for n in ("G", "D", "Gs") for k, v in ckpt["step"][n].items()}


def _assert_close(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("single") / "run"
    _train(1, "--run-dir", str(d), "--total-kimg", "0.096")
    return d


def test_two_ranks_match_one_rank_with_the_global_batch(single, tmp_path):
    d = tmp_path / "ddp"
    r = _train(2, "--run-dir", str(d), "--total-kimg", "0.096")
    assert "x2 ranks" in r.stderr
    ckpt2, w2 = _weights(d)
    ckpt1, w1 = _weights(single)
    assert ckpt2["cur_nimg"] == ckpt1["cur_nimg"] == 96
    _assert_close(w2, w1)


def test_resume_with_another_world_size(single, tmp_path):
    d = tmp_path / "mixed"
    _train(2, "--run-dir", str(d), "--total-kimg", "0.048")  # stops mid-fade
    _train(1, "--resume", str(d), "--total-kimg", "0.096")
    _, w_mixed = _weights(d)
    _, w1 = _weights(single)
    _assert_close(w_mixed, w1)


def _disagree_worker(rank, init_file, results):
    import torch.distributed as dist
    from progan_fast.training.distributed import check_same_config
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        check_same_config({"fmap_max": 16 if rank == 0 else 32})
        results[rank] = "no error"
    except ValueError as exc:
        results[rank] = str(exc)
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_configs_fail_clearly(tmp_path):
    import torch.multiprocessing as mp
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_disagree_worker, args=(str(tmp_path / "init"), results), nprocs=2)
        assert all("ranks disagree on the training configuration" in results[r] for r in (0, 1)), dict(results)


def test_conditional_two_ranks_match_one_rank(tmp_path):
    """Labels shard like the latents: reals' labels through the data stream, fake labels through the
    step's generator (global draw, interleaved share)."""
    cond = ["--cond", "--cond-head", "projection", "--total-kimg", "0.048"]
    _train(1, "--run-dir", str(tmp_path / "one"), *cond)
    _train(2, "--run-dir", str(tmp_path / "two"), *cond)
    (c1, w1), (c2, w2) = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert c1["cur_nimg"] == c2["cur_nimg"] == 48 and "embed.weight" in c1["step"]["D"]
    _assert_close(w2, w1)


_TEARDOWN_RANK = """
import os, sys, torch
from progan_fast.training import distributed
torch.set_num_threads(1)
threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
distributed.init_from_env("cpu")
torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])  # as the trainer does after the group starts
distributed.barrier()
during = threads()
distributed.shutdown()
print(before, during, threads())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads through /proc")
def test_shutdown_joins_the_gloo_threads():
    """destroy_process_group must really end the group: its gloo worker threads joined before the
    interpreter finalizes. Otherwise a worker still releasing its last work item at exit aborts the
    process after a finished run ("terminate called without an active exception", exit -6, now and
    then). Importing torch._dynamo after the group starts (any optimizer does) kept it alive."""
    import os
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _TEARDOWN_RANK], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        before, during, after = map(int, out.split())
        assert during > before, "the group started no threads: nothing was checked"
        assert after == before, f"threads: {before} before the group, {during} with it, {after} after shutdown"
