"""DaliStream: BatchStream's order, with decode / mirror / normalize done by an NVIDIA DALI pipeline.

Optional: `pip install nvidia-dali-cuda130` (the `dali` extra). DALI does the per-pixel work:
  * raw uint8 levels (in memory or memory-mapped .npy): the selected images go in through
    fn.external_source, then (on GPU: copied to the device) fn.crop_mirror_normalize does the flip
    and x / 127.5 - 1 in one pass, writing NCHW, or NHWC (= channels_last) when asked;
  * JPEG/PNG levels of a dataset directory: the encoded bytes go in through fn.external_source and
    fn.decoders.image decodes them, on the GPU (device="mixed", nvJPEG) when the stream is on CUDA,
    on the CPU otherwise.
The sample order, the mirror flags, sharding and resume are BatchStream's own (the same
(seed, epoch, cursor) plan), so this stream returns the same images in the same order as the
plain-PyTorch one, state_dict()s are interchangeable, and resume is exact. DALI's reader-side sharding
(shard_id / num_shards) is not used: the shared plan already gives every rank a disjoint shard with the
same number of batches.

One pipeline is alive at a time, built for the current (level, batch size, storage); a phase change
(new resolution or batch size) deletes it and builds the next, so memory does not grow over a run.
The pipeline runs synchronously (no prefetch across calls): each next_batch decodes its own batch.
"""
from __future__ import annotations

import gc
import os

import numpy as np
import torch

from .loader import BatchStream

__all__ = ["DaliStream", "dali_available", "make_batch_stream", "LOADERS"]

LOADERS = ("auto", "torch", "dali")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def make_batch_stream(loader: str, dataset, **kw) -> BatchStream:
    """The trainer's stream for --loader: 'torch' (BatchStream), 'dali' (DaliStream), or 'auto' =
    DALI when it is installed and the device is CUDA, else torch."""
    if loader not in LOADERS:
        raise ValueError(f"--loader must be one of {', '.join(LOADERS)}, got {loader!r}")
    device = torch.device(kw.get("device", "cpu"))
    if loader == "auto":
        loader = "dali" if device.type == "cuda" and dali_available() else "torch"
    if loader == "dali":
        if not dali_available():
            raise ValueError("--loader dali: NVIDIA DALI is not installed; `pip install nvidia-dali-cuda130` "
                             "(or `pip install progan_fast[dali]`), or use --loader torch")
        return DaliStream(dataset, **kw)
    return BatchStream(dataset, **kw)


class DaliStream(BatchStream):
    """BatchStream with DALI doing decode + mirror + normalize; same constructor and interface.

    num_threads: DALI CPU worker threads (default min(4, CPUs)).
    """

    def __init__(self, dataset, *, num_threads: int | None = None, **kw):
        super().__init__(dataset, **kw)
        import nvidia.dali  # noqa: F401  (fail here, not at the first batch)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DaliStream runs on cpu or cuda, got {self.device}")
        self.num_threads = num_threads or min(4, os.cpu_count() or 1)
        self._pipe = None
        self._pipe_key = None
        self._copied = None  # CUDA event: our copy out of DALI's output buffer has run
        self.pipelines_built = 0  # for tests: one per phase change, never more

    # --------------------------------------------------------------------------------- pipelines

    def _storage(self, res: int) -> str:
        storage = getattr(self.dataset, "storage", None)
        return "raw" if storage is None else ("raw" if storage[res] == "raw" else "encoded")

    def _pipeline(self, res: int, batch_size: int, kind: str):
        key = (res, batch_size, kind)
        if self._pipe_key == key:
            return self._pipe
        self.close()  # drop the previous phase's pipeline (and its buffers) before building the next
        from nvidia.dali import fn, pipeline_def, types

        on_gpu = self.device.type == "cuda"
        gray = self.dataset.num_channels == 1
        out_dtype = types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
        layout = "HWC" if self.channels_last else "CHW"  # NHWC memory = channels_last, no extra copy
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if on_gpu else None

        @pipeline_def(batch_size=batch_size, num_threads=self.num_threads, device_id=device_id,
                      exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
        def pipe():
            data = fn.external_source(name="images", dtype=types.UINT8, layout=None if kind == "encoded" else "CHW")
            mirror = fn.external_source(name="mirror", dtype=types.INT32)
            if kind == "encoded":
                images = fn.decoders.image(data, device="mixed" if on_gpu else "cpu",
                                           output_type=types.GRAY if gray else types.RGB)
            else:
                images = data.gpu() if on_gpu else data
            return fn.crop_mirror_normalize(images, mirror=mirror, mean=127.5, std=127.5, dtype=out_dtype,
                                            output_layout=layout)

        p = pipe()
        p.build()
        self._pipe, self._pipe_key = p, key
        self.pipelines_built += 1
        return p

    # --------------------------------------------------------------------------------- batches

    def next_batch(self, res: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, C, res, res] in [-1, 1], labels int64 [B]: the same samples as BatchStream."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        level, idx, flips = self._take(res, batch_size)
        mirror = (flips.numpy() if flips is not None else np.zeros(batch_size, bool)).astype(np.int32)

        kind = self._storage(res)
        p = self._pipeline(res, batch_size, kind)
        if kind == "encoded":
            p.feed_input("images", [level.encoded(int(i)) for i in idx])
        else:
            p.feed_input("images", level.numpy()[idx.numpy()], layout="CHW")  # gather: one copy, no decode
        p.feed_input("mirror", mirror)
        if self._copied is not None:  # DALI may reuse the buffer our last copy (on torch's stream) reads
            self._copied.synchronize()
        (out,) = p.run()

        c = self.dataset.num_channels
        on_gpu = self.device.type == "cuda"
        dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        nhwc = self.channels_last
        shape = (batch_size, res, res, c) if nhwc else (batch_size, c, res, res)
        x = torch.empty(shape, dtype=dtype, device=self.device)
        stream = torch.cuda.current_stream(self.device) if on_gpu else None
        feed_ndarray(out.as_tensor(), x, cuda_stream=stream)  # copies out of DALI's reused buffers
        if on_gpu:  # ordered on torch's stream, like DALI's own iterator; guard the buffer's next reuse
            self._copied = torch.cuda.Event()
            self._copied.record(stream)
        if nhwc:
            x = x.permute(0, 3, 1, 2)  # NCHW view with channels_last strides
        if x.dtype != self.dtype:
            x = x.to(self.dtype)  # bf16 (DALI has no bf16 output); keeps the memory format
        labels = self.dataset.labels.index_select(0, idx)
        if on_gpu:
            labels = labels.pin_memory().to(self.device, non_blocking=True)
        return x, labels

    def close(self) -> None:
        """Free the pipeline now (it is also freed with the stream)."""
        if self._copied is not None:  # the last copy out of its buffers must have run
            self._copied.synchronize()
        self._pipe, self._pipe_key = None, None
        gc.collect()
