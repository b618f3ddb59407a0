"""Evaluate depth with md4all's protocol (docs/method.md §5) and print a per-condition table.

    python evaluate.py --ckpt runs/student/ckpt.pt --dataset nuscenes --data-root /data/nuscenes --out eval/
    python evaluate.py --ckpt CKPT --dataset robotcar --data-root /data/robotcar --out eval/   # test split, 50 m
    python evaluate.py --ckpt CKPT --data-root /data/nuscenes --flip-pp    # plain AND flip-pp tables in one run
    python evaluate.py --pred-dir other_method/ --dataset nuscenes --data-root /data/nuscenes  # their maps
    python evaluate.py --ckpt CKPT --dataset folder --data-root my_images/  # .npy depth next to each image
    python evaluate.py --ckpt CKPT --dataset drivingstereo --data-root /data/drivingstereo --weather foggy rainy
    python evaluate.py --ckpt CKPT --data-root /data/nuscenes --check-data  # read every file before inference
    python evaluate.py --ckpt CKPT --data-root /data/nuscenes --corruptions all --severities 1-5 \
        --baseline-metrics eval_teacher/metrics.json --out eval_student   # common corruptions, CE vs a baseline

The protocol, as md4all's evaluator runs it: the net sees the item's `input` at its own size; its
scaled disparity at the network's output resolution is (with --flip-pp) blended with the
prediction of the mirrored image by monodepth2's edge ramp, turned into depth (1 / disparity) and
that depth is upsampled ONCE, bilinearly with align_corners=True, to the ground-truth size. Pixels
with min < gt < max (compared in the ground truth's own dtype) are scored; the prediction is
(optionally median-scaled with torch's lower median, then) clamped to [min, max]; metrics are
computed per image and averaged per condition (night = night-clear + night-rain) and over all.

Writes `<out>/metrics.json` (per mode, per group and per image), `<out>/metrics.csv` and `--save-vis N`
PNGs per condition (image | prediction | ground truth on one depth scale in metres). `--pred-dir` reads
`<pred-dir>/<image path relative to the data root, extension replaced by .npy>` (depth in metres, any
size; upsampled like the net's depth), so other methods are scored on exactly this protocol. Without
--size the checkpoint's training size is used. This file is the whole protocol, in reading order: the
prediction (network_input, flip_post_process, upsample_depth, predict_depths, net_predictor), the scores
(compute_depth_metrics, condition groups, score_loader, summarize), tables and pictures, the command.
The trainers' validation calls the same functions (training.py). It needs model.py and data.py only.

--corruptions (RoboDepth's KITTI-C protocol on any dataset, docs/method.md §5; needs the optional
imagecorruptions package) scores the clean frames and then each corruption at each --severities, every frame
corrupted where the net sees it, seeded by its path and the corruption (the ground truth untouched): the table
of abs_rel per severity with RoboDepth's DEE and resilience rate (and, with --baseline-metrics, the corruption
errors CE and RCE relative to that run), `<out>/corruptions.csv`, `<out>/corruptions.png` (abs_rel against
severity, the baseline dashed) and the per-severity summaries and scores in metrics.json.
"""
import argparse
import hashlib
import json
import math
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import data
from model import load_depth_net, read_checkpoint

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
GROUP_ORDER = ("day-clear", "night", "day-rain", *data.DRIVINGSTEREO_WEATHERS, "all")
MODE_TITLES = {"plain": "plain prediction", "flip_pp": "flip post-processing (monodepth2 edge ramp)"}


# The prediction: the depth net as md4all's evaluator runs it (the trainers' validation runs it too).
def flip_post_process(disp, disp_of_flipped):
    """monodepth2's edge-ramp blend of a disparity (B,1,H,W) with the prediction of the mirrored image
    (docs/method.md §5): the un-flipped mirror prediction alone near the left border, the plain one
    alone near the right, their mean in between; mask = 1 - clamp(20 (x - 0.05), 0, 1), x in [0, 1]."""
    hat = torch.flip(disp_of_flipped, dims=[-1])
    x = torch.linspace(0.0, 1.0, disp.shape[-1], dtype=disp.dtype, device=disp.device)
    mask = 1.0 - torch.clamp(20.0 * (x - 0.05), 0.0, 1.0)
    mask_hat = torch.flip(mask, dims=[-1])
    return mask_hat * disp + mask * hat + (1.0 - mask - mask_hat) * 0.5 * (disp + hat)


def upsample_depth(depth, size):
    """md4all's single interpolation of a (B,1,h,w) depth to the ground-truth size: bilinear, align_corners=True."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth, size=tuple(size), mode="bilinear", align_corners=True)


@torch.no_grad()
def predict_depths(net, images, out_size, flip_pp=False, bf16=False):
    """{"plain": depth} (and {"flip_pp": depth} with flip_pp) of `net` on images in [0,1], (B,1,*out_size):
    scaled disparity at network resolution (flip-blended), depth = 1 / it, then one upsampling (docs/method.md §5).
    bf16 runs the net under bf16 autocast (its head still ends in float32); md4all evaluates in float32."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        disp = net(images, out_size="network")["scaled_disp"]
        disp_of_flipped = net(torch.flip(images, dims=[-1]), out_size="network")["scaled_disp"] if flip_pp else None
    disps = {"plain": disp.float()}
    if flip_pp:
        disps["flip_pp"] = flip_post_process(disp.float(), disp_of_flipped.float())
    return {mode: upsample_depth(1.0 / d.clamp(min=1e-6), out_size) for mode, d in disps.items()}


