"""Evaluate depth with md4all's protocol (docs/method.md §5) and print a per-condition table.

    python evaluate.py --ckpt runs/student/ckpt.pt --dataset nuscenes --data-root /data/nuscenes --out eval/
    python evaluate.py --ckpt CKPT --dataset robotcar --data-root /data/robotcar --out eval/   # test split, 50 m
    python evaluate.py --ckpt CKPT --data-root /data/nuscenes --flip-pp    # plain AND flip-pp tables in one run
    python evaluate.py --pred-dir other_method/ --dataset nuscenes --data-root /data/nuscenes  # their maps
    python evaluate.py --ckpt CKPT --dataset folder --data-root my_images/  # .npy depth next to each image
    python evaluate.py --ckpt CKPT --dataset drivingstereo --data-root /data/drivingstereo --weather foggy rainy
    python evaluate.py --ckpt CKPT --data-root /data/nuscenes --check-data  # read every file before inference

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
"""
import argparse
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
                 progress=False, cap_gt=True):
    """Score `predict(batch)` against each item's `gt`: (totals per group, one row per image).

    When predict returns a dict {mode: predictions} (model.net_predictor(..., by_mode=True)), totals are
    {mode: totals per group} and each row holds {mode: metrics}. `on_image(batch, i, pred_i, row)`
    sees every image (pred_i: a tensor, or a dict like the predictions)."""
    rows, per_mode = [], None
    for batch in tqdm(loader, desc="evaluate", disable=not progress, dynamic_ncols=True):
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
                   help="DrivingStereo: the weather sets to score, each a group of the tables (default: every set under "
                        "--data-root)")
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
    p.add_argument("--check-data", action="store_true",
                   help="read every image and ground-truth file once before inference (data.check_files), so that a "
                        "broken one fails before the evaluation, not when its batch comes. Off by default: the "
                        "evaluation itself reads each file only once, and the check added 6-9%% to its time on the "
                        "synthetic world (docs/results.md)")
    args = p.parse_args(argv)
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


def evaluate(args):
    """Run the evaluation of parsed `args`: ({mode: summary per group}, the per-image rows, the settings used:
    `args` with --size and --max-depth filled from the checkpoint and the dataset's defaults)."""
    from torch.utils.data import DataLoader
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
    batch_size = 1 if args.dataset == "folder" else args.batch_size  # a folder's ground truths differ in size
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=args.workers)
    if net is not None:
        predict = net_predictor(net.to(device).eval(), device, args.flip_pp, by_mode=True, bf16=args.bf16)
    else:
        def predict(batch):
            size = batch["gt"].shape[-2:]
            return {"plain": torch.stack([load_prediction(args.pred_dir, p, size) for p in batch["path"]])}
    vis_done = {}

    def save_some(batch, i, pred, row):  # the first --save-vis images of each condition
        group = condition_group(row["cond"])
        if vis_done.get(group, 0) < args.save_vis:
            vis_done[group] = vis_done.get(group, 0) + 1
            pred = pred.get("flip_pp", pred["plain"])  # the reported prediction
            image = batch["color"][i] if "color" in batch else network_input(batch)[i]
            save_visualisation(os.path.join(args.out, "vis", f"{group}_{vis_done[group]:03d}.png"),
                               image, pred.numpy(), batch["gt"][i, 0].numpy(), args.min_depth, args.max_depth)
    totals, rows = score_loader(loader, predict, args.min_depth, args.max_depth, args.median_scaling, save_some,
                                progress=True, cap_gt=defaults.get("cap_gt", True))
    summaries = {mode: summarize(t) for mode, t in totals.items()}
    if not summaries.get("plain"):
        raise ValueError(f"no image had a valid ground-truth pixel in ({args.min_depth}, {args.max_depth}) m: "
                         f"check --min-depth / --max-depth and the ground truth under {args.data_root}")
    return summaries, rows, args


def write_results(args, summaries, rows):
    for mode, summary in summaries.items():
        print(f"\n{MODE_TITLES[mode]}\n{format_table(summary)}")
    report = {"summary": summaries, "per_image": rows, "args": {k: v for k, v in vars(args).items()}}
    data.write_atomic(os.path.join(args.out, "metrics.json"), lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    lines = [",".join(("mode", "condition", "count") + METRIC_NAMES)]
    lines += [",".join([mode, g, str(s[g]["count"])] + [f"{s[g][k]:.6f}" for k in METRIC_NAMES])
              for mode, s in summaries.items() for g in ordered_groups(s)]
    data.write_atomic(os.path.join(args.out, "metrics.csv"), lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def main(argv=None):
    """Run the command (an error a user can cause: one line, exit status 1); returns the summary per group of
    the reported mode (flip-pp with --flip-pp)."""
    _, args = parse_args(argv)

    def run():
        summaries, rows, settings = evaluate(args)
        write_results(settings, summaries, rows)
        return summaries["flip_pp" if args.flip_pp else "plain"]
    return data.run_cli(run, "evaluate.py")


if __name__ == "__main__":
    main()
