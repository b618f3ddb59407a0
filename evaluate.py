"""Evaluate depth with the md4all protocol (SPEC §5).

Metric core: `compute_depth_metrics` for one image, `average_metrics` per condition,
`flip_post_process`. Used by the training scripts for validation.
"""
import numpy as np
import torch
import torch.nn.functional as F

from model import disp_to_depth

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


def condition_group(cond):
    """Reporting group of a frame's condition (SPEC §5): night-clear and night-rain count as night."""
    return "night" if cond.startswith("night") else cond


@torch.no_grad()
def predict_depth(net, images, out_size, flip_pp=False):
    """Depth (B,1,*out_size) of `net` on images in [0,1]: disparity (optionally flip-averaged)
    upsampled bilinearly to the ground-truth size, then mapped to metres."""
    disp = net(images)["disp"].float()
    if flip_pp:
        disp = flip_post_process(disp, net(torch.flip(images, dims=[-1]))["disp"].float())
    disp = F.interpolate(disp, size=tuple(out_size), mode="bilinear", align_corners=False)
    return disp_to_depth(disp, net.min_depth, net.max_depth)[1]


def metric_totals(per_image, conds):
    """Sums and counts of per-image metrics per reporting group and 'all' (reducible across ranks)."""
    totals = {}
    for metrics, cond in zip(per_image, conds):
        if metrics is None:
            continue
        for group in (condition_group(cond), "all"):
            t = totals.setdefault(group, dict.fromkeys(METRIC_NAMES, 0.0) | {"count": 0})
            t["count"] += 1
            for k in METRIC_NAMES:
                t[k] += float(metrics[k])
    return totals


def summarize(totals):
    """Means per group from `metric_totals` sums."""
    return {g: {"count": t["count"], **{k: t[k] / t["count"] for k in METRIC_NAMES}} for g, t in totals.items()}


def evaluate_net(net, loader, device, min_depth=0.1, max_depth=80.0, median_scaling=False, flip_pp=False,
                 progress=False):
    """Run `net` over a loader of items with `color`, `gt` and `cond`; return (totals, per-image rows)."""
    from tqdm import tqdm
    was_training = net.training
    net.eval()
    rows = []
    for batch in tqdm(loader, desc="evaluate", disable=not progress, dynamic_ncols=True):
        gt = batch["gt"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = predict_depth(net, batch["color"].to(device, non_blocking=True), gt.shape[-2:], flip_pp)
        pred = pred.float().cpu()
        for i in range(len(gt)):
            m = compute_depth_metrics(gt[i, 0], pred[i, 0], min_depth, max_depth, median_scaling)
            rows.append({"key": batch["key"][i], "cond": batch["cond"][i], **(m or {})})
    net.train(was_training)
    return metric_totals([r if "abs_rel" in r else None for r in rows], [r["cond"] for r in rows]), rows
