"""GDT: generative day -> night / rain / snow / fog translation of the training images (docs/method.md §1).

    # offline smoke run on the synthetic world (python synthetic.py --out world): random tiny models,
    # 64x112 and 2 steps by default with --tiny
    python gdt.py --tiny --dataset nuscenes --data-root world --out gdt --cond night --style-dir data
    # the paper's setting; IP-Adapter references from the train split's own night / rain scenes
    python gdt.py --dataset nuscenes --data-root /data/nuscenes --out /data/gdt --cond night rain --style-dir data
    # the few-step sampler (LCM-LoRA, 4 steps, no guidance doubling: 1/15 of the denoiser FLOPs)
    python gdt.py ... --sampler lcm
    # draw a frame again (next seed) while under 0.8 delta1 geometry agreement, at most 3 tries
    python gdt.py ... --min-agreement 0.8 --max-tries 3
    # summarise a GDT folder: counts, agreement histograms and percentiles, worst frames
    python gdt.py --report report/ --gdt-root /data/gdt
    torchrun --standalone --nproc_per_node=8 gdt.py ...   # same flags: frames split over the ranks
    python gdt.py --backend classic ...                    # non-generative baseline, no model at all
    python gdt.py --dataset folder --data-root my_images --out gdt --cond night --style-dir night=real_night/

Memory: the default captioner, BLIP-2 OPT-2.7b, needs about 24 GB in fp32 on a CPU; there use
`--captioner blip` (BLIP-base) or `--captioner none` (a fixed caption). Speed: `python bench.py --only gdt`.

Writes `<out>/<cond>/<path relative to --data-root>` (the source's format, size and mode) and a
JSONL record per image to `<out>/<cond>/manifest.rank<r>.jsonl` (an output's last record wins):
"output" (that relative path), "status" ("ok", or "rejected": no attempt passed --min-agreement,
no file written), the geometry "agreement" and every attempt's seed and agreement. Seeds hash the
key, condition and attempt: any subset, order, batch size, rank count or resume gives the same
image; finished outputs (and frames rejected under the same threshold) are skipped. Models are hub
ids or local folders. From another script: `translator = build_translator(parse_args([...]));
images, records = translate_batch(translator, pil_images, keys, "night")`.
"""
import argparse
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

import data
from model import from_pretrained_or_explain

PHRASES = {"night": "At night", "rain": "In a rainy day", "snow": "In a snowy day", "fog": "In a foggy day"}
NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
CAPTION_MODELS = {"blip2": "Salesforce/blip2-opt-2.7b", "blip": "Salesforce/blip-image-captioning-base"}
SAMPLERS = {"unipc": dict(steps=30, guidance=7.5), "lcm": dict(steps=4, guidance=1.0)}  # docs/method.md §1
TINY_DEFAULTS = dict(steps=2, size=(64, 112))  # --tiny: a smoke run, seconds per frame on a CPU
SETTINGS = ("backend", "sampler", "captioner", "caption", "depth_tiles", "control_dir", "steps", "guidance",
            "control_scale", "ip_scale", "strength", "size", "night_ratio", "dtype", "tiny", "min_agreement",
            "max_tries")
LCM_LORA_WEIGHT = "pytorch_lora_weights.safetensors"  # the file name in latent-consistency/lcm-lora-sdv1-5
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
JPEG_QUALITY = 95  # translations are training inputs: keep JPEG artefacts well below the night noise
DEPTH_RANGE = 80.0  # a control map's farthest / nearest depth in the audit: 1 m to md4all's 80 m cap
STALE_AGE_S = 60  # a temp file untouched this long has no writer (an image is written in well under a second)


def check_condition(cond):
    if cond not in PHRASES:
        raise ValueError(f"unknown condition {cond!r}: choose from {', '.join(PHRASES)}")


def sample_seed(key, cond, attempt=0):
    """Seed of one output: a stable hash (sha256) of its sample key, condition and attempt number
    (docs/method.md §1); attempt 0 hashes key and condition alone, as before re-draws existed."""
    text = f"{cond}/{key}" + (f"/{attempt}" if attempt else "")
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def condition_prompt(cond, caption):
    """Prompt = condition phrase + caption, docs/method.md §1 ("At night, a car driving down a street")."""
    check_condition(cond)
    return f"{PHRASES[cond]}, {caption}" if caption else PHRASES[cond]


def pick_style(style_paths, key, cond):
    """The sample's IP-Adapter reference: one of the condition's real images, seeded by the key."""
    return style_paths[sample_seed(key, cond + "/style") % len(style_paths)]


def load_image(path):
    """Open an image fully, so that a broken file fails here, naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def as_rgb8(image):
    """8-bit RGB of any PIL image. 16-bit greyscale (PNG modes 'I;16', 'I') is scaled by 1/257:
    PIL's convert("RGB") clips it, turning every value above 255 white."""
    if image.mode.startswith("I"):
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def in_source_mode(image, mode):
    """An 8-bit RGB translation back in the source's mode (16-bit greyscale: x 257)."""
    if mode.startswith("I"):
        grey = np.asarray(image.convert("L"), dtype=np.int32) * 257
        return Image.fromarray(grey.astype(np.uint16 if mode.startswith("I;16") else np.int32))
    return image.convert(mode)


def save_image(image, file, suffix):
    """Save in the format of the extension `suffix` (JPEG at JPEG_QUALITY)."""
    fmt = Image.registered_extensions()[suffix.lower()]
    image.save(file, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))


