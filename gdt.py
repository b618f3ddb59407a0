"""GDT: generative day -> night / rain / snow / fog translation of the training images (SPEC §1).

    python gdt.py --dataset nuscenes --data-root /data/nuscenes --out /data/gdt --cond night rain \
        --style-dir data     # IP-Adapter references: the train split's own night / rain scenes (the paper)
    python gdt.py --dataset folder --data-root my_images --out gdt --cond night --style-dir night=real_night/
    torchrun --standalone --nproc_per_node=8 gdt.py ...   # same flags: frames split over the ranks
    python gdt.py --backend classic ... | --tiny --steps 2 --size 64x64 ...  # no-model baseline | offline smoke run

Speed: `python bench.py --only gdt` (ours vs the naive per-image pipeline, BENCHMARKS.md).

Writes `<out>/<cond>/<path relative to --data-root>` (the source's format, size and mode) and a
JSONL record per image to `<out>/<cond>/manifest.rank<r>.jsonl` (an output's last record wins).
Seeds hash the key and condition: any subset, order, rank count or resume gives the same image;
existing outputs are skipped. Models are hub ids or local folders. From another script:
`translator = build_translator(parse_args([...])); images, records = translate_batch(translator,
pil_images, keys, "night")`.
"""
import argparse
import hashlib
import json
import math
import os
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
SETTINGS = ("backend", "captioner", "caption", "depth_tiles", "control_dir", "steps", "guidance", "control_scale",
            "ip_scale", "strength", "size", "night_ratio", "dtype", "tiny")
MODELS = ("caption_model", "depth_model", "sd_model", "controlnet", "ip_adapter", "ip_adapter_weight")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
JPEG_QUALITY = 95  # translations are training inputs: keep JPEG artefacts well below the night noise


def check_condition(cond):
    if cond not in PHRASES:
        raise ValueError(f"unknown condition {cond!r}: choose from {', '.join(PHRASES)}")


def sample_seed(key, cond):
    """Seed of one output: a stable hash (sha256) of its sample key and condition, SPEC §1."""
    return int.from_bytes(hashlib.sha256(f"{cond}/{key}".encode()).digest()[:8], "big") >> 1


def condition_prompt(cond, caption):
    """Prompt = condition phrase + caption, SPEC §1 ("At night, a car driving down a street")."""
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


