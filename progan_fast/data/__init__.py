"""Data: bundled FashionMNIST, user sources, multi-resolution levels and the plain-PyTorch batch stream.

    ds, desc = load_dataset("fashion-mnist")              # or a --data path; dataset dirs are memory-mapped
    images, labels, desc = load_fashion_mnist()          # or load_images(path): uint8 NHWC in memory
    ds = MultiResolutionDataset(images, labels)           # uint8 levels 32, 16, 8, 4
    stream = BatchStream(ds, seed=0, rank=r, world_size=w, mirror=False, device="cuda")
    x, y = stream.next_batch(res=16, batch_size=128)       # float in [-1, 1], [B, C, 16, 16]
"""
from .fashion_mnist import load_fashion_mnist
from .idx import read_idx, write_idx
from .loader import BatchStream
from .multires import MultiResolutionDataset, pad_to_power_of_two
from .sources import load_dataset, load_images
from .stored import StoredDataset

__all__ = ["load_fashion_mnist", "load_images", "load_dataset", "StoredDataset", "read_idx", "write_idx", "MultiResolutionDataset",
           "pad_to_power_of_two", "BatchStream"]
