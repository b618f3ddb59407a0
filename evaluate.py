"""Evaluate depth with the md4all protocol (SPEC §5) and print a per-condition table.

    python evaluate.py --ckpt runs/student/ckpt.pt --dataset nuscenes --data-root /data/nuscenes --out eval/
    python evaluate.py --ckpt CKPT --dataset robotcar --data-root /data/robotcar --out eval/   # cap 50 m
    python evaluate.py --pred-dir other_method/ --dataset nuscenes --data-root /data/nuscenes  # their maps
    python evaluate.py --ckpt CKPT --dataset folder --data-root my_images/  # .npy depth next to each image

Writes `<out>/metrics.json` (per group and per image), `<out>/metrics.csv` and `--save-vis N` PNGs per
condition (image | predicted depth | ground-truth points). `--pred-dir` reads `<pred-dir>/<image path
relative to the data root, extension replaced by .npy>` (depth in metres, any size), so other methods
are scored on exactly this protocol. The metric core (`compute_depth_metrics`, `average_metrics`,
`flip_post_process`) is what the training scripts validate with.
"""
import argparse
import json
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import data
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
        for group in {condition_group(cond), "all"}:  # a set: a folder's frames are in 'all' only, once
            t = totals.setdefault(group, dict.fromkeys(METRIC_NAMES, 0.0) | {"count": 0})
            t["count"] += 1
            for k in METRIC_NAMES:
                t[k] += float(metrics[k])
    return totals


def summarize(totals):
    """Means per group from `metric_totals` sums."""
    return {g: {"count": t["count"], **{k: t[k] / t["count"] for k in METRIC_NAMES}} for g, t in totals.items()}


def net_predictor(net, device, flip_pp=False):
    """predict(batch) -> (B, Hgt, Wgt) depth of `net` on the batch's `color`, at the ground-truth size."""
    def predict(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = predict_depth(net, batch["color"].to(device, non_blocking=True), batch["gt"].shape[-2:], flip_pp)
        return pred.float().cpu()[:, 0]
    return predict


def score_loader(loader, predict, min_depth=0.1, max_depth=80.0, median_scaling=False, on_image=None,
                 progress=False):
    """Score `predict(batch)` against each item's `gt`: (totals per group, one row per image).
    `on_image(batch, i, pred_i, row)` sees every image (visualisations)."""
    from tqdm import tqdm
    rows = []
    for batch in tqdm(loader, desc="evaluate", disable=not progress, dynamic_ncols=True):
        if "gt" not in batch:
            raise ValueError("items carry no ground truth `gt`: a folder needs a .npy depth map next to each image")
        pred = predict(batch)
        for i in range(len(pred)):
            m = compute_depth_metrics(batch["gt"][i, 0], pred[i], min_depth, max_depth, median_scaling)
            row = {"path": batch["path"][i], "cond": batch["cond"][i] if "cond" in batch else "all",
                   **({k: float(v) for k, v in m.items()} if m else {})}
            rows.append(row)
            if on_image:
                on_image(batch, i, pred[i], row)
    return metric_totals([r if "abs_rel" in r else None for r in rows], [r["cond"] for r in rows]), rows


GROUP_ORDER = ("day-clear", "night", "day-rain", "all")


def colorize(depth, max_depth):
    """(H,W) depth -> (H,W,3) uint8: inverse depth through a dark-blue -> red -> yellow ramp, 0 = black."""
    inv = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-3), 0.0)
    x = np.clip((inv - 1.0 / max_depth) / max(np.percentile(inv[depth > 0], 95) if (depth > 0).any() else 1.0,
                                                1e-6), 0, 1)
    stops = np.array([[0, 0, 4], [40, 11, 84], [150, 38, 100], [240, 96, 52], [252, 255, 164]], dtype=np.float64)
    pos = x * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    rgb = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    return np.where((depth > 0)[..., None], rgb, 0).astype(np.uint8)


