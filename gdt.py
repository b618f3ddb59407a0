"""GDT: generative day -> night / rain / snow / fog translation of the training images (docs/method.md §1).

    # offline smoke run on the synthetic world (python tools/synthetic.py --out world) with random tiny
    # models (python tools/tiny_models.py --out tiny); --tiny: 64x112, 2 steps
    python gdt.py --tiny --models-dir tiny --dataset nuscenes --data-root world --out gdt --cond night --style-dir data
    # the paper's setting; IP-Adapter references from the train split's own night / rain scenes
    python gdt.py --dataset nuscenes --data-root /data/nuscenes --out /data/gdt --cond night,rain --style-dir data
    # every model from one folder: DIR/stable-diffusion-v1-5, DIR/control_v11f1p_sd15_depth, ... (`hf download
    # ID --local-dir DIR/<last part of ID>`); a model flag (--sd-model, --depth-model, ...) still wins
    python gdt.py --models-dir /data/models ...
    # the few-step sampler (LCM-LoRA, 4 steps, no guidance doubling: 1/15 of the denoiser FLOPs)
    python gdt.py ... --sampler lcm
    # draw a frame again (next seed) while under 0.8 delta1 geometry agreement, at most 3 tries
    python gdt.py ... --min-agreement 0.8 --max-tries 3
    torchrun --standalone --nproc_per_node=8 gdt.py ...   # same flags: frames split over the ranks
    python gdt.py --dataset folder --data-root my_images --out gdt --cond night --style-dir night=real_night/
    python tools/gdt_report.py gdt    # counts, agreement histograms and percentiles, worst frames

The non-generative baseline (Table 3's classic translation) is `tools/classic_weather.py`: same
flags for the data, same output layout. Memory: the default captioner, BLIP-2 OPT-2.7b, needs about
24 GB in fp32 on a CPU; there use `--captioner blip` (BLIP-base) or `--captioner none` (a fixed
caption). Speed: `python tools/bench.py --only gdt`.

Writes `<out>/<cond>/<path relative to --data-root>` (the source's format, size and mode) and a
JSONL record per image to `<out>/<cond>/manifest.rank<r>.jsonl` (data.py reads both; an output's
last record wins): "output" (that relative path), "status" ("ok", or "rejected": no attempt passed
--min-agreement, no file written), the geometry "agreement" and every attempt's seed and agreement.
Seeds hash the key, condition and attempt: any subset, order, batch size, rank count or resume gives
the same image; finished outputs (and frames rejected under the same threshold) are skipped.

From another script (no command line; Settings holds the flags' defaults):

    translator = gdt.build_translator(gdt.Settings(sampler="lcm"), gdt.model_paths("models/"),
                                      styles={"night": ["real_night.jpg"]})
    [(night, record)] = gdt.translate_audited(translator, [Image.open("day.jpg")], ["day.jpg"], "night")
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import data
from model import from_pretrained_or_explain

PHRASES = {"night": "At night", "rain": "In a rainy day", "snow": "In a snowy day", "fog": "In a foggy day"}
NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
MODELS = {  # hub ids; --models-dir DIR reads DIR/<last part of the id>
    "sd_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "controlnet": "lllyasviel/control_v11f1p_sd15_depth",
    "depth_model": "depth-anything/Depth-Anything-V2-Small-hf", "lcm_lora": "latent-consistency/lcm-lora-sdv1-5",
    "ip_adapter": "h94/IP-Adapter"}
CAPTION_MODELS = {"blip2": "Salesforce/blip2-opt-2.7b", "blip": "Salesforce/blip-image-captioning-base"}
IP_ADAPTER_WEIGHT = "models/ip-adapter_sd15.bin"  # inside --ip-adapter, with image_encoder/ beside it
LCM_LORA_WEIGHT = "pytorch_lora_weights.safetensors"  # the file name in latent-consistency/lcm-lora-sdv1-5
SAMPLERS = {"unipc": dict(steps=30, guidance=7.5), "lcm": dict(steps=4, guidance=1.0)}  # docs/method.md §1
TINY_DEFAULTS = dict(steps=2, size=(64, 112))  # --tiny: a smoke run, seconds per frame on a CPU
SETTINGS = ("sampler", "captioner", "caption", "depth_tiles", "control_dir", "steps", "guidance",
            "control_scale", "ip_scale", "strength", "size", "night_ratio", "dtype", "tiny", "min_agreement",
            "max_tries")  # what each manifest record carries
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEPTH_RANGE = 80.0  # a control map's farthest / nearest depth in the audit: 1 m to md4all's 80 m cap


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
    inv = np.asarray(data.load_image(Path(control_dir, key).with_suffix(".png")).convert("F"))  # missing: named
    return control_depth(lambda _: inv, None)  # the map is its own prediction


def geometry_agreement(predict, translation, control, tiles=1):
    """Geometry audit of one translation (docs/method.md §1): does it keep the day frame's depth?

    The control map's depth model (same tiling) predicts the translation's inverse depth, aligned to
    the control map by least-squares scale and shift in INVERSE depth: both are disparity known up to
    a scale and a shift, an affine map there (not in depth, where a fit would follow the far pixels).
    Both are then read as depth over DEPTH_RANGE (control 1 = depth 1, 0 = depth 80) and compared as
    a prediction against ground truth: abs_rel, and delta1 = share of pixels within 1.25x (the
    --min-agreement metric). The day image itself scores abs_rel 0, delta1 1.
    Returns (metrics, aligned map in control units)."""
    target = np.asarray(control, dtype=np.float64)[..., 0]
    pred = control_depth(predict, translation, tiles)[..., 0].astype(np.float64)
    aligned = np.clip(align_scale_shift(pred, target), 0.0, 1.0)
    d, d_ctrl = (1.0 / (1.0 / DEPTH_RANGE + (1.0 - 1.0 / DEPTH_RANGE) * c) for c in (aligned, target))
    ratio = np.maximum(d / d_ctrl, d_ctrl / d)
    return dict(abs_rel=float(np.mean(np.abs(d - d_ctrl) / d_ctrl)), delta1=float(np.mean(ratio < 1.25))), aligned


def darken_night(generated, day, ratio):
    """Night post-processing (docs/method.md §1): scale so the mean intensity is `ratio` of the day image's
    (0.40, the nuScenes night/day ratio); an already darker image is left as it is."""
    gen = np.asarray(generated, dtype=np.float32) / 255.0
    target = ratio * np.asarray(data.as_rgb8(day), dtype=np.float32).mean() / 255.0
    return Image.fromarray(data.to_uint8(gen * min(1.0, target / max(gen.mean(), 1e-6))))


@dataclass
class Settings:
    """How to translate, the flags of the same names (main() fills it from them); steps and guidance
    default to the sampler's (SAMPLERS)."""
    sampler: str = "unipc"          # or "lcm": the LCM-LoRA folded into the UNet
    steps: int = None
    guidance: float = None
    control_scale: float = 1.0
    strength: float = None          # img2img from the day image; None: from noise
    size: tuple = (576, 1024)       # (H, W) generated, multiples of 8; outputs are resized back
    night_ratio: float = 0.40       # night mean / day mean; 0: off
    captioner: str = "blip2"        # blip2, blip, or none (then `caption` for every frame)
    caption: str = "a street scene"
    depth_tiles: int = 1
    control_dir: str = None         # precomputed depth maps instead of the depth model
    ip_scale: float = 0.6
    audit: bool = True              # the geometry audit of every translation
    min_agreement: float = 0.0
    max_tries: int = 3
    dtype: str = "auto"             # fp32, fp16, bf16; auto: fp16 on a GPU, else fp32
    tiny: bool = False              # recorded only: smoke-run defaults were asked for

    def __post_init__(self):
        defaults = SAMPLERS[self.sampler]
        self.steps = defaults["steps"] if self.steps is None else self.steps
        self.guidance = defaults["guidance"] if self.guidance is None else self.guidance