def network_input(batch):
    """What the depth net sees: the item's `input` (at the net's size), else its `color`."""
    return batch["input"] if "input" in batch else batch["color"]


def net_predictor(net, device, flip_pp=False, by_mode=False, bf16=None):
    """predict(batch) -> (B, Hgt, Wgt) depth of `net` at the ground-truth size (flip post-processed
    when flip_pp); with by_mode=True a dict {"plain": ...} (and "flip_pp", from the same two passes).
    bf16 autocast by default on GPU (validation during training); the command passes its --bf16."""
    bf16 = device.type == "cuda" if bf16 is None else bf16

    def predict(batch):
        images = network_input(batch).to(device, non_blocking=True)
        depths = predict_depths(net, images, batch["gt"].shape[-2:], flip_pp, bf16)
        depths = {mode: d.float().cpu()[:, 0] for mode, d in depths.items()}
        return depths if by_mode else depths["flip_pp" if flip_pp else "plain"]
    return predict


# The scores: md4all's metrics per image, averaged per condition.
def _tensor(x):
    """A squeezed CPU tensor of x, keeping its dtype (numpy float64 stays float64, float32 stays float32)."""
    x = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x.squeeze()


def compute_depth_metrics(gt, pred, min_depth=0.1, max_depth=80.0, median_scaling=False, cap_gt=True):
    """Depth errors of one image, md4all's rules (docs/method.md §5). Returns None without valid pixels.

    valid = min < gt < max in gt's own dtype (a float32 gt of float32(0.1) is not valid; cap_gt=False: every
    gt > min, DrivingStereo's rule in WeatherDepth's evaluator, where only the prediction is capped); the optional
    median scaling uses torch's median (the lower middle value on an even count); then pred is
    clamped to [min, max]. The metrics are computed in the inputs' dtype, as md4all does."""
    gt, pred = _tensor(gt), _tensor(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {tuple(gt.shape)} and prediction {tuple(pred.shape)} differ in size: upsample "
                         f"the prediction to the ground-truth resolution first")
    valid = (gt > min_depth) & ((gt < max_depth) if cap_gt else True)  # a Python float keeps the tensor's dtype
    if not valid.any():
        return None
    dtype = torch.promote_types(gt.dtype, pred.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float64
    gt, pred = gt[valid].to(dtype), pred[valid].to(dtype)
    if median_scaling:
        pred = pred * torch.median(gt) / torch.median(pred)
    pred = pred.clamp(min_depth, max_depth)
    ratio, diff = torch.maximum(gt / pred, pred / gt), gt - pred
    return {
        "abs_rel": float(torch.mean(diff.abs() / gt)),
        "sq_rel": float(torch.mean(diff ** 2 / gt)),
        "rmse": float(torch.sqrt(torch.mean(diff ** 2))),
        "rmse_log": float(torch.sqrt(torch.mean((torch.log(gt) - torch.log(pred)) ** 2))),
        "a1": float((ratio < 1.25).to(dtype).mean()),
        "a2": float((ratio < 1.25 ** 2).to(dtype).mean()),
        "a3": float((ratio < 1.25 ** 3).to(dtype).mean()),
    }


def condition_group(cond):
    """Reporting group of a frame's condition (docs/method.md §5): night-clear and night-rain count as night."""
    return "night" if cond.startswith("night") else cond


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


def score_loader(loader, predict, min_depth=0.1, max_depth=80.0, median_scaling=False, on_image=None,
                 progress=False, cap_gt=True, desc="evaluate"):
    """Score `predict(batch)` against each item's `gt`: (totals per group, one row per image).

    When predict returns a dict {mode: predictions} (model.net_predictor(..., by_mode=True)), totals are
    {mode: totals per group} and each row holds {mode: metrics}. `on_image(batch, i, pred_i, row)`
    sees every image (pred_i: a tensor, or a dict like the predictions)."""
    batches = iter(loader)
    try:
        return score_batches(batches, len(loader), predict, min_depth, max_depth, median_scaling, on_image, progress,
                             cap_gt, desc)
    finally:  # also on an error mid-way: the workers stop now (data.stop_workers: no /tmp/pymp-* left behind)
        data.stop_workers(batches)


def score_batches(batches, count, predict, min_depth, max_depth, median_scaling, on_image, progress, cap_gt, desc):
    """score_loader's loop over an iterator of `count` batches."""
    rows, per_mode = [], None
    for batch in tqdm(batches, total=count, desc=desc, disable=not progress, dynamic_ncols=True):
        if "gt" not in batch:
            raise ValueError("items carry no ground truth `gt`: a folder needs a .npy depth map next to each image")
        preds = predict(batch)
        per_mode = isinstance(preds, dict)
        preds = preds if per_mode else {"plain": preds}
        for i in range(len(batch["path"])):
            row = {"path": batch["path"][i], "cond": batch["cond"][i] if "cond" in batch else "all"}
            for mode, pred in preds.items():
                row[mode] = compute_depth_metrics(batch["gt"][i, 0], pred[i], min_depth, max_depth, median_scaling,
                                                  cap_gt)
            if not per_mode:
                row = {"path": row["path"], "cond": row["cond"], **(row["plain"] or {})}
            rows.append(row)
            if on_image:
                on_image(batch, i, {mode: p[i] for mode, p in preds.items()} if per_mode else preds["plain"][i], row)
    conds = [r["cond"] for r in rows]
    if not per_mode:
        return metric_totals([r if "abs_rel" in r else None for r in rows], conds), rows
    modes = [m for m in rows[0] if m not in ("path", "cond")] if rows else []
    return {mode: metric_totals([r[mode] for r in rows], conds) for mode in modes}, rows


def ordered_groups(summary):
    return [g for g in GROUP_ORDER if g in summary] + sorted(set(summary) - set(GROUP_ORDER))


def format_table(summary):
    """The per-condition table as text."""
    lines = [f"{'condition':<10} {'images':>6} " + " ".join(f"{k:>8}" for k in METRIC_NAMES)]
    for g in ordered_groups(summary):
        m = summary[g]
        lines.append(f"{g:<10} {m['count']:>6} " + " ".join(f"{m[k]:>8.4f}" for k in METRIC_NAMES))
    return "\n".join(lines)


# Common corruptions (docs/method.md §5): RoboDepth's KITTI-C protocol on any dataset. Each frame is corrupted at
# the size the net sees it (RoboDepth corrupts KITTI at its 192x640 network size), the ground truth untouched.
IMAGENET_C = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
              "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
              "jpeg_compression")  # --corruptions all: the 15 ImageNet-C corruptions, 15 of KITTI-C's 18
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # ImageNet-C's held-out four
CORRUPTIONS_INSTALL = "pip install imagecorruptions-imaug (requirements-extras.txt)"
OWN_SEED = ("impulse_noise", "glass_blur")  # draw from generators of their own: they take the seed as an argument


