"""Evaluate depth with md4all's protocol (docs/method.md §5) and print a per-condition table.

    python evaluate.py --ckpt runs/student/ckpt.pt --dataset nuscenes --data-root /data/nuscenes --out eval/
    python evaluate.py --ckpt CKPT --dataset robotcar --data-root /data/robotcar --out eval/   # test split, 50 m
    python evaluate.py --ckpt CKPT --data-root /data/nuscenes --flip-pp    # plain AND flip-pp tables in one run
    python evaluate.py --pred-dir other_method/ --dataset nuscenes --data-root /data/nuscenes  # their maps
    python evaluate.py --ckpt CKPT --dataset folder --data-root my_images/  # .npy depth next to each image

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
--size the checkpoint's training size is used. The protocol's functions live where the trainers'
validation uses them too: the metrics and their averages in losses.py (`compute_depth_metrics`,
`score_loader`, `summarize`), the net's prediction in model.py (`net_predictor`); this file reads
checkpoints or prediction folders and writes the tables and pictures.
"""
import argparse
import json
import os
import pickle
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

import data
from losses import METRIC_NAMES, condition_group, score_loader, summarize, upsample_depth
from model import load_depth_net, net_predictor, network_input

GROUP_ORDER = ("day-clear", "night", "day-rain", "all")
MODE_TITLES = {"plain": "plain prediction", "flip_pp": "flip post-processing (monodepth2 edge ramp)"}


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
    tmp = f"{path}.tmp{os.getpid()}.png"
    render_visualisation(image, pred, gt, min_depth, max_depth).save(tmp)
    os.replace(tmp, path)


def write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
        try:
            return load_depth_net(path), {}
        except (RuntimeError, OSError, KeyError) as e:
            raise ValueError(f"--ckpt {path}: not a folder written by export_pretrained ({e})") from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt {path} does not exist: pass the ckpt.pt a training script wrote "
                                f"or a folder written by export_pretrained")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"--ckpt {path} is not a readable checkpoint ({str(e).splitlines()[0]}); it may be "
                         f"truncated: pass a complete ckpt.pt written by train_teacher.py / train_student.py") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"--ckpt {path} holds no 'model' and 'config' entries: it was not written by this "
                         f"project's training scripts")
    try:
        net = load_depth_net(ckpt)
    except (RuntimeError, TypeError) as e:  # weights that do not fit the stored config
        raise ValueError(f"--ckpt {path}: its weights do not fit its config ({str(e).splitlines()[0]})") from e
    return net, ckpt.get("args") or {}


def make_eval_dataset(args, net_size=None):
    """md4all's evaluation split: nuScenes val, RobotCar test, or every image of a folder."""
    kwargs = {"size": args.size, "net_size": net_size}
    if args.dataset == "nuscenes":
        return data.NuScenesDepth(args.data_root, args.version, "val", **kwargs)
    if args.dataset == "robotcar":
        return data.RobotCarDepth(args.data_root, "test", **kwargs)
    return data.FolderDepth(args.data_root, **kwargs)


