"""Classic weather: a non-generative night / rain / fog / snow version of the training images, written
exactly where and how gdt.py writes its translations. It is the "classic translation" baseline of the
paper's Table 3 and the stand-in for GDT where no diffusion weights are at hand (quickstart.sh,
tools/learning_check.py, the tests); the method's translation is gdt.py (docs/method.md §1).

    python tools/classic_weather.py --dataset nuscenes --data-root world --out gdt_classic --cond night rain
    python tools/classic_weather.py --dataset folder --data-root my_images --out gdt_classic --cond fog snow

Writes `<out>/<cond>/<path relative to --data-root>` (the source's format, size and mode; atomically,
so a rerun skips finished outputs and resumes) and a record per image to
`<out>/<cond>/manifest.rank0.jsonl`, gdt.py's record of a run without models, audit or re-draws. Each
image is drawn from gdt.py's seed of (path, condition): any rerun writes the same bytes.
"""
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/ is not a package
import data  # noqa: E402
import gdt  # noqa: E402

def blur(x, sigma):
    """Gaussian blur of an (H, W, C) array; wide blurs run on a pooled copy (glare and haze are smooth)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
    size, factor = t.shape[-2:], max(1, int(sigma // 3))
    if factor > 1:
        t, sigma = F.avg_pool2d(t, factor, ceil_mode=True), sigma / factor
    (h, w), r = t.shape[-2:], max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    t = F.pad(t, (r, r, r, r), mode="replicate")  # separable, by shifted sums: twice as fast as conv2d here
    t = sum(k[i] / k.sum() * t[..., i:i + w] for i in range(2 * r + 1))
    t = sum(k[i] / k.sum() * t[..., i:i + h, :] for i in range(2 * r + 1))
    return (F.interpolate(t, size=size, mode="bilinear") if factor > 1 else t)[0].permute(1, 2, 0).numpy()


def marks(shape, rng, count, draw_one):
    """(H, W, 1) mask in [0, 1] of `count` random marks (rain streaks, snow flakes) drawn with PIL."""
    mask = Image.new("L", (shape[1], shape[0]))
    pen = ImageDraw.Draw(mask)
    for x, y, u in zip(rng.uniform(0, shape[1], count), rng.uniform(0, shape[0], count), rng.uniform(size=count)):
        draw_one(pen, x, y, u)
    return blur(np.asarray(mask, dtype=np.float32)[..., None] / 255.0, 0.7)


def classic_translate(image, cond, seed):
    """Non-generative night / rain / fog / snow simulation (the Table 3 baseline): (H, W, 3) float in
    [0, 1] -> (H, W, 3) float32 in [0, 1], deterministic given the seed."""
    if cond not in data.GDT_CONDITIONS:
        raise ValueError(f"unknown condition {cond!r}: choose from {', '.join(data.GDT_CONDITIONS)}")
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"classic_translate expects an (H, W, 3) image, got shape {x.shape}")
    rng, (h, w, _) = np.random.default_rng(seed), x.shape
    if cond == "night":  # gamma + darkening, blue tint, bloom of bright pixels, headlight-like glows, read + shot noise
        y = 0.35 * x ** 2.2 * np.array([0.75, 0.85, 1.15], np.float32)
        y = y + 0.8 * blur(x * (x.mean(2, keepdims=True) > 0.8), 0.02 * w)
        n = rng.integers(2, 6)  # headlight-like glows around the horizon band (a gaussian is separable)
        cy, cx, r = rng.uniform(0.45, 0.7, n) * h, rng.uniform(0.05, 0.95, n) * w, rng.uniform(0.01, 0.03, n) * w
        rows, cols = (np.exp(-(np.arange(size)[None] - c[:, None]) ** 2 / (2 * r[:, None] ** 2)) for c, size in
                      ((cy, h), (cx, w)))
        glow = (rows.T @ cols).astype(np.float32)
        y = y + 0.6 * glow[..., None] * np.array([1.0, 0.85, 0.6], np.float32)
        y = y + (0.01 + 0.03 * np.sqrt(np.clip(y, 0, 1))) * rng.standard_normal(x.shape, dtype=np.float32)
    elif cond == "rain":  # contrast loss, grey haze, slanted streaks, a slight blur
        slant, length = rng.uniform(-0.3, 0.3), 0.03 * h

        def streak(pen, px, py, u):
            pen.line([(px, py), (px + slant * length * (0.5 + u), py + length * (0.5 + u))], fill=int(120 + 135 * u))
        streaks = marks(x.shape, rng, h * w // 800, streak)
        y = blur(0.75 * (x.mean() + 0.7 * (x - x.mean())) + 0.25 * 0.55, 1.0) * (1 - 0.35 * streaks) + 0.3 * streaks
    elif cond == "fog":  # depth-free haze: contrast loss and airlight, thicker towards the top (usually far away)
        t = np.clip(0.3 + 0.5 * np.linspace(0, 1, h, dtype=np.float32)[:, None, None] / rng.uniform(0.8, 1.2), 0, 1)
        y = (x.mean() + 0.8 * (x - x.mean())) * t + rng.uniform(0.75, 0.85) * (1 - t)
    else:  # snow: brightening, desaturation, flakes of a few pixels
        scale = max(1.0, w / 800)

        def flake(pen, px, py, u):
            radius = scale * (0.5 + 2 * u)
            pen.ellipse([px - radius, py - radius, px + radius, py + radius], fill=int(150 + 105 * u))
        flakes = marks(x.shape, rng, h * w // 300, flake)
        y = (0.75 * (0.7 * x + 0.3 * x.mean(2, keepdims=True)) + 0.22) * (1 - flakes) + flakes
    return np.clip(y, 0, 1).astype(np.float32)


def parse_args(argv=None):
    p = data.ArgumentParser(description=__doc__)
    gdt.add_translation_args(p)
    p.add_argument("--cond", "--conds", nargs="+", choices=data.GDT_CONDITIONS, default=["night", "rain"], metavar="COND",
                   help=f"target conditions ({', '.join(data.GDT_CONDITIONS)}); default: night rain")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    keys = gdt.translation_frames(args.dataset, args.data_root, args.version, args.split, args.out, args.cond)
    work = [(k, [c for c in args.cond if not Path(args.out, c, k).exists()]) for k in keys]
    work = [(k, conds) for k, conds in work if conds]
    total = sum(len(conds) for _, conds in work)
    print(f"{total} images to translate into {', '.join(args.cond)}")
    with tqdm(total=total, unit="img") as bar:
        for key, conds in work:
            source = os.path.join(args.data_root, key)
            day = data.load_image(source)
            rgb = np.asarray(gdt.as_rgb8(day), np.float32) / 255
            for cond in conds:
                seed = gdt.sample_seed(key, cond)
                out = Image.fromarray(gdt.to_uint8(classic_translate(rgb, cond, seed)))
                gdt.save_atomic(gdt.in_source_mode(out, day.mode), Path(args.out, cond, key))
                # gdt.py's record of a run without models, audit or re-draws
                record = dict(cond=cond, attempt=0, settings={"backend": "classic"}, models={}, key=key, seed=seed,
                              status="ok", attempts=[dict(attempt=0, seed=seed)], source=os.path.abspath(source),
                              output=key)
                gdt.append_record(Path(args.out, cond), record)
                bar.update()


if __name__ == "__main__":
    data.run_cli(main, "classic_weather.py")