def save_atomic(image, path):
    """Write to a temp file in the same folder, then os.replace: an interrupted run never leaves a
    half-written output that a resume would skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_image(image, tmp, path.suffix)
    os.replace(tmp, path)


def as_saved(image, suffix):
    """The image as its file will read back (JPEG loses detail): what the student sees and the audit checks."""
    buffer = io.BytesIO()
    save_image(image, buffer, suffix)
    return load_image(buffer)


def write_json_atomic(obj, path):
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(paths):
    """Delete leftovers of killed runs: temp outputs `.<name>.tmp<pid>` and tiny-model folders
    `gdt-tiny-<pid>-*` / `<DIR>.tmp<pid>` whose process is gone and that nothing touched for a
    minute (a rank on another machine sharing the folder can have the same pid). Returns the count."""
    import shutil
    removed = 0
    for path in paths:
        match = re.search(r"(?:\.tmp|gdt-tiny-)(\d+)", os.path.basename(path))
        try:
            stale = match and not process_alive(int(match[1])) and time.time() - os.path.getmtime(path) > STALE_AGE_S
        except OSError:  # removed meanwhile by another rank
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else Path(path).unlink(missing_ok=True)
            removed += 1
    return removed


def to_uint8(x):
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def align_scale_shift(pred, target):
    """Closed-form least-squares scale s >= 0 and shift t of pred onto target (docs/method.md §1):
    s = cov(pred, target) / var(pred), t = mean(target) - s mean(pred). A negative scale would swap
    near and far, so it is held at 0 (the best fit is then the constant mean). Never
    torch.linalg.lstsq (its backward builds N x N matrices)."""
    pm, tm = pred.mean(), target.mean()
    s = max(((pred - pm) * (target - tm)).mean() / max(((pred - pm) ** 2).mean(), 1e-12), 0.0)
    return s * pred + (tm - s * pm)


def tiled_inverse_depth(predict, image, whole, tiles, overlap=0.25):
    """PatchFusion's idea [default]: a tiles x tiles grid (neighbours overlapping by `overlap` of a
    tile), each tile predicted at the model's full resolution, aligned to the whole-image map by
    scale and shift, blended with sine weights (no seams at tile borders)."""
    def spans(n):
        size = min(n, math.ceil(n / (tiles - (tiles - 1) * overlap)))
        return [(s, s + size) for s in np.linspace(0, n - size, tiles).round().astype(int)]
    acc, weight = np.zeros_like(whole), np.zeros_like(whole)
    for (y0, y1), (x0, x1) in [(ys, xs) for ys in spans(whole.shape[0]) for xs in spans(whole.shape[1])]:
        tile = align_scale_shift(predict(image.crop((x0, y0, x1, y1))), whole[y0:y1, x0:x1])
        w = np.outer(np.sin(np.pi * (np.arange(y1 - y0) + 0.5) / (y1 - y0)),
                     np.sin(np.pi * (np.arange(x1 - x0) + 0.5) / (x1 - x0)))
        acc[y0:y1, x0:x1] += w * tile
        weight[y0:y1, x0:x1] += w
    return acc / weight


def control_depth(predict, image, tiles=1):
    """The ControlNet depth image of a day image (docs/method.md §1): inverse depth, tiled when
    tiles > 1, normalised to [0, 1] per image, near = bright, (H, W, 3). `predict(pil) -> (H, W)`
    relative inverse depth (Depth-Anything and MiDaS predict disparity)."""
    inv = predict(image).astype(np.float64)
    inv = tiled_inverse_depth(predict, image, inv, tiles) if tiles > 1 else inv
    inv = (inv - inv.min()) / max(inv.max() - inv.min(), 1e-12)
    return np.repeat(inv[..., None], 3, axis=2).astype(np.float32)


def load_control_map(control_dir, key):
    """A precomputed depth condition `<control-dir>/<key with .png>` (8 or 16 bit, near = bright)."""
    path = Path(control_dir, key).with_suffix(".png")  # a missing map fails in load_image, naming it
    return control_depth(lambda _: np.asarray(load_image(path).convert("F")), None)  # the map is its own prediction


def geometry_agreement(predict, translation, control, tiles=1):
    """Geometry audit of one translation (docs/method.md §1): does it keep the day frame's depth?

    The depth model that made the control map (same tiling, same normalisation) predicts the
    translation's inverse depth; it is aligned to the control map by least-squares scale and shift
    in INVERSE depth, because both are relative inverse depth: the model's output is disparity up
    to an unknown scale and shift (as MiDaS and Depth-Anything are trained) and the control map is
    that disparity normalised to [0, 1]. There the unknowns are exactly an affine map; in depth an
    unknown disparity shift is not affine, and a fit would be ruled by the far pixels. Both maps
    are then read as depth over a DEPTH_RANGE of 80 (control 1 = the nearest pixel at depth 1,
    0 = depth 80; the aligned prediction clipped to that range) and compared like depth against
    ground truth: abs_rel = mean |d - d_ctrl| / d_ctrl, delta1 = share of pixels with
    max(d / d_ctrl, d_ctrl / d) < 1.25 (the --min-agreement metric). A translation that is the day
    image itself scores abs_rel 0, delta1 1. Returns (metrics, aligned map in control units)."""
    target = np.asarray(control, dtype=np.float64)[..., 0]
    pred = control_depth(predict, translation, tiles)[..., 0].astype(np.float64)
    aligned = np.clip(align_scale_shift(pred, target), 0.0, 1.0)
    depth = lambda c: 1.0 / (1.0 / DEPTH_RANGE + (1.0 - 1.0 / DEPTH_RANGE) * c)  # noqa: E731
    d, d_ctrl = depth(aligned), depth(target)
    ratio = np.maximum(d / d_ctrl, d_ctrl / d)
    return dict(abs_rel=float(np.mean(np.abs(d - d_ctrl) / d_ctrl)), delta1=float(np.mean(ratio < 1.25))), aligned


@torch.no_grad()
def caption_images(translator, images):
    """BLIP-2 (or BLIP) captions of the day images, docs/method.md §1; the fixed --caption with --captioner none."""
    if translator.captioner is None:
        return [translator.args.caption] * len(images)
    model, processor = translator.captioner
    inputs = processor(images=[as_rgb8(im) for im in images], return_tensors="pt")
    inputs = {k: v.to(model.device, model.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    return [c.strip() for c in processor.batch_decode(out, skip_special_tokens=True)]


@torch.no_grad()
def style_embeds(translator, style_paths):
    """Per-sample IP-Adapter image prompts (docs/method.md §1): the CLIP image embedding of each
    sample's own reference, (2B, 1, D) with the zero negative half first when guidance is on (a list
    of images would be one multi-image prompt for the whole batch). Cached: references repeat."""
    pipe, cache = translator.pipe, translator.style_cache
    for path in style_paths:
        if path not in cache:
            cache[path] = pipe.encode_image([as_rgb8(load_image(path))], pipe.device, 1)[0]
    pos = torch.cat([cache[p] for p in style_paths])[:, None]
    return torch.cat([torch.zeros_like(pos), pos]) if translator.args.guidance > 1 else pos


def per_sample_ip_adapter_embeds(ip_adapter_image, ip_adapter_image_embeds, device, batch_size, guidance):
    """Stands in for the pipeline's `prepare_ip_adapter_image_embeds`, which repeats given embeddings
    once per prompt (one reference shared by the batch): B per-sample references would become B^2
    rows, and every image would attend to all of them (diffusers issue #9813)."""
    if any(e.shape[0] != batch_size * (1 + bool(guidance)) for e in ip_adapter_image_embeds):
        raise ValueError(f"ip_adapter_image_embeds need one row per sample (x2 with guidance), batch {batch_size}")
    return [e.to(device) for e in ip_adapter_image_embeds]


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
    """Non-generative night / rain / fog / snow simulation [default baseline]: (H, W, 3) float in
    [0, 1] -> (H, W, 3) float32 in [0, 1], deterministic given the seed."""
    check_condition(cond)
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"classic_translate expects an (H, W, 3) image, got shape {x.shape}")
    rng, (h, w, _) = np.random.default_rng(seed), x.shape
    if cond == "night":  # gamma + darkening, blue tint, bloom of bright pixels, headlight-like glows, read + shot noise
        y = 0.35 * x ** 2.2 * np.array([0.75, 0.85, 1.15], np.float32)
        y = y + 0.8 * blur(x * (x.mean(2, keepdims=True) > 0.8), 0.02 * w)
        n = rng.integers(2, 6)  # headlight-like glows around the horizon band (a gaussian is separable)
        cy, cx, r = rng.uniform(0.45, 0.7, n) * h, rng.uniform(0.05, 0.95, n) * w, rng.uniform(0.01, 0.03, n) * w
        bump = lambda c, size: np.exp(-(np.arange(size)[None] - c[:, None]) ** 2 / (2 * r[:, None] ** 2))  # noqa: E731
        glow = (bump(cy, h).T @ bump(cx, w)).astype(np.float32)
        y = y + 0.6 * glow[..., None] * np.array([1.0, 0.85, 0.6], np.float32)
        y = y + (0.01 + 0.03 * np.sqrt(np.clip(y, 0, 1))) * rng.standard_normal(x.shape, dtype=np.float32)
    elif cond == "rain":  # contrast loss, grey haze, slanted streaks, a slight blur
        slant, length = rng.uniform(-0.3, 0.3), 0.03 * h
        streaks = marks(x.shape, rng, h * w // 800, lambda pen, px, py, u: pen.line(
            [(px, py), (px + slant * length * (0.5 + u), py + length * (0.5 + u))], fill=int(120 + 135 * u)))
        y = blur(0.75 * (x.mean() + 0.7 * (x - x.mean())) + 0.25 * 0.55, 1.0) * (1 - 0.35 * streaks) + 0.3 * streaks
    elif cond == "fog":  # depth-free haze: contrast loss and airlight, thicker towards the top (usually far away)
        t = np.clip(0.3 + 0.5 * np.linspace(0, 1, h, dtype=np.float32)[:, None, None] / rng.uniform(0.8, 1.2), 0, 1)
        y = (x.mean() + 0.8 * (x - x.mean())) * t + rng.uniform(0.75, 0.85) * (1 - t)
    else:  # snow: brightening, desaturation, flakes of a few pixels
        r = max(1.0, w / 800)
        flakes = marks(x.shape, rng, h * w // 300, lambda pen, px, py, u: pen.ellipse(
            [px - (q := r * (0.5 + 2 * u)), py - q, px + q, py + q], fill=int(150 + 105 * u)))
        y = (0.75 * (0.7 * x + 0.3 * x.mean(2, keepdims=True)) + 0.22) * (1 - flakes) + flakes
    return np.clip(y, 0, 1).astype(np.float32)