def model_paths(models_dir=None, captioner="blip2", **given):
    """flag -> hub id or folder of every GDT model: a given path wins, then models_dir/<the id's last
    part> (the folder `hf download ID --local-dir DIR/<name>` and `tools/tiny_models.py --out DIR` fill),
    then the hub id."""
    ids = dict(MODELS, caption_model=CAPTION_MODELS.get(captioner, CAPTION_MODELS["blip2"]))
    paths = {k: given.get(k) or (os.path.join(models_dir, v.rsplit("/", 1)[-1]) if models_dir else v)
             for k, v in ids.items()}
    return dict(paths, ip_adapter_weight=given.get("ip_adapter_weight") or IP_ADAPTER_WEIGHT)


@dataclass
class Translator:
    """Everything `translate_batch` needs, loaded once by `build_translator`."""
    settings: Settings
    models: dict                 # model_paths(): what each model was loaded from
    pipe: object                 # the diffusers ControlNet pipeline
    captioner: tuple = None      # (model, processor); None: the fixed settings.caption
    depth: object = None         # predict(pil) -> inverse depth; None when neither control maps nor audit need it
    styles: dict = None          # cond -> reference image paths; None without IP-Adapter
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    micro_batch: int = 1         # images per model call, see build_translator
    style_cache: dict = field(default_factory=dict)