def corruption_seed(frame, corruption):
    """The seed of a frame's corruption: from its path and the corruption's name, the same at every severity."""
    return int.from_bytes(hashlib.sha256(f"{frame}|{corruption}".encode()).digest()[:4], "little")


def corrupt_frame(image, corruption, severity, seed):
    """A (3,H,W) image in [0,1] corrupted by the imagecorruptions package (uint8 in and out, as ImageNet-C)."""
    try:
        import imagecorruptions
    except ImportError:
        raise ImportError(f"--corruptions needs the imagecorruptions package: {CORRUPTIONS_INSTALL}") from None
    h, w = image.shape[-2:]
    if min(h, w) < 32:
        raise ValueError(f"--corruptions: the net sees {h}x{w} frames; the corruptions need at least 32x32 pixels "
                         f"(pass a larger --size)")
    pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.random.seed(seed)  # every other corruption draws from numpy's global generator
    out = imagecorruptions.corrupt(pixels, severity, corruption, **({"seed": seed} if corruption in OWN_SEED else {}))
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.uint8)).permute(2, 0, 1).float() / 255


class CorruptedFrames(torch.utils.data.Dataset):
    """The items of `dataset` with what the net sees (`input`) corrupted, seeded by the frame and the corruption."""

    def __init__(self, dataset, corruption, severity):
        self.dataset, self.corruption, self.severity = dataset, corruption, severity

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        key = "input" if "input" in item else "color"
        item[key] = corrupt_frame(item[key], self.corruption, self.severity, corruption_seed(item["path"],
                                                                                             self.corruption))
        item.pop("color" if key == "input" else "input", None)  # pictures show the corrupted frame
        return item


def depth_estimation_error(metrics):
    """RoboDepth's main score, DEE = (abs_rel - a1 + 1) / 2 (lower is better; docs/method.md §5)."""
    return (metrics["abs_rel"] - metrics["a1"] + 1) / 2


def mean_over_severities(by_severity):
    """{group: mean of each metric over the severities} of {severity: {group: metrics}} (counts kept)."""
    runs = list(by_severity.values())
    return {g: {"count": runs[0][g]["count"], **{k: float(np.mean([r[g][k] for r in runs])) for k in METRIC_NAMES}}
            for g in runs[0] if all(g in r for r in runs)}