def darken_night(generated, day, ratio):
    """Night post-processing (docs/method.md §1): scale so the mean intensity is `ratio` of the day image's
    (0.40, the nuScenes night/day ratio); an already darker image is left as it is."""
    gen = np.asarray(generated, dtype=np.float32) / 255.0
    target = ratio * np.asarray(as_rgb8(day), dtype=np.float32).mean() / 255.0
    return Image.fromarray(to_uint8(gen * min(1.0, target / max(gen.mean(), 1e-6))))


@dataclass
class Translator:
    """Everything `translate_batch` needs, loaded once by `build_translator`."""
    args: argparse.Namespace
    pipe: object = None          # diffusers ControlNet pipeline; None for --backend classic
    captioner: tuple = None      # (model, processor); None: the fixed --caption
    depth: object = None         # predict(pil) -> inverse depth; None with --control-dir until main loads the audit's
    styles: dict = None          # cond -> sorted reference image paths; None without IP-Adapter
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    micro_batch: int = 1         # images per model call, see build_translator
    style_cache: dict = field(default_factory=dict)


def style_folders(args):
    """cond -> reference images: `--style-dir COND=DIR` per condition, `--style-dir DIR` with DIR/<cond>/,
    or `--style-dir data`: the nuScenes training scenes of the condition (the paper's choice)."""
    if args.style_dir == ["data"]:
        if args.dataset != "nuscenes":
            raise ValueError("--style-dir data draws from nuScenes night / rain training scenes: use --dataset "
                             "nuscenes, or pass --style-dir COND=DIR")
        return {c: [os.path.join(args.data_root, p) for p in data.condition_frames(args.data_root, args.version, c)]
                for c in args.cond}
    folders = {}
    for entry in args.style_dir or []:
        cond, _, folder = entry.partition("=")
        folders.update({cond: folder} if cond in PHRASES and folder else
                       {c: os.path.join(entry, c) for c in args.cond if c not in folders})
    for cond in args.cond:
        if not os.path.isdir(folders.get(cond, "")):
            raise ValueError(f"IP-Adapter needs real '{cond}' reference images: pass --style-dir {cond}=DIR or "
                             f"--style-dir DIR with DIR/{cond}/ (not found: {folders.get(cond)}), or --no-ip-adapter")
    return {c: [os.path.join(folders[c], p) for p in data.list_images("folder", folders[c])] for c in args.cond}