def save_atomic(image, path):
    """Write in the format of the extension to a temp file in the same folder, then os.replace:
    an interrupted run never leaves a half-written output that a resume would skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions()[path.suffix.lower()]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    image.save(tmp, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    os.replace(tmp, path)


def to_uint8(x):
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def align_scale_shift(pred, target):
    """Closed-form least-squares scale s and shift t of pred onto target (SPEC §1 tiling):
    s = cov(pred, target) / var(pred), t = mean(target) - s mean(pred). Never torch.linalg.lstsq."""
    pm, tm = pred.mean(), target.mean()
    s = ((pred - pm) * (target - tm)).mean() / max(((pred - pm) ** 2).mean(), 1e-12)
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
    """The ControlNet depth image of a day image (SPEC §1): inverse depth, tiled when tiles > 1,
    normalised to [0, 1] per image, near = bright, (H, W, 3). `predict(pil) -> (H, W)` relative
    inverse depth (Depth-Anything and MiDaS predict disparity)."""
    inv = predict(image).astype(np.float64)
    inv = tiled_inverse_depth(predict, image, inv, tiles) if tiles > 1 else inv
    inv = (inv - inv.min()) / max(inv.max() - inv.min(), 1e-12)
    return np.repeat(inv[..., None], 3, axis=2).astype(np.float32)


def load_control_map(control_dir, key):
    """A precomputed depth condition `<control-dir>/<key with .png>` (8 or 16 bit, near = bright)."""
    path = Path(control_dir, key).with_suffix(".png")  # a missing map fails in load_image, naming it
    return control_depth(lambda _: np.asarray(load_image(path).convert("F")), None)  # the map is its own prediction


@torch.no_grad()
def caption_images(translator, images):
    """BLIP-2 (or BLIP) captions of the day images, SPEC §1; the fixed --caption with --captioner none."""
    if translator.captioner is None:
        return [translator.args.caption] * len(images)
    model, processor = translator.captioner
    inputs = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    inputs = {k: v.to(model.device, model.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    return [c.strip() for c in processor.batch_decode(out, skip_special_tokens=True)]


@torch.no_grad()
def style_embeds(translator, style_paths):
    """Per-sample IP-Adapter image prompts (SPEC §1): the CLIP image embedding of each sample's own
    reference, (2B, 1, D) with the zero negative half first when guidance is on (a list of images
    would be one multi-image prompt for the whole batch). Cached: references repeat."""
    pipe, cache = translator.pipe, translator.style_cache
    for path in style_paths:
        if path not in cache:
            cache[path] = pipe.encode_image([load_image(path).convert("RGB")], pipe.device, 1)[0]
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
    """Night post-processing (SPEC §1): scale so the mean intensity is `ratio` of the day image's
    (0.40, the nuScenes night/day ratio); an already darker image is left as it is."""
    gen = np.asarray(generated, dtype=np.float32) / 255.0
    target = ratio * np.asarray(day.convert("RGB"), dtype=np.float32).mean() / 255.0
    return Image.fromarray(to_uint8(gen * min(1.0, target / max(gen.mean(), 1e-6))))


@dataclass
class Translator:
    """Everything `translate_batch` needs, loaded once by `build_translator`."""
    args: argparse.Namespace
    pipe: object = None          # diffusers ControlNet pipeline; None for --backend classic
    captioner: tuple = None      # (model, processor); None: the fixed --caption
    depth: object = None         # predict(pil) -> inverse depth; None with --control-dir
    styles: dict = None          # cond -> sorted reference image paths; None without IP-Adapter
    device: torch.device = torch.device("cpu")
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


def build_translator(args):
    """Load every GDT model once: hub ids or local folders (`--tiny` writes random tiny models to a
    folder and loads them back through this same code)."""
    if args.backend == "classic":
        return Translator(args)
    styles = None if args.no_ip_adapter else style_folders(args)
    if args.tiny is not None:
        import tiny_models
        vars(args).update(tiny_models.save_tiny_models(args.tiny or None))  # None: a temp folder, removed at exit
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES.get(args.dtype, torch.float16 if device.type == "cuda" else torch.float32)  # auto: fp16 on GPU
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # reruns reproduce bit for bit
    from diffusers import (ControlNetModel, StableDiffusionControlNetImg2ImgPipeline,
                           StableDiffusionControlNetPipeline, UniPCMultistepScheduler)
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation, AutoModelForImageTextToText, AutoProcessor
    def load(load_fn, name, alternative="", **kwargs):
        return from_pretrained_or_explain(load_fn, name, alternative + "--tiny for random tiny models", **kwargs)
    captioner = None
    if args.captioner != "none":
        model = load(AutoModelForImageTextToText.from_pretrained, args.caption_model, "--captioner none or ",
                     dtype=dtype)
        captioner = model.to(device).eval(), load(AutoProcessor.from_pretrained, args.caption_model)
    if not args.control_dir:
        model = load(AutoModelForDepthEstimation.from_pretrained, args.depth_model, "--control-dir or ", dtype=dtype)
        depth_model, processor = model.to(device).eval(), load(AutoImageProcessor.from_pretrained, args.depth_model)

        @torch.no_grad()
        def depth(image):  # (H, W) relative inverse depth
            pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
            out = depth_model(pixel_values=pixels.to(device, dtype)).predicted_depth[:, None].float()
            return F.interpolate(out, size=(image.height, image.width), mode="bicubic")[0, 0].cpu().numpy()
    else:
        depth = None
    controlnet = load(ControlNetModel.from_pretrained, args.controlnet, dtype=dtype)
    pipeline = StableDiffusionControlNetImg2ImgPipeline if args.strength else StableDiffusionControlNetPipeline
    pipe = load(pipeline.from_pretrained, args.sd_model, controlnet=controlnet, safety_checker=None,
                requires_safety_checker=False, dtype=dtype)
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
    return Translator(args, pipe, captioner, depth, styles, device, 1 if device.type == "cpu" else args.batch_size)


def prepare_batch(translator, images, keys):
    """Caption and depth condition of each frame: computed once, shared by all its conditions."""
    t, a, n = translator, translator.args, translator.micro_batch
    if t.pipe is None:
        return None, None
    captions = [c for i in range(0, len(images), n) for c in caption_images(t, images[i:i + n])]
    return captions, [load_control_map(a.control_dir, k) if a.control_dir else control_depth(t.depth, im, a.depth_tiles)
                      for im, k in zip(images, keys)]


def translate_batch(translator, images, keys, cond, captions=None, controls=None):
    """GDT of a batch into one condition (SPEC §1): PIL day images and their sample keys -> (RGB
    images at the source sizes, one manifest record each). SD 1.5 + depth ControlNet from noise
    (img2img with --strength), one torch.Generator per image, per-sample style embeddings."""
    check_condition(cond)
    t, a, n, (h, w) = translator, translator.args, translator.micro_batch, translator.args.size
    seeds = [sample_seed(k, cond) for k in keys]
    record = dict(cond=cond, settings={k: getattr(a, k) for k in SETTINGS}, models={k: getattr(a, k) for k in MODELS})
    if t.pipe is None:
        outs = [Image.fromarray(to_uint8(classic_translate(np.asarray(im.convert("RGB"), np.float32) / 255, cond, s)))
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
                          image=[im.convert("RGB").resize((w, h), Image.BICUBIC) for im in pad(images)])
        for day, gen in zip(images[i:i + n], t.pipe(**kwargs).images):
            out = Image.fromarray(to_uint8(gen)).resize(day.size, Image.LANCZOS)
            outs.append(darken_night(out, day, a.night_ratio) if cond == "night" and a.night_ratio > 0 else out)
    return outs, [dict(record, key=k, seed=s, caption=c, prompt=condition_prompt(cond, c),
                       negative_prompt=NEGATIVE_PROMPT, style=st) for k, s, c, st in zip(keys, seeds, captions, styles)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("nuscenes", "robotcar", "folder"), default="folder")
    p.add_argument("--data-root", required=True)
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version folder")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="writes OUT/<cond>/<path relative to --data-root>")
    p.add_argument("--cond", nargs="+", default=["night", "rain"], choices=list(PHRASES))
    p.add_argument("--backend", choices=("diffusion", "classic"), default="diffusion")
    p.add_argument("--captioner", choices=("blip2", "blip", "none"), default="blip2")
    p.add_argument("--caption-model", help="default: blip2-opt-2.7b, or BLIP-base with --captioner blip")
    p.add_argument("--caption", default="a street scene", help="the caption with --captioner none")
    p.add_argument("--depth-model", default="depth-anything/Depth-Anything-V2-Small-hf",
                   help="or Intel/dpt-hybrid-midas: a transformers depth model predicting relative inverse depth")
    p.add_argument("--depth-tiles", type=int, default=1, help="N: refine the depth on an NxN grid of tiles")
    p.add_argument("--control-dir", help="precomputed depth maps DIR/<key>.png instead of --depth-model")
    p.add_argument("--style-dir", action="append",
                   help="DIR holding DIR/<cond>/, COND=DIR (repeatable), or 'data' (nuScenes train scenes of the cond)")
    p.add_argument("--no-ip-adapter", action="store_true")
    p.add_argument("--ip-adapter", default="h94/IP-Adapter")
    p.add_argument("--ip-adapter-weight", default="models/ip-adapter_sd15.bin", help="+ image_encoder/ beside it")
    p.add_argument("--ip-scale", type=float, default=0.6)
    p.add_argument("--sd-model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    p.add_argument("--controlnet", default="lllyasviel/control_v11f1p_sd15_depth")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--control-scale", type=float, default=1.0)
    p.add_argument("--strength", type=float, help="img2img from the day image instead of from noise")
    p.add_argument("--size", type=data.parse_size, default=(576, 1024), help="HxW generated (multiples of 8), resized back")
    p.add_argument("--night-ratio", type=float, default=0.40, help="night mean / day mean; 0: off")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on GPU, else fp32")
    p.add_argument("--tiny", nargs="?", const="", help="random tiny models (written to DIR, reused if there)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet (GPU, long runs)")
    args = p.parse_args(argv)
    args.caption_model = args.caption_model or CAPTION_MODELS.get(args.captioner)
    if any(v <= 0 or v % 8 for v in args.size):
        p.error("--size: give HxW, both multiples of 8 (e.g. 576x1024)")
    if args.strength is not None and not (0 < args.strength <= 1 and args.steps * args.strength >= 1):
        p.error("--strength must be in (0, 1] with --steps x --strength >= 1 (else no denoising step runs)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if Path(args.out).resolve().is_relative_to(Path(args.data_root).resolve()):
        raise ValueError(f"--out {args.out} is inside --data-root {args.data_root}: GDT never writes into the dataset")
    keys = data.list_images(args.dataset, args.data_root, args.version, args.split)
    if not keys:
        raise ValueError(f"no images for --dataset {args.dataset} --split {args.split} under {args.data_root}")
    # ranks split the whole sorted frame list (strided), not what is left of it: ranks that start at
    # different moments still agree; then each frame keeps the conditions it still lacks
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    work = [(k, [c for c in args.cond if not Path(args.out, c, k).exists()]) for k in keys[rank::world]]
    work = [(k, conds) for k, conds in work if conds]
    total = sum(len(conds) for _, conds in work)
    print(f"rank {rank}: {total} images to translate into {', '.join(args.cond)}")
    translator = build_translator(args) if work else None
    with tqdm(total=total, unit="img", disable=rank != 0) as bar:
        for i in range(0, len(work), args.batch_size):
            batch = work[i:i + args.batch_size]
            keys = [k for k, _ in batch]
            images = [load_image(os.path.join(args.data_root, k)) for k in keys]
            captions, controls = prepare_batch(translator, images, keys)
            for cond in args.cond:
                idx = [j for j, (_, conds) in enumerate(batch) if cond in conds]
                pick = lambda xs: xs and [xs[j] for j in idx]  # noqa: E731 (None stays None)
                outs, records = translate_batch(translator, pick(images), pick(keys), cond, pick(captions),
                                                pick(controls))
                for j, out, record in zip(idx, outs, records):
                    path = Path(args.out, cond, keys[j])
                    save_atomic(out.convert(images[j].mode), path)
                    record.update(source=os.path.join(args.data_root, keys[j]), output=str(path))
                    # a manifest per rank: ranks never append to the same file
                    with open(Path(args.out, cond, f"manifest.rank{rank}.jsonl"), "a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.update(len(idx))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise SystemExit(f"gdt.py: error: {e}")
