"""Metrics for generated images: SWD (the paper's), MS-SSIM (diversity), FID and an Inception-style
score in the feature space of a FashionMNIST classifier the project ships, FID with a user's Inception.

    from progan_fast.metrics import evaluate, swd, ms_ssim, compare
    scores = evaluate(Gs, dataset, metrics=["swd", "fid"], num_images=10000)

CLI: python -m progan_fast.metrics --ckpt RUN_DIR --metrics swd,msssim,fid,is  (see docs/metrics.md).
"""
from .evaluate import METRICS, check_metrics, compare, evaluate, generate_uint8, real_images
from .frechet import fid_from_features, frechet_distance, inception_score_from_logits, trace_sqrt_product
from .msssim import ms_ssim, ms_ssim_pairs
from .sliced import laplacian_pyramid, sliced_wasserstein, swd

__all__ = ["evaluate", "compare", "generate_uint8", "real_images", "METRICS", "check_metrics", "swd",
           "laplacian_pyramid", "sliced_wasserstein", "ms_ssim", "ms_ssim_pairs", "fid_from_features",
           "frechet_distance", "trace_sqrt_product", "inception_score_from_logits"]