def load(load_fn, name, alternative="", **kwargs):
    return from_pretrained_or_explain(load_fn, name, alternative + "--tiny for random tiny models", **kwargs)


def use_tiny_models(args):
    """--tiny: write the random tiny models (to DIR, or a temp folder removed at exit) and use their
    paths in place of the hub ids; first remove the tiny folders of killed runs."""
    import tiny_models
    leftovers = [str(p) for p in Path(tempfile.gettempdir()).glob("gdt-tiny-*")]
    remove_stale(leftovers + ([str(p) for p in Path(args.tiny).parent.glob(Path(args.tiny).name + ".tmp*")]
                              if args.tiny else []))
    vars(args).update(tiny_models.save_tiny_models(args.tiny or None))


def load_depth_model(args, device, dtype, alternative="--control-dir or "):
    """predict(pil) -> (H, W) relative inverse depth at the image's size, from --depth-model."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    model = load(AutoModelForDepthEstimation.from_pretrained, args.depth_model, alternative,
                 dtype=dtype).to(device).eval()
    processor = load(AutoImageProcessor.from_pretrained, args.depth_model)

    @torch.no_grad()
    def predict(image):
        pixels = processor(images=as_rgb8(image), return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels.to(device, dtype)).predicted_depth[:, None].float()
        return F.interpolate(out, size=(image.height, image.width), mode="bicubic")[0, 0].cpu().numpy()
    return predict


def build_translator(args):
    """Load every GDT model once: hub ids or local folders (`--tiny` writes random tiny models to a
    folder and loads them back through this same code). The depth model is loaded here when it makes
    the control maps; with --control-dir main loads it for the audit."""
    if args.backend == "classic":
        return Translator(args)
    styles = None if args.no_ip_adapter else style_folders(args)
    if args.tiny is not None:
        use_tiny_models(args)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES.get(args.dtype, torch.float16 if device.type == "cuda" else torch.float32)  # auto: fp16 on GPU
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # reruns reproduce bit for bit
    from diffusers import (ControlNetModel, LCMScheduler, StableDiffusionControlNetImg2ImgPipeline,
                           StableDiffusionControlNetPipeline, UniPCMultistepScheduler)
    from transformers import AutoModelForImageTextToText, AutoProcessor
    captioner = None
    if args.captioner != "none":
        model = load(AutoModelForImageTextToText.from_pretrained, args.caption_model, "--captioner none or ",
                     dtype=dtype)
        captioner = model.to(device).eval(), load(AutoProcessor.from_pretrained, args.caption_model)
    depth = None if args.control_dir else load_depth_model(args, device, dtype)
    controlnet = load(ControlNetModel.from_pretrained, args.controlnet, dtype=dtype)
    pipeline = StableDiffusionControlNetImg2ImgPipeline if args.strength else StableDiffusionControlNetPipeline
    pipe = load(pipeline.from_pretrained, args.sd_model, controlnet=controlnet, safety_checker=None,
                requires_safety_checker=False, dtype=dtype)
    if args.sampler == "lcm":  # LCM-LoRA folded into the UNet weights: the sampler then costs what plain SD costs
        from diffusers.utils import logging as diffusers_logging
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder": right, it adapts the UNet only
        try:
            load(pipe.load_lora_weights, args.lcm_lora, "--sampler unipc or ", weight_name=LCM_LORA_WEIGHT)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    else:
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    if styles is not None:
        subfolder, weight = os.path.split(args.ip_adapter_weight)
        load(pipe.load_ip_adapter, args.ip_adapter, "--no-ip-adapter or ", subfolder=subfolder, weight_name=weight)
        pipe.set_ip_adapter_scale(args.ip_scale)
        pipe.prepare_ip_adapter_image_embeds = per_sample_ip_adapter_embeds
    pipe.to(device)
    if device.type == "cuda":  # NHWC convolutions feed tensor cores without layout transposes
        for module in (pipe.unet, pipe.controlnet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if args.compile:
        pipe.unet.compile()
        pipe.controlnet.compile()
    pipe.set_progress_bar_config(disable=True)
    # Images per model call. CPU: one, as BLAS/oneDNN pick kernels by batch size (a batched image differs in its last
    # bits from itself alone) and one image fills the cores. GPU: --batch-size, padded to it in translate_batch.
    return Translator(args, pipe, captioner, depth, styles, device, dtype,
                      1 if device.type == "cpu" else args.batch_size)


def denoiser_calls_per_image(args):
    """UNet + ControlNet evaluations per translated image and attempt: the denoising steps (steps x
    strength with img2img), each doubled by classifier-free guidance when guidance > 1 (the
    LCM-LoRA UNet has no guidance embedding, so diffusers doubles it too). Defaults: UniPC 30 x 2
    = 60, LCM 4 x 1 = 4. Times the FLOPs of one call at batch 1: the sampler's FLOPs per image."""
    steps = min(int(args.steps * args.strength), args.steps) if args.strength else args.steps
    return steps * (2 if args.guidance > 1 else 1)