def load(load_fn, name, alternative="", **kwargs):
    hint = ("--models-dir DIR holding it (`python tools/tiny_models.py --out DIR` writes random tiny models "
            "for a smoke run)")
    return from_pretrained_or_explain(load_fn, name, alternative + hint, **kwargs)


def load_depth_model(path, device, dtype, alternative="--control-dir or "):
    """predict(pil) -> (H, W) relative inverse depth at the image's size, from a transformers depth model."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    model = load(AutoModelForDepthEstimation.from_pretrained, path, alternative, dtype=dtype).to(device).eval()
    processor = load(AutoImageProcessor.from_pretrained, path)

    @torch.no_grad()
    def predict(image):
        pixels = processor(images=data.as_rgb8(image), return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels.to(device, dtype)).predicted_depth[:, None].float()
        return F.interpolate(out, size=(image.height, image.width), mode="bicubic")[0, 0].cpu().numpy()
    return predict


def load_captioner(path, device, dtype):
    """(model, processor) of a BLIP-2 or BLIP captioner."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = load(AutoModelForImageTextToText.from_pretrained, path, "--captioner none or ", dtype=dtype)
    return model.to(device).eval(), load(AutoProcessor.from_pretrained, path)


def load_pipeline(sd_model, controlnet, img2img, dtype):
    """SD 1.5 + depth ControlNet (from noise, or img2img from the day image), on the CPU."""
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetPipeline
    controlnet = load(ControlNetModel.from_pretrained, controlnet, dtype=dtype)
    pipeline = StableDiffusionControlNetImg2ImgPipeline if img2img else StableDiffusionControlNetPipeline
    return load(pipeline.from_pretrained, sd_model, controlnet=controlnet, safety_checker=None,
                requires_safety_checker=False, dtype=dtype)


def fuse_lcm_lora(pipe, path):
    """The LCM-LoRA folded into the UNet weights (the sampler then costs what plain SD costs) + LCMScheduler."""
    from diffusers import LCMScheduler
    from diffusers.utils import logging as diffusers_logging
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder": right, it adapts the UNet only
    try:
        load(pipe.load_lora_weights, path, "--sampler unipc or ", weight_name=LCM_LORA_WEIGHT)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)


def add_ip_adapter(pipe, path, weight, scale):
    """IP-Adapter (`weight` inside `path`, its image encoder beside it), fed one reference per sample."""
    subfolder, weight_name = os.path.split(weight)
    load(pipe.load_ip_adapter, path, "--no-ip-adapter or ", subfolder=subfolder, weight_name=weight_name)
    pipe.set_ip_adapter_scale(scale)
    pipe.prepare_ip_adapter_image_embeds = per_sample_ip_adapter_embeds


def per_sample_ip_adapter_embeds(ip_adapter_image, ip_adapter_image_embeds, device, batch_size, guidance):
    """Stands in for the pipeline's `prepare_ip_adapter_image_embeds`, which repeats given embeddings
    once per prompt (one reference shared by the batch): B per-sample references would become B^2
    rows, and every image would attend to all of them (diffusers issue #9813)."""
    if any(e.shape[0] != batch_size * (1 + bool(guidance)) for e in ip_adapter_image_embeds):
        raise ValueError(f"ip_adapter_image_embeds need one row per sample (x2 with guidance), batch {batch_size}")
    return [e.to(device) for e in ip_adapter_image_embeds]