def robustness(clean, corrupted, base_clean=None, base_corrupted=None):
    """RoboDepth's scores from the "all" group (docs/method.md §5), per corruption i over its severities l, in %:
    RR_i = sum_l (1 - DEE_il) / (L (1 - DEE_clean)); with a baseline, CE_i = sum_l DEE_il / sum_l DEE_il^base and
    RCE_i = sum_l (DEE_il - DEE_clean) / sum_l (DEE_il^base - DEE_clean^base); their means mRR, mCE, mRCE."""
    dee_clean = depth_estimation_error(clean["all"])
    rows = {}
    for name, by_severity in corrupted.items():
        dee = [depth_estimation_error(by_severity[s]["all"]) for s in by_severity]
        row = {"dee": float(np.mean(dee)), "rr": 100 * sum(1 - d for d in dee) / (len(dee) * (1 - dee_clean))}
        if base_corrupted is not None:
            base = [depth_estimation_error(base_corrupted[name][s]["all"]) for s in by_severity]
            base_clean_dee = depth_estimation_error(base_clean["all"])
            row["ce"] = 100 * sum(dee) / sum(base)
            row["rce"] = 100 * sum(d - dee_clean for d in dee) / sum(b - base_clean_dee for b in base)
        rows[name] = row
    means = {f"m{k}": float(np.mean([r[k] for r in rows.values()])) for k in ("rr", "ce", "rce") if k in
             next(iter(rows.values()))}
    return {"dee_clean": dee_clean, "per_corruption": rows, **means}


def read_baseline(path, corruptions, severities, mode):
    """(clean summary, {corruption: {severity: summary}}, its --label) of `mode` from another run's metrics.json,
    which must hold every corruption and severity asked for; errors name the file and what it lacks."""
    try:
        with open(path) as f:
            report = json.load(f)
        clean, theirs = report["summary"][mode], report["corruptions"]
    except FileNotFoundError:
        raise FileNotFoundError(f"--baseline-metrics {path} does not exist: pass the metrics.json of a run made "
                                f"with the same --corruptions and --severities") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--baseline-metrics {path} is not a metrics.json of a --corruptions run in {mode} mode "
                         f"({type(e).__name__}: {e}); rerun the baseline with --corruptions") from None
    missing = [f"{name} {s}" for name in corruptions for s in severities
               if mode not in theirs.get(name, {}).get(str(s), {})]
    if missing:
        raise ValueError(f"--baseline-metrics {path} lacks {', '.join(missing[:4])}: run the baseline with the same "
                         f"--corruptions and --severities")
    label = report.get("args", {}).get("label") or "baseline"
    return clean, {name: {s: theirs[name][str(s)][mode] for s in severities} for name in corruptions}, label


def format_corruption_table(corrupted, scores):
    """abs_rel per severity and its mean, DEE and RoboDepth's rates per corruption, all frames."""
    severities = list(next(iter(corrupted.values())))
    rates = [k for k in ("rr", "ce", "rce") if k in next(iter(scores["per_corruption"].values()))]
    lines = [f"{'corruption':<18} " + " ".join(f"{'abs_rel ' + str(s):>10}" for s in severities)
             + f" {'mean':>8} {'DEE':>7} " + " ".join(f"{k.upper() + ' %':>8}" for k in rates)]
    for name, by_severity in corrupted.items():
        row = scores["per_corruption"][name]
        lines.append(f"{name:<18} " + " ".join(f"{by_severity[s]['all']['abs_rel']:>10.4f}" for s in severities)
                     + f" {np.mean([by_severity[s]['all']['abs_rel'] for s in severities]):>8.4f} {row['dee']:>7.4f} "
                     + " ".join(f"{row[k]:>8.2f}" for k in rates))
    lines.append(f"clean DEE {scores['dee_clean']:.4f}; " + ", ".join(f"m{k.upper()} {scores['m' + k]:.2f} %"
                                                                      for k in rates))
    return "\n".join(lines)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def severity_plot(runs, labels):
    """PIL image: abs_rel (all frames) against severity, 0 = clean, one line per corruption; a second run (e.g. the
    baseline: the teacher of a student) dashed in the same colour. runs: [(clean summary, {name: {severity:
    summary}})], summaries of one mode."""
    W, H, left, right, top, bottom = 1000, 520, 70, 290, 50, 60
    names = list(runs[0][1])
    points = [{n: [(0, clean["all"]["abs_rel"])] + [(s, c[n][s]["all"]["abs_rel"]) for s in c[n]] for n in names}
              for clean, c in runs]
    values = [v for run in points for line in run.values() for _, v in line]
    low, high = min(values) * 0.9, max(values) * 1.05
    max_s = max(s for run in points for line in run.values() for s, _ in line)
    image = Image.new("RGB", (W, H), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=13)
    x = lambda s: left + (W - left - right) * s / max_s  # noqa: E731
    y = lambda v: H - bottom - (H - bottom - top) * (v - low) / (high - low)  # noqa: E731
    for tick in np.linspace(low, high, 6):
        draw.line([(left, y(tick)), (W - right, y(tick))], fill=(225, 225, 225))
        draw.text((left - 6, y(tick)), f"{tick:.3f}", fill="black", font=font, anchor="rm")
    for s in range(max_s + 1):
        draw.text((x(s), H - bottom + 8), "clean" if s == 0 else str(s), fill="black", font=font, anchor="mt")
    draw.text(((W - right + left) / 2, H - 22), "severity", fill="black", font=font, anchor="mm")
    draw.text(((W - right + left) / 2, 20), "abs_rel under corruptions (all frames; lower is better)", fill="black",
              font=font, anchor="mm")
    for r, run in enumerate(points):
        for i, (name, line) in enumerate(run.items()):
            colour, xy = PALETTE[i % len(PALETTE)], [(x(s), y(v)) for s, v in line]
            for a, b in zip(xy, xy[1:]):
                if r == 0:
                    draw.line([a, b], fill=colour, width=3)
                else:  # dashed: eight segments per step
                    for t in np.arange(0, 1, 0.125)[::2]:
                        draw.line([(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t),
                                   (a[0] + (b[0] - a[0]) * (t + 0.0625), a[1] + (b[1] - a[1]) * (t + 0.0625))],
                                  fill=colour, width=2)
            for px, py in xy:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    for i, name in enumerate(names):
        ly = top + 18 * i
        draw.line([(W - right + 12, ly), (W - right + 36, ly)], fill=PALETTE[i % len(PALETTE)], width=3)
        draw.text((W - right + 42, ly), name, fill="black", font=font, anchor="lm")
    ly = top + 18 * len(names) + 12
    for r, label in enumerate(labels):
        for a in range(12, 36, 8 if r else 24):  # solid, or dashed
            draw.line([(W - right + a, ly + 18 * r), (W - right + a + (4 if r else 24), ly + 18 * r)], fill="black",
                      width=3 - r)
        draw.text((W - right + 42, ly + 18 * r), f"{label} ({'solid' if r == 0 else 'dashed'})", fill="black",
                  font=font, anchor="lm")
    return image