def prepare_batch(translator, images, keys):
    """Caption and depth condition of each frame: computed once, shared by all its conditions and attempts."""
    t, a, n = translator, translator.args, translator.micro_batch
    if t.pipe is None:
        return None, None
    images = [as_rgb8(im) for im in images]
    captions = [c for i in range(0, len(images), n) for c in caption_images(t, images[i:i + n])]
    return captions, [load_control_map(a.control_dir, k) if a.control_dir else control_depth(t.depth, im, a.depth_tiles)
                      for im, k in zip(images, keys)]


def run_record(args):
    """What every manifest record of this run carries: the settings and the models it used."""
    if args.backend == "classic":
        return dict(settings={"backend": "classic"}, models={})
    used = ["sd_model", "controlnet"] + ["lcm_lora"] * (args.sampler == "lcm")
    used += ["caption_model"] * (args.captioner != "none")
    used += ["ip_adapter", "ip_adapter_weight"] * (not args.no_ip_adapter)
    used += ["depth_model"] * (not args.control_dir or not args.no_audit)
    return dict(settings={k: getattr(args, k) for k in SETTINGS}, models={k: getattr(args, k) for k in used})


def translate_batch(translator, images, keys, cond, captions=None, controls=None, attempt=0):
    """GDT of a batch into one condition (docs/method.md §1): PIL day images and their sample keys
    -> (RGB images at the source sizes, one manifest record each). SD 1.5 + depth ControlNet from
    noise (img2img with --strength), one torch.Generator per image seeded by (key, cond, attempt),
    per-sample style embeddings."""
    check_condition(cond)
    t, a, n, (h, w) = translator, translator.args, translator.micro_batch, translator.args.size
    images = [as_rgb8(im) for im in images]
    seeds = [sample_seed(k, cond, attempt) for k in keys]
    record = dict(cond=cond, attempt=attempt, **run_record(a))
    if t.pipe is None:
        outs = [Image.fromarray(to_uint8(classic_translate(np.asarray(im, np.float32) / 255, cond, s)))
                for im, s in zip(images, seeds)]
        return outs, [dict(record, key=k, seed=s) for k, s in zip(keys, seeds)]
    if captions is None or controls is None:
        captions, controls = prepare_batch(t, images, keys)
    styles = [pick_style(t.styles[cond], k, cond) if t.styles else None for k in keys]
    outs = []
    for i in range(0, len(images), n):
        # a short last batch is padded: an image meets the same kernel shapes whatever its batch-mates
        pad = lambda xs: xs[i:i + n] + xs[-1:] * (i + n - len(xs))  # noqa: E731
        kwargs = dict(prompt=[condition_prompt(cond, c) for c in pad(captions)], negative_prompt=[NEGATIVE_PROMPT] * n,
                      image=[Image.fromarray(to_uint8(c)).resize((w, h), Image.BICUBIC) for c in pad(controls)],
                      height=h, width=w, num_inference_steps=a.steps, guidance_scale=a.guidance,
                      controlnet_conditioning_scale=a.control_scale, output_type="np",
                      generator=[torch.Generator().manual_seed(s) for s in pad(seeds)])  # CPU: same noise anywhere
        if t.styles:
            kwargs["ip_adapter_image_embeds"] = [style_embeds(t, pad(styles))]
        if a.strength:
            kwargs.update(control_image=kwargs["image"], strength=a.strength,
                          image=[im.resize((w, h), Image.BICUBIC) for im in pad(images)])
        for day, gen in zip(images[i:i + n], t.pipe(**kwargs).images):
            out = Image.fromarray(to_uint8(gen)).resize(day.size, Image.LANCZOS)
            outs.append(darken_night(out, day, a.night_ratio) if cond == "night" and a.night_ratio > 0 else out)
    return outs, [dict(record, key=k, seed=s, caption=c, prompt=condition_prompt(cond, c),
                       negative_prompt=NEGATIVE_PROMPT, style=st) for k, s, c, st in zip(keys, seeds, captions, styles)]


def translate_audited(translator, images, keys, cond, captions=None, controls=None):
    """GDT with the geometry audit and re-draws (docs/method.md §1): a translation whose delta1
    agreement is under --min-agreement is drawn again with the next attempt's seed, up to
    --max-tries. The audit sees each image as its file will read back (source mode and format).
    -> per frame (image in the source's mode, record): the first passing attempt ("status": "ok"),
    else the best one ("rejected"); the record lists every attempt's seed and agreement."""
    a, audit = translator.args, translator.pipe is not None and not translator.args.no_audit
    if audit and translator.depth is None:
        raise ValueError("the geometry audit needs a depth model: set translator.depth = load_depth_model(...) "
                         "or pass --no-audit")
    if translator.pipe is not None and (captions is None or controls is None):
        captions, controls = prepare_batch(translator, images, keys)
    best, attempts, todo = [None] * len(keys), [[] for _ in keys], list(range(len(keys)))
    quality = lambda record: record["agreement"]["delta1"] if audit else 1.0  # noqa: E731
    for attempt in range(a.max_tries):
        pick = lambda xs: xs and [xs[j] for j in todo]  # noqa: E731 (None stays None)
        outs, records = translate_batch(translator, pick(images), pick(keys), cond, pick(captions), pick(controls),
                                        attempt)
        for j, out, record in zip(todo, outs, records):
            out = in_source_mode(out, images[j].mode)
            if audit:
                saved = as_saved(out, Path(keys[j]).suffix)
                record["agreement"] = geometry_agreement(translator.depth, saved, controls[j], a.depth_tiles)[0]
            attempts[j].append({k: record[k] for k in ("attempt", "seed", "agreement") if k in record})
            if best[j] is None or quality(record) > quality(best[j][1]):
                best[j] = out, record
        todo = [j for j in todo if quality(best[j][1]) < a.min_agreement]
        if not todo:
            break
    for j, (out, record) in enumerate(best):
        record.update(status="ok" if quality(record) >= a.min_agreement else "rejected", attempts=attempts[j])
    return best