def save_visualisation(path, image, pred, gt, max_depth):
    """Side-by-side PNG: image | predicted depth | ground-truth points (dilated 3x3 to be visible)."""
    h, w = gt.shape
    image = np.array(Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((w, h)))
    gt_big = torch.nn.functional.max_pool2d(torch.from_numpy(gt)[None, None], 3, 1, 1)[0, 0].numpy()
    points = np.where((gt_big > 0)[..., None], colorize(gt_big, max_depth), image // 3)
    panel = np.concatenate([image, colorize(pred, max_depth), points], axis=1)
    tmp = path + ".tmp.png"
    Image.fromarray(panel).save(tmp)
    os.replace(tmp, path)


def write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ordered_groups(summary):
    return [g for g in GROUP_ORDER if g in summary] + sorted(set(summary) - set(GROUP_ORDER))


def format_table(summary):
    """The per-condition table as text."""
    lines = [f"{'condition':<10} {'images':>6} " + " ".join(f"{k:>8}" for k in METRIC_NAMES)]
    for g in ordered_groups(summary):
        m = summary[g]
        lines.append(f"{g:<10} {m['count']:>6} " + " ".join(f"{m[k]:>8.4f}" for k in METRIC_NAMES))
    return "\n".join(lines)


def load_prediction(pred_dir, rel_path, size):
    """A precomputed depth map for `rel_path`, resized bilinearly to `size`."""
    path = os.path.join(pred_dir, os.path.splitext(rel_path)[0] + ".npy")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pred-dir: no prediction {path} for image {rel_path}; write one .npy depth "
                                f"map (metres) per image, at the image's relative path")
    pred = torch.from_numpy(np.load(path).astype(np.float32))[None, None]
    return F.interpolate(pred, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def make_eval_dataset(args):
    if args.dataset == "nuscenes":
        return data.NuScenesDepth(args.data_root, args.version, "val", size=args.size)
    if args.dataset == "robotcar":
        return data.RobotCarDepth(args.data_root, "test", size=args.size)
    return data.FolderDepth(args.data_root, size=args.size)


def main(argv=None):
    from torch.utils.data import DataLoader
    from model import load_depth_net
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint (.pt) or exported folder of a depth net")
    p.add_argument("--pred-dir", help="evaluate precomputed .npy depth maps instead of a checkpoint")
    p.add_argument("--dataset", default="nuscenes", choices=["nuscenes", "robotcar", "folder"])
    p.add_argument("--data-root", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--size", type=data.parse_size, default=None,
                   help="network input HxW (default: nuScenes 320x576, RobotCar 320x544, folder: image size)")
    p.add_argument("--min-depth", type=float, default=0.1)
    p.add_argument("--max-depth", type=float, default=None, help="cap; default 80 (nuScenes), 50 (RobotCar)")
    p.add_argument("--median-scaling", action="store_true", help="for relative-depth models")
    p.add_argument("--flip-pp", action="store_true", help="average with the prediction of the mirrored image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--save-vis", type=int, default=0, help="PNGs per condition")
    p.add_argument("--out", default="eval", help="folder for metrics.json, metrics.csv, vis/")
    args = p.parse_args(argv)
    if bool(args.ckpt) == bool(args.pred_dir):
        p.error("pass exactly one of --ckpt (a depth net) or --pred-dir (precomputed depth maps)")
    args.max_depth = args.max_depth or (50.0 if args.dataset == "robotcar" else 80.0)
    args.size = args.size or {"nuscenes": (320, 576), "robotcar": (320, 544), "folder": None}[args.dataset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = make_eval_dataset(args)
    loader = DataLoader(dataset, batch_size=args.batch_size if args.size else 1, num_workers=args.workers)
    if args.ckpt:
        predict = net_predictor(load_depth_net(args.ckpt, map_location=device).eval(), device, args.flip_pp)
    else:
        def predict(batch):
            return torch.stack([load_prediction(args.pred_dir, p, batch["gt"].shape[-2:]) for p in batch["path"]])
    os.makedirs(os.path.join(args.out, "vis"), exist_ok=True)
    vis_done = {}

    def save_some(batch, i, pred, row):  # the first --save-vis images of each condition
        group = condition_group(row["cond"])
        if vis_done.get(group, 0) < args.save_vis:
            vis_done[group] = vis_done.get(group, 0) + 1
            save_visualisation(os.path.join(args.out, "vis", f"{group}_{vis_done[group]:03d}.png"),
                               batch["color"][i], pred.numpy(), batch["gt"][i, 0].numpy(), args.max_depth)
    totals, rows = score_loader(loader, predict, args.min_depth, args.max_depth, args.median_scaling, save_some,
                                progress=True)
    summary = summarize(totals)
    if not summary:
        raise ValueError("no image had a valid ground-truth pixel: check --min-depth / --max-depth and the data")
    table = format_table(summary)
    print(table)
    write_atomic(os.path.join(args.out, "metrics.json"),
                 json.dumps({"summary": summary, "per_image": rows, "args": vars(args)}, indent=1))
    lines = [",".join(("condition", "count") + METRIC_NAMES)]
    lines += [",".join([g, str(summary[g]["count"])] + [f"{summary[g][k]:.6f}" for k in METRIC_NAMES])
              for g in ordered_groups(summary)]
    write_atomic(os.path.join(args.out, "metrics.csv"), "\n".join(lines) + "\n")
    return summary


if __name__ == "__main__":
    main()