def build_translator(settings, models=None, styles=None, batch_size=4, compile=False):
    """Load every model the settings need once, from `models` (model_paths(); default the hub ids).
    `styles`: cond -> real reference images for IP-Adapter, None for no IP-Adapter. The depth model
    makes the control maps (unless settings.control_dir) and audits the translations."""
    models = models or model_paths(captioner=settings.captioner)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES.get(settings.dtype, torch.float16 if device.type == "cuda" else torch.float32)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # reruns reproduce bit for bit
    captioner = None if settings.captioner == "none" else load_captioner(models["caption_model"], device, dtype)
    depth = None
    if settings.control_dir is None or settings.audit:
        alternative = "--no-audit or " if settings.control_dir else "--control-dir or "
        depth = load_depth_model(models["depth_model"], device, dtype, alternative)
    pipe = load_pipeline(models["sd_model"], models["controlnet"], bool(settings.strength), dtype)
    if settings.sampler == "lcm":
        fuse_lcm_lora(pipe, models["lcm_lora"])
    else:
        from diffusers import UniPCMultistepScheduler
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    if styles is not None:
        add_ip_adapter(pipe, models["ip_adapter"], models["ip_adapter_weight"], settings.ip_scale)
    pipe.to(device)
    if device.type == "cuda":  # NHWC convolutions feed tensor cores without layout transposes
        for module in (pipe.unet, pipe.controlnet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet.compile()
        pipe.controlnet.compile()
    pipe.set_progress_bar_config(disable=True)
    # Images per model call. CPU: one, as BLAS/oneDNN pick kernels by batch size (a batched image differs in its last
    # bits from itself alone) and one image fills the cores. GPU: batch_size, padded to it in translate_batch.
    return Translator(settings, models, pipe, captioner, depth, styles, device, dtype,
                      1 if device.type == "cpu" else batch_size)


def denoiser_calls_per_image(settings):
    """UNet + ControlNet evaluations per image and attempt: the denoising steps (x strength with img2img),
    doubled by classifier-free guidance above 1 (the LCM-LoRA UNet has no guidance embedding, so
    diffusers doubles it too): UniPC 30 x 2 = 60, LCM 4 x 1 = 4 by default."""
    s = settings
    steps = min(int(s.steps * s.strength), s.steps) if s.strength else s.steps
    return steps * (2 if s.guidance > 1 else 1)


@torch.no_grad()
def caption_images(translator, images):
    """BLIP-2 (or BLIP) captions of the day images, docs/method.md §1; the fixed caption with --captioner none."""
    if translator.captioner is None:
        return [translator.settings.caption] * len(images)
    model, processor = translator.captioner
    inputs = processor(images=[data.as_rgb8(im) for im in images], return_tensors="pt")
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
            cache[path] = pipe.encode_image([data.as_rgb8(data.load_image(path))], pipe.device, 1)[0]
    positive = torch.cat([cache[p] for p in style_paths])[:, None]
    return torch.cat([torch.zeros_like(positive), positive]) if translator.settings.guidance > 1 else positive


def prepare_batch(translator, images, keys):
    """Caption and depth condition of each frame: computed once, shared by all its conditions and attempts."""
    settings, n = translator.settings, translator.micro_batch
    images = [data.as_rgb8(im) for im in images]
    captions = [c for i in range(0, len(images), n) for c in caption_images(translator, images[i:i + n])]
    if settings.control_dir:
        return captions, [load_control_map(settings.control_dir, k) for k in keys]
    return captions, [control_depth(translator.depth, im, settings.depth_tiles) for im in images]


def run_record(translator):
    """What every manifest record of this run carries: the settings and the models it used."""
    settings = translator.settings
    used = ["sd_model", "controlnet"] + ["lcm_lora"] * (settings.sampler == "lcm")
    used += ["caption_model"] * (settings.captioner != "none")
    used += ["ip_adapter", "ip_adapter_weight"] * (translator.styles is not None)
    used += ["depth_model"] * (not settings.control_dir or settings.audit)
    return dict(settings={k: getattr(settings, k) for k in SETTINGS},
                models={k: str(translator.models[k]) for k in used})


def take(items, rows):
    """items[rows] of a list; None stays None."""
    return None if items is None else [items[i] for i in rows]


def translate_batch(translator, images, keys, cond, captions=None, controls=None, attempt=0):
    """GDT of a batch into one condition (docs/method.md §1): PIL day images and their sample keys ->
    (RGB translations at the source sizes, one manifest record each). SD 1.5 + depth ControlNet from
    noise (img2img with a strength), one torch.Generator per image seeded by (key, cond, attempt),
    per-sample style embeddings, night darkened to settings.night_ratio of the day mean. Captions and
    controls: see prepare_batch (computed here when not given)."""
    check_condition(cond)
    settings, n, (h, w) = translator.settings, translator.micro_batch, translator.settings.size
    images = [data.as_rgb8(im) for im in images]
    if captions is None or controls is None:
        captions, controls = prepare_batch(translator, images, keys)
    seeds = [sample_seed(k, cond, attempt) for k in keys]
    prompts = [condition_prompt(cond, c) for c in captions]
    styles = [pick_style(translator.styles[cond], k, cond) if translator.styles else None for k in keys]
    outs = []
    for start in range(0, len(images), n):
        # a short last call is padded with the last image: each image meets the same kernel shapes whatever its mates
        rows = list(range(start, min(start + n, len(images))))
        real, rows = len(rows), rows + rows[-1:] * (n - len(rows))
        control_images = [Image.fromarray(data.to_uint8(controls[i])).resize((w, h), Image.BICUBIC) for i in rows]
        call = dict(prompt=take(prompts, rows), negative_prompt=[NEGATIVE_PROMPT] * n, image=control_images,
                    height=h, width=w, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                    controlnet_conditioning_scale=settings.control_scale, output_type="np",
                    generator=[torch.Generator().manual_seed(seeds[i]) for i in rows])  # CPU: same noise anywhere
        if translator.styles:
            call["ip_adapter_image_embeds"] = [style_embeds(translator, take(styles, rows))]
        if settings.strength:
            call.update(control_image=control_images, strength=settings.strength,
                        image=[images[i].resize((w, h), Image.BICUBIC) for i in rows])
        for i, generated in zip(rows[:real], translator.pipe(**call).images):
            out = Image.fromarray(data.to_uint8(generated)).resize(images[i].size, Image.LANCZOS)
            outs.append(darken_night(out, images[i], settings.night_ratio)
                        if cond == "night" and settings.night_ratio > 0 else out)
    record = dict(cond=cond, attempt=attempt, **run_record(translator))
    return outs, [dict(record, key=k, seed=seed, caption=caption, prompt=prompt, negative_prompt=NEGATIVE_PROMPT,
                       style=style) for k, seed, caption, prompt, style in zip(keys, seeds, captions, prompts, styles)]


def translate_audited(translator, images, keys, cond, captions=None, controls=None):
    """GDT with the geometry audit and re-draws (docs/method.md §1): a translation whose delta1
    agreement is under settings.min_agreement is drawn again with the next attempt's seed, up to
    settings.max_tries. The audit sees each image as its file will read back (source mode and format).
    -> per frame (image in the source's mode, record): the first passing attempt ("status": "ok"),
    else the best one ("rejected"); the record lists every attempt's seed and agreement."""
    settings = translator.settings
    if settings.audit and translator.depth is None:
        raise ValueError("the geometry audit needs a depth model: give the translator one (build_translator loads "
                         "it) or pass --no-audit")
    if captions is None or controls is None:
        captions, controls = prepare_batch(translator, images, keys)

    def quality(record):
        return record["agreement"]["delta1"] if settings.audit else 1.0
    best, attempts, todo = [None] * len(keys), [[] for _ in keys], list(range(len(keys)))
    for attempt in range(settings.max_tries):
        outs, records = translate_batch(translator, take(images, todo), take(keys, todo), cond,
                                        take(captions, todo), take(controls, todo), attempt)
        for j, out, record in zip(todo, outs, records):
            out = data.in_source_mode(out, images[j].mode)
            if settings.audit:
                saved = data.as_saved(out, Path(keys[j]).suffix)
                record["agreement"] = geometry_agreement(translator.depth, saved, controls[j], settings.depth_tiles)[0]
            attempts[j].append({k: record[k] for k in ("attempt", "seed", "agreement") if k in record})
            if best[j] is None or quality(record) > quality(best[j][1]):
                best[j] = out, record
        todo = [j for j in todo if quality(best[j][1]) < settings.min_agreement]
        if not todo:
            break
    for j, (out, record) in enumerate(best):
        record.update(status="ok" if quality(record) >= settings.min_agreement else "rejected", attempts=attempts[j])
    return best


def already_rejected(out, cond, settings):
    """Frames recorded as rejected under the same min_agreement and max_tries: done, not redrawn."""
    return {output for output, r in data.read_manifests(Path(out, cond)).items() if r.get("status") == "rejected"
            and (r.get("settings", {}).get("min_agreement"), r.get("settings", {}).get("max_tries"))
            == (settings.min_agreement, settings.max_tries)}


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


def split_conditions(items):
    """['night,rain', 'rain'] -> ['night', 'rain']: space- or comma-separated, duplicates dropped."""
    return list(dict.fromkeys(c.strip() for item in items for c in item.split(",") if c.strip()))


def settings_from_args(args):
    """The Settings of the flags of the same names (--no-audit: audit off); unset flags: Settings' defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name, None)
             is not None}
    return Settings(**given, audit=not args.no_audit)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The docstring's runbook as written, and each flag's default (when it has one worth showing)."""
    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data.add_translation_args(p)
    p.add_argument("--cond", "--conds", nargs="+", metavar="COND",
                   help=f"target conditions ({', '.join(PHRASES)}), space- or comma-separated; default: night,rain")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="unipc",
                   help="unipc: the paper's setting; lcm: SD 1.5 + --lcm-lora, LCMScheduler, 4 steps, guidance 1")
    p.add_argument("--models-dir", metavar="DIR", help="every model below from DIR/<last part of its id> "
                   "(DIR/stable-diffusion-v1-5, ...); `python tools/tiny_models.py --out DIR` writes random tiny ones")
    p.add_argument("--sd-model", help=f"SD 1.5 id or folder (default {MODELS['sd_model']})")
    p.add_argument("--controlnet", help=f"depth ControlNet (default {MODELS['controlnet']})")
    p.add_argument("--lcm-lora", help=f"LoRA for --sampler lcm (default {MODELS['lcm_lora']})")
    p.add_argument("--captioner", choices=("blip2", "blip", "none"), default="blip2",
                   help="blip2 needs about 24 GB in fp32 on a CPU: use blip or none there")
    p.add_argument("--caption-model", help="default: blip2-opt-2.7b, or BLIP-base with --captioner blip")
    p.add_argument("--caption", default="a street scene", help="the caption with --captioner none")
    p.add_argument("--depth-model", help=f"default {MODELS['depth_model']}, or Intel/dpt-hybrid-midas: a transformers "
                   "depth model predicting relative inverse depth (control maps and the geometry audit)")
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
    p.add_argument("--ip-adapter", help=f"IP-Adapter repository or folder (default {MODELS['ip_adapter']})")
    p.add_argument("--ip-adapter-weight", help=f"inside --ip-adapter, image_encoder/ beside it (default "
                   f"{IP_ADAPTER_WEIGHT})")
    p.add_argument("--ip-scale", type=float, default=0.6, help="IP-Adapter strength")
    p.add_argument("--steps", type=int, help="default 30 (unipc), 4 (lcm), 2 with --tiny")
    p.add_argument("--guidance", type=float, help="default 7.5 (unipc), 1 (lcm: 1-2; 1 runs no negative pass)")
    p.add_argument("--control-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    p.add_argument("--strength", type=float, help="img2img from the day image instead of from noise")
    p.add_argument("--size", type=data.parse_size,
                   help="HxW generated (multiples of 8), resized back; default 576x1024, 64x112 with --tiny")
    p.add_argument("--night-ratio", type=float, default=0.40, help="night mean / day mean; 0: off")
    p.add_argument("--batch-size", type=int, default=4, help="frames loaded together; images per call on a GPU")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on GPU, else fp32")
    p.add_argument("--tiny", action="store_true", help="smoke-run defaults: 64x112, 2 steps (with --models-dir "
                   "from tools/tiny_models.py)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet (GPU, long runs)")
    args = p.parse_args(argv)
    args.cond = split_conditions(args.cond or ["night", "rain"])
    unknown = [c for c in args.cond if c not in PHRASES]
    if unknown or not args.cond:
        p.error(f"argument --cond/--conds: invalid choice: {', '.join(map(repr, unknown)) or 'none given'} "
                f"(choose from {', '.join(PHRASES)})")
    if args.tiny:
        args.steps, args.size = args.steps or TINY_DEFAULTS["steps"], args.size or TINY_DEFAULTS["size"]
    s = settings_from_args(args)
    if any(v <= 0 or v % 8 for v in s.size):
        p.error("--size: give HxW, both multiples of 8 (e.g. 576x1024)")
    if s.strength is not None and not (0 < s.strength <= 1 and s.steps * s.strength >= 1):
        p.error("--strength must be in (0, 1] with --steps x --strength >= 1 (else no denoising step runs)")
    if s.sampler == "lcm" and not 1 <= s.guidance <= 2:
        p.error("--sampler lcm: --guidance must be 1-2 (the LCM-LoRA is distilled for that; above, images burn)")
    if not 0 <= s.min_agreement <= 1:
        p.error("--min-agreement is a delta1 share of pixels: give a value in [0, 1], e.g. 0.8")
    if s.min_agreement > 0 and not s.audit:
        p.error("--min-agreement needs the geometry audit: drop --no-audit")
    if args.keep_rejected and not s.min_agreement:
        p.error("--keep-rejected keeps frames under --min-agreement: give --min-agreement too")
    for flag, value in dict(max_tries=s.max_tries, batch_size=args.batch_size, depth_tiles=s.depth_tiles,
                            steps=s.steps).items():
        if value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = settings_from_args(args)
    keys = data.translation_frames(args.dataset, args.data_root, args.version, args.split, args.out, args.cond)
    # ranks split the whole sorted frame list (strided), not what is left of it: ranks that start at
    # different moments still agree; then each frame keeps the conditions it still lacks
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    rejected = {c: already_rejected(args.out, c, settings) for c in args.cond}
    work = [(k, [c for c in args.cond if not Path(args.out, c, k).exists() and k not in rejected[c]])
            for k in keys[rank::world]]
    work = [(k, conds) for k, conds in work if conds]
    total = sum(len(conds) for _, conds in work)
    print(f"rank {rank}: {total} images to translate into {', '.join(args.cond)}")
    if not work:
        return
    styles = None if args.no_ip_adapter else style_folders(args)
    models = model_paths(args.models_dir, settings.captioner,
                         **{k: getattr(args, k) for k in (*MODELS, "caption_model", "ip_adapter_weight")})
    translator = build_translator(settings, models, styles, args.batch_size, args.compile)
    counts = {c: dict(ok=0, rejected=0) for c in args.cond}
    with tqdm(total=total, unit="img", disable=rank != 0) as bar:
        for start in range(0, len(work), args.batch_size):
            batch = work[start:start + args.batch_size]
            keys = [k for k, _ in batch]
            images = [data.load_image(os.path.join(args.data_root, k)) for k in keys]
            captions, controls = prepare_batch(translator, images, keys)
            for cond in args.cond:
                rows = [j for j, (_, conds) in enumerate(batch) if cond in conds]
                results = translate_audited(translator, take(images, rows), take(keys, rows), cond,
                                            take(captions, rows), take(controls, rows))
                for j, (out, record) in zip(rows, results):
                    folder = Path(args.out, cond) if record["status"] == "ok" else Path(args.out, cond, "rejected")
                    if record["status"] == "ok" or args.keep_rejected:
                        data.save_atomic(out, folder / keys[j])
                    record.update(source=os.path.abspath(os.path.join(args.data_root, keys[j])), output=keys[j])
                    counts[cond][record["status"]] += 1
                    # a manifest per rank: ranks never append to the same file
                    Path(args.out, cond).mkdir(parents=True, exist_ok=True)
                    with open(Path(args.out, cond, f"manifest.rank{rank}.jsonl"), "a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.update(len(rows))
    print(f"rank {rank}: " + "; ".join(f"{c}: {n['ok']} written, {n['rejected']} rejected" for c, n in counts.items()))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise SystemExit(f"gdt.py: error: {e}")