def at_least(minimum):
    """argparse type: an integer >= minimum."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=data.HelpFormatter)
    p.add_argument("--ckpt", help="checkpoint (.pt) or exported folder of a depth net")
    p.add_argument("--pred-dir", help="evaluate precomputed .npy depth maps (metres) instead of a checkpoint")
    p.add_argument("--dataset", default="nuscenes", choices=["nuscenes", "robotcar", "folder"],
                   help="nuScenes val, RobotCar test, or every image of a folder with .npy depth beside it")
    p.add_argument("--data-root", required=True, help="the dataset folder (read only: --out must lie outside it)")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version folder")
    p.add_argument("--size", type=data.parse_size, default=None,
                   help="item size HxW (default: the checkpoint's training size, else nuScenes 320x576, "
                        "RobotCar 320x544, folder: image size); the net sees its input at its own net size")
    p.add_argument("--min-depth", type=float, default=0.1, help="ground truth must exceed it")
    p.add_argument("--max-depth", type=float, default=None, help="cap; default 80 (nuScenes, folder), 50 (RobotCar)")
    p.add_argument("--median-scaling", action="store_true", help="scale each prediction to the gt median "
                   "(relative-depth models)")
    p.add_argument("--flip-pp", action="store_true", help="report flip post-processing too (both tables)")
    p.add_argument("--bf16", action="store_true",
                   help="run the net under bf16 autocast on GPU (faster; md4all's numbers are float32)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="images per forward pass (folder: 1)")
    p.add_argument("--workers", type=at_least(0), default=4, help="DataLoader worker processes")
    p.add_argument("--save-vis", type=at_least(0), default=0, help="PNGs per condition")
    p.add_argument("--out", default="eval", help="folder for metrics.json, metrics.csv, vis/")
    args = p.parse_args(argv)
    if bool(args.ckpt) == bool(args.pred_dir):
        p.error("pass exactly one of --ckpt (a depth net) or --pred-dir (precomputed depth maps)")
    if args.pred_dir and args.flip_pp:
        p.error("--flip-pp needs --ckpt: precomputed depth maps cannot be re-predicted on mirrored images")
    if inside(args.out, args.data_root):
        p.error(f"--out {args.out} is inside --data-root {args.data_root}: the outputs would be written into "
                f"the dataset (and a folder dataset would read its own PNGs back); choose a folder outside it")
    return p, args


def evaluate(args):
    """Run the evaluation of parsed `args`: {mode: summary per group} and the per-image rows."""
    from torch.utils.data import DataLoader
    defaults = data.DATASET_DEFAULTS[args.dataset]
    args.max_depth = args.max_depth or defaults["max_depth"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, trained = load_checkpoint(args.ckpt) if args.ckpt else (None, {})
    if args.size is None:  # the size the checkpoint was trained at, else the dataset's default
        args.size = tuple(trained["size"]) if trained.get("size") else defaults["size"]
    dataset = make_eval_dataset(args, net.net_size if net is not None else None)
    batch_size = 1 if args.dataset == "folder" else args.batch_size  # a folder's ground truths differ in size
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=args.workers)
    if net is not None:
        predict = net_predictor(net.to(device).eval(), device, args.flip_pp, by_mode=True, bf16=args.bf16)
    else:
        def predict(batch):
            size = batch["gt"].shape[-2:]
            return {"plain": torch.stack([load_prediction(args.pred_dir, p, size) for p in batch["path"]])}
    os.makedirs(os.path.join(args.out, "vis"), exist_ok=True)
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
                                progress=True)
    summaries = {mode: summarize(t) for mode, t in totals.items()}
    if not summaries.get("plain"):
        raise ValueError(f"no image had a valid ground-truth pixel in ({args.min_depth}, {args.max_depth}) m: "
                         f"check --min-depth / --max-depth and the ground truth under {args.data_root}")
    return summaries, rows


def write_results(args, summaries, rows):
    for mode, summary in summaries.items():
        print(f"\n{MODE_TITLES[mode]}\n{format_table(summary)}")
    report = {"summary": summaries, "per_image": rows, "args": {k: v for k, v in vars(args).items()}}
    write_atomic(os.path.join(args.out, "metrics.json"), json.dumps(report, indent=1))
    lines = [",".join(("mode", "condition", "count") + METRIC_NAMES)]
    lines += [",".join([mode, g, str(s[g]["count"])] + [f"{s[g][k]:.6f}" for k in METRIC_NAMES])
              for mode, s in summaries.items() for g in ordered_groups(s)]
    write_atomic(os.path.join(args.out, "metrics.csv"), "\n".join(lines) + "\n")


def main(argv=None):
    """Run the command; returns the summary per group of the reported mode (flip-pp with --flip-pp)."""
    parser, args = parse_args(argv)
    try:
        summaries, rows = evaluate(args)
        write_results(args, summaries, rows)
    except (OSError, ValueError) as e:  # expected: missing or unreadable files, bad data (bugs keep a traceback)
        message = str(e)
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep its own last line
            message = message.strip().splitlines()[-1].removeprefix(f"{type(e).__name__}: ")
        parser.exit(1, f"{parser.prog}: error: {message}\n")
    return summaries["flip_pp" if args.flip_pp else "plain"]


if __name__ == "__main__":
    main()
