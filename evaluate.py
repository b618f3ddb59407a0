"""Evaluate depth with the md4all protocol (SPEC §5).

Metric core: `compute_depth_metrics` for one image, `average_metrics` per condition,
`flip_post_process`. Used by the training scripts for validation.
"""
import numpy as np
import torch

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def _numpy(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).squeeze()


def compute_depth_metrics(gt, pred, min_depth=0.1, max_depth=80.0, median_scaling=False):
    """Depth errors of one image (SPEC §5): valid = min < gt < max (gt 0 = no measurement),
    pred optionally median-scaled to gt, then clamped to [min, max]. Returns None without valid pixels."""
    gt, pred = _numpy(gt), _numpy(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and prediction {pred.shape} differ in size: upsample the "
                         f"prediction to the ground-truth resolution first")
    valid = (gt > min_depth) & (gt < max_depth)
    if not valid.any():
        return None
    gt, pred = gt[valid], pred[valid]
    if median_scaling:
        pred = pred * np.median(gt) / np.median(pred)
    pred = np.clip(pred, min_depth, max_depth)
    ratio = np.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": np.mean(np.abs(gt - pred) / gt),
        "sq_rel": np.mean((gt - pred) ** 2 / gt),
        "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
        "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        "a1": np.mean(ratio < 1.25),
        "a2": np.mean(ratio < 1.25 ** 2),
        "a3": np.mean(ratio < 1.25 ** 3),
    }


def average_metrics(per_image):
    """Mean of per-image metric dicts (images without valid pixels skipped), with the image count."""
    per_image = [m for m in per_image if m is not None]
    if not per_image:
        return {"count": 0, **{k: float("nan") for k in METRIC_NAMES}}
    return {"count": len(per_image), **{k: float(np.mean([m[k] for m in per_image])) for k in METRIC_NAMES}}


def flip_post_process(pred, pred_of_flipped):
    """Average a prediction with the un-flipped prediction of the mirrored image (`--flip-pp`)."""
    return 0.5 * (pred + torch.flip(pred_of_flipped, dims=[-1]))