def read_manifests(folder):
    """output -> its last record, over every `manifest.rank*.jsonl` of one condition folder. A
    torn last line (a run killed while writing it) is skipped; a broken line elsewhere is an error."""
    records = {}
    for path in sorted(Path(folder).glob("manifest.rank*.jsonl")):
        lines = path.read_text().split("\n")
        for n, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                if n == len(lines):  # no newline after it: the write was cut
                    continue
                raise ValueError(f"{path} line {n} is not JSON: delete that line (the frame is then redone)")
            if record:
                records[record.get("output", record.get("key"))] = record
    return records


def already_rejected(args, cond):
    """Frames recorded as rejected under the same --min-agreement and --max-tries: done, not redrawn."""
    same = lambda s: s.get("min_agreement") == args.min_agreement and s.get("max_tries") == args.max_tries  # noqa: E731
    return {out for out, r in read_manifests(Path(args.out, cond)).items()
            if r.get("status") == "rejected" and same(r.get("settings", {}))}


def resolve_defaults(args):
    """Defaults that depend on other flags: the sampler's steps and guidance; --tiny: a smoke run."""
    sampler = SAMPLERS[args.sampler]
    if args.steps is None:
        args.steps = TINY_DEFAULTS["steps"] if args.tiny is not None else sampler["steps"]
    args.guidance = sampler["guidance"] if args.guidance is None else args.guidance
    args.size = args.size or (TINY_DEFAULTS["size"] if args.tiny is not None else (576, 1024))
    args.caption_model = args.caption_model or CAPTION_MODELS.get(args.captioner)
    if not args.report:  # the report takes the run's own model from its manifest
        args.depth_model = args.depth_model or DEPTH_MODEL
    return args


DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The docstring's runbook as written, and each flag's default (when it has one worth showing)."""
    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=("nuscenes", "robotcar", "folder"), default="folder",
                   help="folder: every .jpg/.jpeg/.png below --data-root; else the split's training frames")
    p.add_argument("--data-root", help="the dataset (required, except with --report)")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version folder")
    p.add_argument("--split", default="train", help="nuScenes / RobotCar split to translate")
    p.add_argument("--out", help="writes OUT/<cond>/<path relative to --data-root> (required, except with --report)")
    p.add_argument("--cond", nargs="+", default=["night", "rain"], choices=list(PHRASES), help="target conditions")
    p.add_argument("--backend", choices=("diffusion", "classic"), default="diffusion",
                   help="diffusion: SD 1.5 + depth ControlNet (the paper); classic: a no-model simulation")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="unipc",
                   help="unipc: the paper's setting; lcm: SD 1.5 + --lcm-lora, LCMScheduler, 4 steps, guidance 1")
    p.add_argument("--lcm-lora", default="latent-consistency/lcm-lora-sdv1-5", help="LoRA for --sampler lcm")
    p.add_argument("--captioner", choices=("blip2", "blip", "none"), default="blip2",
                   help="blip2 needs about 24 GB in fp32 on a CPU: use blip or none there")
    p.add_argument("--caption-model", help="default: blip2-opt-2.7b, or BLIP-base with --captioner blip")
    p.add_argument("--caption", default="a street scene", help="the caption with --captioner none")
    p.add_argument("--depth-model", help=f"default {DEPTH_MODEL}, or Intel/dpt-hybrid-midas: a transformers depth "
                   "model predicting relative inverse depth (control maps and the geometry audit)")
    p.add_argument("--depth-tiles", type=int, default=1, help="N: refine the depth on an NxN grid of tiles")
    p.add_argument("--control-dir", help="precomputed depth maps DIR/<key>.png instead of --depth-model")
    p.add_argument("--no-audit", action="store_true", help="skip the geometry audit (no depth model run on outputs)")
    p.add_argument("--min-agreement", type=float, default=0.0,
                   help="draw a frame again while its delta1 geometry agreement is below this (0: keep every draw)")
    p.add_argument("--max-tries", type=int, default=3, help="draws per frame before it is recorded as rejected")
    p.add_argument("--keep-rejected", action="store_true", help="write rejected frames to OUT/<cond>/rejected/")
    p.add_argument("--style-dir", action="append",
                   help="DIR holding DIR/<cond>/, COND=DIR (repeatable), or 'data' (nuScenes train scenes of the cond)")
    p.add_argument("--no-ip-adapter", action="store_true", help="no image prompt (no --style-dir needed)")
    p.add_argument("--ip-adapter", default="h94/IP-Adapter", help="IP-Adapter repository or folder")
    p.add_argument("--ip-adapter-weight", default="models/ip-adapter_sd15.bin", help="+ image_encoder/ beside it")
    p.add_argument("--ip-scale", type=float, default=0.6, help="IP-Adapter strength")
    p.add_argument("--sd-model", default="stable-diffusion-v1-5/stable-diffusion-v1-5", help="SD 1.5 id or folder")
    p.add_argument("--controlnet", default="lllyasviel/control_v11f1p_sd15_depth", help="depth ControlNet")
    p.add_argument("--steps", type=int, help="default 30 (unipc), 4 (lcm), 2 with --tiny")
    p.add_argument("--guidance", type=float, help="default 7.5 (unipc), 1 (lcm: 1-2; 1 runs no negative pass)")
    p.add_argument("--control-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    p.add_argument("--strength", type=float, help="img2img from the day image instead of from noise")
    p.add_argument("--size", type=data.parse_size,
                   help="HxW generated (multiples of 8), resized back; default 576x1024, 64x112 with --tiny")
    p.add_argument("--night-ratio", type=float, default=0.40, help="night mean / day mean; 0: off")
    p.add_argument("--batch-size", type=int, default=4, help="frames loaded together; images per call on a GPU")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on GPU, else fp32")
    p.add_argument("--tiny", nargs="?", const="", help="random tiny models, written to DIR (reused if there) or a "
                   "temp folder; defaults become a smoke run (64x112, 2 steps)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet (GPU, long runs)")
    p.add_argument("--report", metavar="OUT_DIR", help="summarise --gdt-root into OUT_DIR instead of translating")
    p.add_argument("--gdt-root", help="with --report: a gdt.py output folder")
    args = resolve_defaults(p.parse_args(argv))
    if args.report and not args.gdt_root:
        p.error("--report OUT_DIR summarises a GDT folder: add --gdt-root GDT (the --out of the gdt.py run)")
    if not args.report and not (args.data_root and args.out):
        p.error("--data-root and --out are required (or --report OUT_DIR --gdt-root GDT)")
    if any(v <= 0 or v % 8 for v in args.size):
        p.error("--size: give HxW, both multiples of 8 (e.g. 576x1024)")
    if args.strength is not None and not (0 < args.strength <= 1 and args.steps * args.strength >= 1):
        p.error("--strength must be in (0, 1] with --steps x --strength >= 1 (else no denoising step runs)")
    if args.sampler == "lcm" and not 1 <= args.guidance <= 2:
        p.error("--sampler lcm: --guidance must be 1-2 (the LCM-LoRA is distilled for that; above, images burn)")
    if not 0 <= args.min_agreement <= 1:
        p.error("--min-agreement is a delta1 share of pixels: give a value in [0, 1], e.g. 0.8")
    if args.min_agreement > 0 and (args.no_audit or args.backend == "classic"):
        p.error("--min-agreement needs the geometry audit: drop --no-audit (the classic backend has no control map)")
    if args.keep_rejected and not args.min_agreement:
        p.error("--keep-rejected keeps frames under --min-agreement: give --min-agreement too")
    for flag in ("max_tries", "batch_size", "depth_tiles", "steps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        return write_report(args)
    if Path(args.out).resolve().is_relative_to(Path(args.data_root).resolve()):
        raise ValueError(f"--out {args.out} is inside --data-root {args.data_root}: GDT never writes into the dataset")
    keys = data.list_images(args.dataset, args.data_root, args.version, args.split)
    if not keys:
        raise ValueError(f"no images for --dataset {args.dataset} --split {args.split} under {args.data_root}")
    stale = remove_stale([os.path.join(d, n) for c in args.cond for d, _, names in os.walk(Path(args.out, c))
                          for n in names if n.startswith(".") and ".tmp" in n])
    if stale:
        print(f"removed {stale} half-written temp files of an interrupted run")
    # ranks split the whole sorted frame list (strided), not what is left of it: ranks that start at
    # different moments still agree; then each frame keeps the conditions it still lacks
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    rejected = {c: already_rejected(args, c) for c in args.cond}
    work = [(k, [c for c in args.cond if not Path(args.out, c, k).exists() and k not in rejected[c]])
            for k in keys[rank::world]]
    work = [(k, conds) for k, conds in work if conds]
    total = sum(len(conds) for _, conds in work)
    print(f"rank {rank}: {total} images to translate into {', '.join(args.cond)}")
    translator = build_translator(args) if work else None
    if translator and translator.pipe is not None and translator.depth is None and not args.no_audit:
        translator.depth = load_depth_model(args, translator.device, translator.dtype, "--no-audit or ")  # the audit's
    counts = {c: dict(ok=0, rejected=0) for c in args.cond}
    with tqdm(total=total, unit="img", disable=rank != 0) as bar:
        for i in range(0, len(work), args.batch_size):
            batch = work[i:i + args.batch_size]
            keys = [k for k, _ in batch]
            images = [load_image(os.path.join(args.data_root, k)) for k in keys]
            captions, controls = prepare_batch(translator, images, keys)
            for cond in args.cond:
                idx = [j for j, (_, conds) in enumerate(batch) if cond in conds]
                pick = lambda xs: xs and [xs[j] for j in idx]  # noqa: E731 (None stays None)
                results = translate_audited(translator, pick(images), pick(keys), cond, pick(captions), pick(controls))
                for j, (out, record) in zip(idx, results):
                    folder = Path(args.out, cond) if record["status"] == "ok" else Path(args.out, cond, "rejected")
                    if record["status"] == "ok" or args.keep_rejected:
                        save_atomic(out, folder / keys[j])
                    record.update(source=os.path.abspath(os.path.join(args.data_root, keys[j])), output=keys[j])
                    counts[cond][record["status"]] += 1
                    # a manifest per rank: ranks never append to the same file
                    Path(args.out, cond).mkdir(parents=True, exist_ok=True)
                    with open(Path(args.out, cond, f"manifest.rank{rank}.jsonl"), "a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.update(len(idx))
    if total:
        print(f"rank {rank}: " + "; ".join(f"{c}: {n['ok']} written, {n['rejected']} rejected"
                                           for c, n in counts.items()))


def percentiles(values):
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), **{f"p{q}": float(np.percentile(v, q)) for q in (5, 25, 50, 75, 95)},
            "max": float(v.max()), "mean": float(v.mean())}


def agreement_histogram(delta1, threshold, title, path):
    """PNG histogram of the delta1 agreements (20 bins over [0, 1]), --min-agreement as a red line."""
    width, height, (x0, x1, y0, y1) = 480, 260, (40, 465, 28, 225)
    counts = np.histogram(delta1, bins=20, range=(0, 1))[0]
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    for b, count in enumerate(counts):
        left = x0 + (x1 - x0) * b / 20
        pen.rectangle([left + 1, y1 - (y1 - y0) * count / max(counts.max(), 1), left + (x1 - x0) / 20 - 1, y1],
                      fill=(70, 110, 180))
    pen.line([x0, y0, x0, y1, x1, y1], fill="black")
    for v in (0, 0.25, 0.5, 0.75, 1):
        pen.text((x0 + (x1 - x0) * v - 8, y1 + 4), f"{v:g}", fill="black")
    pen.text((4, y0 - 4), str(counts.max()), fill="black")
    pen.text((4, y1 - 10), "0", fill="black")
    if threshold:
        pen.line([x0 + (x1 - x0) * threshold, y0, x0 + (x1 - x0) * threshold, y1], fill=(220, 30, 30), width=2)
    pen.text((x0, 6), title, fill="black")
    pen.text((x0 + 90, y1 + 18), "delta1: share of pixels within 1.25x of the control depth", fill="black")
    save_atomic(image, Path(path))


def contact_sheet(rows, path, height=96):
    """One PNG of rows (label, [day, control depth, translation, depth of the translation]), each
    panel `height` pixels high, in titled columns."""
    titles = ("day", "control depth", "translation", "its depth, aligned")
    rows = [(label, [im.resize((round(im.width * height / im.height), height)) for im in panels])
            for label, panels in rows]
    lefts = np.cumsum([0] + [max(panels[c].width for _, panels in rows) + 4 for c in range(len(titles))])
    sheet = Image.new("RGB", (int(lefts[-1]), 16 + len(rows) * (height + 16)), "white")
    pen = ImageDraw.Draw(sheet)
    for left, title in zip(lefts, titles):
        pen.text((int(left) + 2, 2), title, fill="black")
    for r, (label, panels) in enumerate(rows):
        top = 16 + r * (height + 16)
        for left, im in zip(lefts, panels):
            sheet.paste(im.convert("RGB"), (int(left), top))
        pen.text((2, top + height + 2), label, fill="black")
    save_atomic(sheet, Path(path))


def worst_frames_sheet(args, cond, records, path, loaded, count=16):
    """Contact sheet of the `count` frames of lowest delta1 that have an image (ok, or kept rejected),
    their depth maps recomputed with the run's depth model (or --depth-model / --tiny; kept in
    `loaded` for the next condition). Returns their recomputed agreements: the manifest's when the
    model is the run's."""
    folder = Path(args.gdt_root, cond)
    image_of = lambda r: folder / r["output"] if r["status"] == "ok" else folder / "rejected" / r["output"]  # noqa
    shown = sorted((r for r in records if image_of(r).exists()), key=lambda r: r["agreement"]["delta1"])[:count]
    if not shown:
        return []
    settings = shown[0].get("settings", {})
    args.depth_model = args.depth_model or shown[0].get("models", {}).get("depth_model") or DEPTH_MODEL
    if args.depth_model not in loaded:
        loaded[args.depth_model] = load_depth_model(args, torch.device("cpu"), torch.float32, "--depth-model DIR or ")
    predict = loaded[args.depth_model]
    tiles, control_dir, rows, worst = settings.get("depth_tiles", 1), settings.get("control_dir"), [], []
    for r in shown:
        day = as_rgb8(load_image(os.path.join(args.data_root, r["key"]) if args.data_root else r["source"]))
        control = load_control_map(control_dir, r["key"]) if control_dir else control_depth(predict, day, tiles)
        translation = as_rgb8(load_image(image_of(r)))
        metrics, aligned = geometry_agreement(predict, translation, control, tiles)
        grey = lambda x: Image.fromarray(to_uint8(x[..., 0] if x.ndim == 3 else x))  # noqa: E731
        rows.append((f"{r['output']}  delta1 {metrics['delta1']:.3f}  abs_rel {metrics['abs_rel']:.3f}  {r['status']}",
                     [day, grey(control), translation, grey(aligned)]))
        worst.append(dict(output=r["output"], status=r["status"], **metrics))
    contact_sheet(rows, path)
    return worst