# Visualisation: one log-depth colour scale shared by prediction and ground truth, so a prediction
# off by a constant factor shows as a uniform colour shift against the ground-truth points.
RAMP = np.array([[252, 255, 164], [240, 96, 52], [150, 38, 100], [40, 11, 84], [12, 4, 40]], dtype=np.float64)


def depth_scale(min_depth, max_depth):
    """(near, far) ends of the colour scale in metres: at least 1 m (closer is rare on a road)."""
    return max(min_depth, 1.0), max_depth


def colorize(depth, near, far):
    """(H,W) depth in metres -> (H,W,3) uint8 on a log scale from near (yellow) to far (dark); 0 = black."""
    depth = np.asarray(depth, dtype=np.float64)
    x = np.log(np.clip(depth, near, far) / near) / np.log(far / near)
    pos = x * (len(RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(RAMP) - 2)
    rgb = RAMP[lo] * (1 - (pos - lo)[..., None]) + RAMP[lo + 1] * (pos - lo)[..., None]
    return np.where((depth > 0)[..., None], np.round(rgb), 0).astype(np.uint8)


def draw_colour_bar(width, height, near, far, font):
    """A horizontal bar of the depth colours with ticks and labels in metres."""
    bar = Image.new("RGB", (width, height), (255, 255, 255))
    margin, strip = width // 20, height // 3
    depths = near * (far / near) ** (np.arange(width - 2 * margin) / max(width - 2 * margin - 1, 1))
    bar.paste(Image.fromarray(np.repeat(colorize(depths[None], near, far), strip, axis=0)), (margin, 0))
    draw = ImageDraw.Draw(bar)
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200) if near <= t <= far] + [far]
    for t in sorted(set(ticks)):
        u = margin + round(np.log(t / near) / np.log(far / near) * (width - 2 * margin - 1))
        draw.line([(u, strip), (u, strip + height // 10)], fill=(0, 0, 0), width=2)
        draw.text((u, strip + height // 8), f"{t:g} m", fill=(0, 0, 0), font=font, anchor="mt")
    return bar


def render_visualisation(image, pred, gt, min_depth, max_depth, labels=("image", "prediction", "ground truth")):
    """PIL image: labelled panels image | predicted depth | ground-truth points (dilated 3x3), both
    depths on one colour scale in metres, shown by the colour bar underneath."""
    h, w = gt.shape
    near, far = depth_scale(min_depth, max_depth)
    rgb = np.array(Image.fromarray((image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)).resize((w, h)))
    gt_big = F.max_pool2d(torch.as_tensor(gt, dtype=torch.float32)[None, None], 3, 1, 1)[0, 0].numpy()
    points = np.where((gt_big > 0)[..., None], colorize(gt_big, near, far), rgb // 3)
    panels = np.concatenate([rgb, colorize(pred, near, far), points], axis=1)
    font = ImageFont.load_default(size=max(10, h // 18))
    header, footer = max(16, h // 12), max(40, h // 6)
    canvas = Image.new("RGB", (3 * w, header + h + footer), (255, 255, 255))
    canvas.paste(Image.fromarray(panels), (0, header))
    draw = ImageDraw.Draw(canvas)
    for k, label in enumerate(labels):
        draw.text((k * w + w // 2, header // 2), label, fill=(0, 0, 0), font=font, anchor="mm")
    canvas.paste(draw_colour_bar(2 * w, footer, near, far, font), (w, header + h))
    draw.text((w // 2, header + h + footer // 3), "depth (m)", fill=(0, 0, 0), font=font, anchor="mm")
    return canvas


def save_visualisation(path, image, pred, gt, min_depth, max_depth):
    """Write render_visualisation(...) as a PNG, atomically."""
    picture = render_visualisation(image, pred, gt, min_depth, max_depth)
    data.write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))


def load_prediction(pred_dir, rel_path, size):
    """A precomputed (h, w) depth map for `rel_path`, upsampled to `size` as the net's depth is."""
    path = os.path.join(pred_dir, os.path.splitext(rel_path)[0] + ".npy")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pred-dir: no prediction {path} for image {rel_path}; write one .npy depth "
                                f"map (metres) per image, at the image's relative path")
    try:
        pred = np.load(path)
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f"--pred-dir: cannot read {path} as a .npy array ({e}); write it with numpy.save") from e
    if pred.ndim != 2:
        raise ValueError(f"--pred-dir: {path} has shape {pred.shape}; write an (H, W) depth map in metres")
    return upsample_depth(torch.from_numpy(pred.astype(np.float32))[None, None], size)[0, 0]


def load_checkpoint(path):
    """(depth net, the training args it stores or {}) from a .pt file or an exported folder; errors name the file."""
    if os.path.isdir(path):
        return load_depth_net(path), {}
    ckpt = read_checkpoint(path)
    try:
        return load_depth_net(ckpt), ckpt.get("args") or {}
    except ValueError as e:
        raise ValueError(f"--ckpt {path}: {e}") from e


def make_eval_dataset(args, net_size=None):
    """md4all's evaluation split: nuScenes val, RobotCar test, DrivingStereo's weather sets, or a folder's images."""
    kwargs = {"size": args.size, "net_size": net_size}
    if args.dataset == "nuscenes":
        return data.NuScenesDepth(args.data_root, args.version, "val", **kwargs)
    if args.dataset == "robotcar":
        return data.RobotCarDepth(args.data_root, "test", **kwargs)
    if args.dataset == "drivingstereo":
        return data.DrivingStereoDepth(args.data_root, args.weather, **kwargs)
    return data.FolderDepth(args.data_root, **kwargs)


def corruption_name(text):
    """A --corruptions word -> the corruption names it stands for ('all': the 15 ImageNet-C ones)."""
    if text == "all":
        return list(IMAGENET_C)
    if text not in IMAGENET_C + EXTRA_CORRUPTIONS:
        raise argparse.ArgumentTypeError(f"unknown corruption {text!r}: choose 'all' or from "
                                         f"{', '.join(IMAGENET_C + EXTRA_CORRUPTIONS)}")
    return [text]


def severity_list(text):
    """A --severities word, '3' or '1-5', -> the severities (1 to 5) it stands for."""
    try:
        low, _, high = text.partition("-")
        severities = list(range(int(low), int(high or low) + 1))
    except ValueError:
        severities = []
    if not severities or not all(1 <= s <= 5 for s in severities):
        raise argparse.ArgumentTypeError(f"severity {text!r}: give severities from 1 to 5, e.g. 1-5 or 1 3 5")
    return severities


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def parse_args(argv):
    p = data.ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=data.HelpFormatter)
    p.add_argument("--ckpt", help="checkpoint (.pt) or exported folder of a depth net")
    p.add_argument("--pred-dir", help="evaluate precomputed .npy depth maps (metres) instead of a checkpoint")
    p.add_argument("--dataset", default="nuscenes", choices=["nuscenes", "robotcar", "drivingstereo", "folder"],
                   help="nuScenes val, RobotCar test, DrivingStereo's weather sets (zero-shot), or every image of a "
                        "folder with .npy depth beside it")
    p.add_argument("--weather", nargs="+", choices=data.DRIVINGSTEREO_WEATHERS, default=None,
                   help="DrivingStereo: the weather sets to score, each a group of the tables (default: every "
                        "set under --data-root)")
    p.add_argument("--data-root", required=True, help="the dataset folder (read only: --out must lie outside it)")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version folder")
    p.add_argument("--size", type=data.parse_size, default=None,
                   help="the frames' size HxW, the trainers' --size (default: the checkpoint's, else nuScenes 320x576, "
                        "RobotCar 320x544, DrivingStereo 320x704, folder: each image's); the net sees its input at "
                        "its own net size")
    p.add_argument("--min-depth", type=float, default=0.1, help="ground truth must exceed it")
    p.add_argument("--max-depth", type=float, default=None,
                   help="cap; default 80 (nuScenes, DrivingStereo, folder), 50 (RobotCar)")
    p.add_argument("--median-scaling", action="store_true", help="scale each prediction to the gt median "
                   "(relative-depth models)")
    p.add_argument("--flip-pp", action="store_true", help="report flip post-processing too (both tables)")
    p.add_argument("--bf16", action="store_true",
                   help="run the net under bf16 autocast on GPU (faster; md4all's numbers are float32)")
    p.add_argument("--batch-size", type=data.at_least(1), default=8, help="images per forward pass (folder: 1)")
    p.add_argument("--workers", type=data.at_least(0), default=4, help="DataLoader worker processes")
    p.add_argument("--save-vis", type=data.at_least(0), default=0, help="PNGs per condition")
    p.add_argument("--out", default="eval", help="folder for metrics.json, metrics.csv, vis/")
    p.add_argument("--corruptions", nargs="+", type=corruption_name, default=None,
                   help="also score frames corrupted before the net sees them (RoboDepth's protocol, docs/method.md "
                        f"§5): 'all' (the 15 ImageNet-C corruptions) or names from {', '.join(IMAGENET_C)} and "
                        f"{', '.join(EXTRA_CORRUPTIONS)}; needs {CORRUPTIONS_INSTALL}")
    p.add_argument("--severities", nargs="+", type=severity_list, default=[[1, 2, 3, 4, 5]],
                   help="corruption severities: '1-5', or some of them ('1 3 5')")
    p.add_argument("--baseline-metrics", help="another --corruptions run's metrics.json (same corruptions and "
                   "severities): adds RoboDepth's corruption errors CE and RCE relative to it, and draws it dashed")
    p.add_argument("--label", help="this run's name in the corruption plot (default: 'this run')")
    p.add_argument("--check-data", action="store_true",
                   help="read every image and ground-truth file once before inference (data.check_files), so that a "
                        "broken one fails before the evaluation, not when its batch comes. Off by default: the "
                        "evaluation itself reads each file only once, and the check added 6-9%% to its time on the "
                        "synthetic world (docs/results.md)")
    args = p.parse_args(argv)
    if args.corruptions:
        names = [n for group in args.corruptions for n in group]
        args.corruptions = list(dict.fromkeys(names))
    args.severities = sorted({s for group in args.severities for s in group})
    if args.corruptions and args.pred_dir:
        p.error("--corruptions needs --ckpt: the frames are corrupted before the net sees them, precomputed maps "
                "cannot be")
    if args.baseline_metrics and not args.corruptions:
        p.error("--baseline-metrics compares corruption runs: add --corruptions")
    if bool(args.ckpt) == bool(args.pred_dir):
        p.error("pass exactly one of --ckpt (a depth net) or --pred-dir (precomputed depth maps)")
    if args.weather and args.dataset != "drivingstereo":
        p.error("--weather picks DrivingStereo's weather sets: add --dataset drivingstereo, or drop --weather")
    if args.pred_dir and args.flip_pp:
        p.error("--flip-pp needs --ckpt: precomputed depth maps cannot be re-predicted on mirrored images")
    if args.size and min(args.size) < 14:
        p.error(f"--size {args.size[0]}x{args.size[1]}: each side must be at least 14 pixels (one DINOv2 patch)")
    if not 0 < args.min_depth < (args.max_depth or math.inf):
        p.error(f"--min-depth {args.min_depth} / --max-depth {args.max_depth}: need 0 < min < max (metres)")
    if inside(args.out, args.data_root):
        p.error(f"--out {args.out} is inside --data-root {args.data_root}: the outputs would be written into "
                f"the dataset (and a folder dataset would read its own PNGs back); choose a folder outside it")
    return p, args


def prepare(args):
    """(the settings: `args` with --size and --max-depth filled from the checkpoint and the dataset's defaults, the
    dataset, predict(batch) -> {mode: depth at the ground-truth size}) of parsed `args`."""
    data.check_writable(args.out)
    defaults = data.DATASET_DEFAULTS[args.dataset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, trained = load_checkpoint(args.ckpt) if args.ckpt else (None, {})
    # --size: the size the checkpoint was trained at, else the dataset's default
    size = args.size or (tuple(trained["size"]) if trained.get("size") else defaults["size"])
    args = argparse.Namespace(**{**vars(args), "size": size, "max_depth": args.max_depth or defaults["max_depth"]})
    dataset = make_eval_dataset(args, net.net_size if net is not None else None)
    if args.check_data:  # before inference: a broken file would otherwise fail after all the images before it
        print(data.check_dataset(dataset, progress=True, skip="drop --check-data"))
    if net is not None:
        predict = net_predictor(net.to(device).eval(), device, args.flip_pp, by_mode=True, bf16=args.bf16)
    else:
        def predict(batch):
            size = batch["gt"].shape[-2:]
            return {"plain": torch.stack([load_prediction(args.pred_dir, p, size) for p in batch["path"]])}
    return args, dataset, predict


def score(args, dataset, predict, save_vis=0, desc="evaluate"):
    """({mode: summary per group}, the per-image rows) of `predict` on `dataset` under the settings `args`, and the
    first `save_vis` pictures of each condition."""
    from torch.utils.data import DataLoader
    batch_size = 1 if args.dataset == "folder" else args.batch_size  # a folder's ground truths differ in size
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=args.workers)
    vis_done = {}

    def save_some(batch, i, pred, row):  # the first --save-vis images of each condition
        group = condition_group(row["cond"])
        if vis_done.get(group, 0) < save_vis:
            vis_done[group] = vis_done.get(group, 0) + 1
            pred = pred.get("flip_pp", pred["plain"])  # the reported prediction
            image = batch["color"][i] if "color" in batch else network_input(batch)[i]
            save_visualisation(os.path.join(args.out, "vis", f"{group}_{vis_done[group]:03d}.png"),
                               image, pred.numpy(), batch["gt"][i, 0].numpy(), args.min_depth, args.max_depth)
    totals, rows = score_loader(loader, predict, args.min_depth, args.max_depth, args.median_scaling, save_some,
                                progress=True, cap_gt=data.DATASET_DEFAULTS[args.dataset].get("cap_gt", True),
                                desc=desc)
    summaries = {mode: summarize(t) for mode, t in totals.items()}
    if not summaries.get("plain"):
        raise ValueError(f"no image had a valid ground-truth pixel in ({args.min_depth}, {args.max_depth}) m: "
                         f"check --min-depth / --max-depth and the ground truth under {args.data_root}")
    return summaries, rows


def evaluate(args):
    """Run the evaluation of parsed `args`: ({mode: summary per group}, the per-image rows, the settings used)."""
    settings, dataset, predict = prepare(args)
    return (*score(settings, dataset, predict, args.save_vis), settings)


def evaluate_corruptions(args, dataset, predict):
    """{corruption: {severity: {mode: summary per group}}} of `predict` on `dataset`'s frames corrupted before the
    net sees them, for each --corruptions and --severities (docs/method.md §5)."""
    return {name: {s: score(args, CorruptedFrames(dataset, name, s), predict, desc=f"{name} {s}")[0]
                   for s in args.severities} for name in args.corruptions}


def write_results(args, summaries, rows, corrupted=None, baseline=None):
    for mode, summary in summaries.items():
        print(f"\n{MODE_TITLES[mode]}\n{format_table(summary)}")
    report = {"summary": summaries, "per_image": rows, "args": {k: v for k, v in vars(args).items()}}
    if corrupted:
        report.update(write_corruption_results(args, summaries, corrupted, baseline))
    data.write_atomic(os.path.join(args.out, "metrics.json"), lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    lines = [",".join(("mode", "condition", "count") + METRIC_NAMES)]
    lines += [",".join([mode, g, str(s[g]["count"])] + [f"{s[g][k]:.6f}" for k in METRIC_NAMES])
              for mode, s in summaries.items() for g in ordered_groups(s)]
    data.write_atomic(os.path.join(args.out, "metrics.csv"), lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def write_corruption_results(args, summaries, corrupted, baseline=None):
    """Print and save the corruption results (corruptions.csv, corruptions.png); returns what metrics.json adds:
    {corruption: {severity: {mode: summary}, "mean": ...}} and RoboDepth's scores of the reported mode (relative to
    `baseline`, read_baseline's pair, when given)."""
    mode = "flip_pp" if args.flip_pp else "plain"
    by_mode = {name: {s: runs[s][mode] for s in runs} for name, runs in corrupted.items()}
    scores = robustness(summaries[mode], by_mode, *(baseline[:2] if baseline else (None, None)))
    print(f"\ncorruptions, {MODE_TITLES[mode]}\n{format_corruption_table(by_mode, scores)}")
    table = {name: {**{str(s): runs[s] for s in runs},
                    "mean": {m: mean_over_severities({s: runs[s][m] for s in runs}) for m in summaries}}
             for name, runs in corrupted.items()}
    lines = [",".join(("corruption", "severity", "mode", "condition", "count") + METRIC_NAMES)]
    lines += [",".join([name, s, m, g, str(summary[g]["count"])] + [f"{summary[g][k]:.6f}" for k in METRIC_NAMES])
              for name, runs in table.items() for s, by in runs.items() for m, summary in by.items()
              for g in ordered_groups(summary)]
    data.write_atomic(os.path.join(args.out, "corruptions.csv"), lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    runs = [(summaries[mode], by_mode)] + ([baseline[:2]] if baseline else [])
    labels = [args.label or "this run"] + ([baseline[2]] if baseline else [])
    picture = severity_plot(runs, labels)
    data.write_atomic(os.path.join(args.out, "corruptions.png"), lambda tmp: picture.save(tmp, format="PNG"))
    return {"corruptions": table, "robustness": {"mode": mode, "baseline": args.baseline_metrics, **scores}}


def main(argv=None):
    """Run the command (an error a user can cause: one line, exit status 1); returns the summary per group of
    the reported mode (flip-pp with --flip-pp)."""
    _, args = parse_args(argv)

    def run():
        baseline = None
        if args.corruptions:  # the baseline and the package first: a missing one fails before any work
            if args.baseline_metrics:
                baseline = read_baseline(args.baseline_metrics, args.corruptions, args.severities,
                                         "flip_pp" if args.flip_pp else "plain")
            corrupt_frame(torch.zeros(3, 32, 32), args.corruptions[0], 1, 0)
        settings, dataset, predict = prepare(args)
        summaries, rows = score(settings, dataset, predict, args.save_vis)
        corrupted = evaluate_corruptions(settings, dataset, predict) if args.corruptions else None
        write_results(settings, summaries, rows, corrupted, baseline)
        return summaries["flip_pp" if args.flip_pp else "plain"]
    return data.run_cli(run, "evaluate.py")


if __name__ == "__main__":
    main()