def write_report(args):
    """`--report OUT_DIR --gdt-root GDT`: per condition the count, the rejection rate, the delta1 /
    abs_rel percentiles (report.json), the delta1 histogram (<cond>_agreement.png) and the worst 16
    frames (<cond>_worst.png: day | control depth | translation | its depth)."""
    out, summary, loaded = Path(args.report), {}, {}
    conds = sorted(p.parent.name for p in Path(args.gdt_root).glob("*/manifest.rank*.jsonl"))
    if not conds:
        raise ValueError(f"no manifest.rank*.jsonl under {args.gdt_root}/<cond>/: is it the --out of a gdt.py run?")
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny is not None:
        use_tiny_models(args)  # the depth maps of the worst frames: the tiny run's own depth model
    for cond in dict.fromkeys(conds):
        records = list(read_manifests(Path(args.gdt_root, cond)).values())
        for r in records:
            r.setdefault("status", "ok")  # runs from before the audit
        audited = [r for r in records if r.get("agreement")]
        rejected = sum(r["status"] == "rejected" for r in records)
        s = summary[cond] = dict(count=len(records), ok=len(records) - rejected, rejected=rejected,
                                 rejection_rate=rejected / len(records), audited=len(audited))
        if audited:
            threshold = max(r.get("settings", {}).get("min_agreement") or 0 for r in audited)
            agreement_histogram([r["agreement"]["delta1"] for r in audited], threshold,
                                f"{cond}: {len(audited)} audited, {rejected} rejected", out / f"{cond}_agreement.png")
            s.update(min_agreement=threshold, histogram=f"{cond}_agreement.png",
                     mean_attempts=float(np.mean([len(r.get("attempts", [0])) for r in audited])),
                     delta1=percentiles([r["agreement"]["delta1"] for r in audited]),
                     abs_rel=percentiles([r["agreement"]["abs_rel"] for r in audited]))
            s["worst"] = worst_frames_sheet(args, cond, audited, out / f"{cond}_worst.png", loaded)
            s["contact_sheet"] = f"{cond}_worst.png" if s["worst"] else None
        print(f"{cond}: {s['count']} frames, {rejected} rejected ({100 * s['rejection_rate']:.1f}%), "
              + (f"delta1 median {s['delta1']['p50']:.3f} (p5 {s['delta1']['p5']:.3f})" if audited else "not audited"))
    write_json_atomic(summary, out / "report.json")
    print(f"report: {out / 'report.json'} and the PNGs beside it")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise SystemExit(f"gdt.py: error: {e}")
