"""GDT: generative day -> night / rain / snow / fog translation of the training images (docs/method.md §1).

    # offline smoke run: a synthetic world (tools/synthetic.py) and random tiny models (tools/tiny_models.py)
    python gdt.py --tiny --models-dir tiny --dataset nuscenes --data-root world --out gdt --cond night --style-dir data
    # the paper's setting; IP-Adapter references from the train split's own night / rain scenes
    python gdt.py --dataset nuscenes --data-root /data/nuscenes --out /data/gdt --cond night,rain --style-dir data
    python gdt.py --models-dir /data/models ...      # every model from DIR/<last part of its hub id>
    python gdt.py ... --sampler lcm                  # LCM-LoRA, 4 steps: 1/15 of the denoiser FLOPs
    python gdt.py ... --min-agreement 0.8            # redraw (next seed, --max-tries) frames under 0.8 delta1
    torchrun --standalone --nproc_per_node=8 --log-dir runs/torchrun_logs gdt.py ...   # same flags: frames split over the ranks
    python gdt.py --dataset folder --data-root my_images --out gdt --cond night --style-dir night=real_night/
    python tools/gdt_report.py gdt                   # counts, agreement histograms, worst frames

Writes `<out>/<cond>/<path relative to --data-root>` (the source's format, size and mode) and a JSONL
record per image to `<out>/<cond>/manifest.rank<r>.jsonl` (data.py reads both; an output's last record
wins): "output", "status" ("ok", or "rejected": no attempt passed --min-agreement, no file written), the
geometry "agreement" and every attempt's seed. Seeds hash the key, condition and attempt: any subset,
order, batch size, rank count or resume gives the same image. This file is the whole stage, in reading order:
prompts and seeds, control maps, the geometry audit, Settings, the models (build_translator), IP-Adapter's
references, the batch (translate_batch) and the audit's re-draws (translate_audited), the files, the flags.
It needs data.py (frame lists, reading manifests) and model.py (hub errors that say the fix). Table 3's
classic baseline is tools/classic_weather.py. BLIP-2 needs about 24 GB in fp32: on a CPU use --captioner blip.
From another script (Settings holds the flags' defaults and checks):

    translator = gdt.build_translator(gdt.Settings(sampler="lcm"), gdt.gdt_model_paths("models/"),
                                      styles={"night": ["real_night.jpg"]})
    [(night, record)] = gdt.translate_audited(translator, [Image.open("day.jpg")], ["day.jpg"], "night")
"""
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import data
from model import from_pretrained_or_explain

# the condition phrase starts the prompt (docs/method.md §1), one per condition of data.GDT_CONDITIONS
PHRASES = dict(zip(data.GDT_CONDITIONS, ("At night", "In a rainy day", "In a snowy day", "In a foggy day")))
NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
SAMPLERS = {"unipc": dict(steps=30, guidance=7.5), "lcm": dict(steps=4, guidance=1.0)}  # docs/method.md §1
TINY_DEFAULTS = dict(steps=2, gen_size=(64, 112))  # --tiny: a smoke run, seconds per frame on a CPU


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
    path = Path(control_dir, key).with_suffix(".png")
    if not path.is_file():
        raise FileNotFoundError(f"--control-dir: no depth map {path} for frame {key}: write one PNG per frame there")
    inv = np.asarray(data.load_image(path).convert("F"))
    return control_depth(lambda _: inv, None)  # the map is its own prediction


def darken_night(generated, day, ratio):
    """Night post-processing (docs/method.md §1): scale so the mean intensity is `ratio` of the day image's
    (0.40, the nuScenes night/day ratio); an already darker image is left as it is."""
    gen = np.asarray(generated, dtype=np.float32) / 255.0
    target = ratio * np.asarray(as_rgb8(day), dtype=np.float32).mean() / 255.0
    return Image.fromarray(to_uint8(gen * min(1.0, target / max(gen.mean(), 1e-6))))


# GDT's geometry audit (docs/method.md §1): how well a translation keeps its day frame's depth (numpy maps).
def scale_shift(pred, target):
    """Closed-form least-squares scale s >= 0 and shift t of pred onto target (docs/method.md §1):
    s = cov(pred, target) / var(pred), t = mean(target) - s mean(pred). A negative scale would swap
    near and far, so it is held at 0 (the best fit is then the constant mean). Never
    torch.linalg.lstsq (its backward builds N x N matrices)."""
    pm, tm = pred.mean(), target.mean()
    s = max(((pred - pm) * (target - tm)).mean() / max(((pred - pm) ** 2).mean(), 1e-12), 0.0)
    return s, tm - s * pm


def align_scale_shift(pred, target):
    """pred mapped onto target by scale_shift."""
    s, t = scale_shift(pred, target)
    return s * pred + t


AUDIT_FAR = 0.05  # control-map value (inverse depth, nearest pixel 1) below which a pixel is sky or far range


def geometry_agreement(pred, control, depth_range=80.0, far=AUDIT_FAR):
    """GDT's geometry audit of one translation (docs/method.md §1): does it keep the day frame's depth?

    pred: the translation's relative inverse depth (H, W) from the depth model that made the control
    map (H, W[, 3]), near = bright in [0, 1]. Pixels whose control value is below `far` (more than 20x
    the nearest pixel's depth at 0.05: the sky and the far range, where inverse depth is close to 0 and
    a depth read from it swings with any noise) are left out of the fit and of the score. pred is aligned
    to the control there by least-squares scale and shift in INVERSE depth: both are disparity known up
    to a scale and a shift, an affine map there (not in depth, where a fit would follow the far pixels).
    Both are then read as depth over depth_range (control 1 = depth 1, 0 = depth_range: md4all's 80 m
    cap) and compared as a prediction against ground truth: abs_rel, and delta1 = share of the scored
    pixels within 1.25x (gdt.py's --min-agreement metric). A control with under 1% of its pixels at or
    above `far` (a frame of sky) is scored on every pixel. The control's own map scores abs_rel 0,
    delta1 1. Returns (metrics, aligned map in control units, every pixel); metrics carry `scored`, the
    share of pixels scored."""
    target, pred = (np.asarray(x, dtype=np.float64) for x in (control, pred))
    target, pred = (x[..., 0] if x.ndim == 3 else x for x in (target, pred))
    keep = target >= far
    if keep.mean() < 0.01:
        keep = np.ones_like(keep)
    s, t = scale_shift(pred[keep], target[keep])
    aligned = np.clip(s * pred + t, 0.0, 1.0)
    d, d_ctrl = (1.0 / (1.0 / depth_range + (1.0 - 1.0 / depth_range) * c) for c in (aligned[keep], target[keep]))
    ratio = np.maximum(d / d_ctrl, d_ctrl / d)
    return dict(abs_rel=float(np.mean(np.abs(d - d_ctrl) / d_ctrl)), delta1=float(np.mean(ratio < 1.25)),
                scored=float(keep.mean())), aligned


@dataclass
class Settings:
    """How to translate, the flags of the same names (main() fills it from them); steps and guidance
    default to the sampler's (SAMPLERS)."""
    sampler: str = "unipc"          # or "lcm": the LCM-LoRA folded into the UNet
    steps: int = None
    guidance: float = None
    control_scale: float = 1.0
    strength: float = None          # img2img from the day image; None: from noise
    gen_size: tuple = (576, 1024)   # (H, W) generated, multiples of 8; outputs are resized back
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
        """Fill the sampler's defaults, then check what the pipeline would otherwise fail on late or silently
        (ValueError naming the flag: gdt.py reports it as a usage error)."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler: choose from {', '.join(SAMPLERS)} (got {self.sampler!r})")
        defaults = SAMPLERS[self.sampler]
        self.steps = defaults["steps"] if self.steps is None else self.steps
        self.guidance = defaults["guidance"] if self.guidance is None else self.guidance
        for flag, value in dict(max_tries=self.max_tries, depth_tiles=self.depth_tiles, steps=self.steps).items():
            if value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
        if any(v <= 0 or v % 8 for v in self.gen_size):
            raise ValueError("--gen-size: give HxW, both multiples of 8 (e.g. 576x1024)")
        if self.strength is not None and not (0 < self.strength <= 1 and self.steps * self.strength >= 1):
            raise ValueError("--strength must be in (0, 1] with --steps x --strength >= 1 (else no denoising step "
                             "runs)")
        if self.sampler == "lcm" and not 1 <= self.guidance <= 2:
            raise ValueError("--sampler lcm: --guidance must be 1-2 (the LCM-LoRA is distilled for that; above, "
                             "images burn)")
        if not 0 <= self.min_agreement <= 1:
            raise ValueError("--min-agreement is a delta1 share of pixels: give a value in [0, 1], e.g. 0.8")
        if self.min_agreement > 0 and not self.audit:
            raise ValueError("--min-agreement needs the geometry audit: drop --no-audit")


# GDT's models (docs/method.md §1): the frozen pretrained networks gdt.py loads once and never trains. Each
# loader takes a hub id or a folder; `alternative` in an error names the flag that does without the model.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GDT_MODELS = {  # hub ids; gdt.py --models-dir DIR reads DIR/<last part of the id>
    "sd_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "controlnet": "lllyasviel/control_v11f1p_sd15_depth",
    "depth_model": "depth-anything/Depth-Anything-V2-Small-hf", "lcm_lora": "latent-consistency/lcm-lora-sdv1-5",
    "ip_adapter": "h94/IP-Adapter"}
CAPTION_MODELS = {"blip2": "Salesforce/blip2-opt-2.7b", "blip": "Salesforce/blip-image-captioning-base"}
IP_ADAPTER_WEIGHT = "models/ip-adapter_sd15.bin"  # inside --ip-adapter, with image_encoder/ beside it
LCM_LORA_WEIGHT = "pytorch_lora_weights.safetensors"  # the file name in latent-consistency/lcm-lora-sdv1-5


def gdt_model_paths(models_dir=None, captioner="blip2", **given):
    """flag -> hub id or folder of every GDT model: a given path wins, then models_dir/<the id's last
    part> (the folder `hf download ID --local-dir DIR/<name>` and `tools/tiny_models.py --out DIR` fill),
    then the hub id."""
    ids = dict(GDT_MODELS, caption_model=CAPTION_MODELS.get(captioner, CAPTION_MODELS["blip2"]))
    paths = {k: given.get(k) or (os.path.join(models_dir, v.rsplit("/", 1)[-1]) if models_dir else v)
             for k, v in ids.items()}
    return dict(paths, ip_adapter_weight=given.get("ip_adapter_weight") or IP_ADAPTER_WEIGHT)


def add_gdt_model_args(p):
    """gdt.py's flags that say where each model comes from (None: from --models-dir, else the hub id)."""
    p.add_argument("--models-dir", metavar="DIR", help="every model below from DIR/<last part of its id> "
                   "(DIR/stable-diffusion-v1-5, ...); `python tools/tiny_models.py --out DIR` writes random tiny ones")
    p.add_argument("--sd-model", help=f"SD 1.5 id or folder (default {GDT_MODELS['sd_model']})")
    p.add_argument("--controlnet", help=f"depth ControlNet (default {GDT_MODELS['controlnet']})")
    p.add_argument("--lcm-lora", help=f"LoRA for --sampler lcm (default {GDT_MODELS['lcm_lora']})")
    p.add_argument("--caption-model", help="default: blip2-opt-2.7b, or BLIP-base with --captioner blip")
    p.add_argument("--depth-model", help=f"default {GDT_MODELS['depth_model']}, or Intel/dpt-hybrid-midas: a "
                   "transformers depth model predicting relative inverse depth (control maps and the geometry audit)")
    p.add_argument("--ip-adapter", help=f"IP-Adapter repository or folder (default {GDT_MODELS['ip_adapter']})")
    p.add_argument("--ip-adapter-weight", help=f"inside --ip-adapter, image_encoder/ beside it (default "
                   f"{IP_ADAPTER_WEIGHT})")


def load_gdt_model(load_fn, name, alternative="", **kwargs):
    """from_pretrained_or_explain with gdt.py's fixes (`alternative` names a flag that does without the model)."""
    hint = ("--models-dir DIR holding it (`python tools/tiny_models.py --out DIR` writes random tiny models "
            "for a smoke run)")
    return from_pretrained_or_explain(load_fn, name, alternative + hint, **kwargs)


def load_depth_model(path, device, dtype, alternative="--control-dir or "):
    """predict(pil) -> (H, W) relative inverse depth at the image's size, from a transformers depth model."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    model = load_gdt_model(AutoModelForDepthEstimation.from_pretrained, path, alternative, dtype=dtype)
    model = model.to(device).eval()
    processor = load_gdt_model(AutoImageProcessor.from_pretrained, path)

    @torch.no_grad()
    def predict(image):
        pixels = processor(images=as_rgb8(image), return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels.to(device, dtype)).predicted_depth[:, None].float()
        return F.interpolate(out, size=(image.height, image.width), mode="bicubic")[0, 0].cpu().numpy()
    return predict


def load_captioner(path, device, dtype):
    """(model, processor) of a BLIP-2 or BLIP captioner."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = load_gdt_model(AutoModelForImageTextToText.from_pretrained, path, "--captioner none or ", dtype=dtype)
    return model.to(device).eval(), load_gdt_model(AutoProcessor.from_pretrained, path)


def load_pipeline(sd_model, controlnet, img2img, dtype):
    """SD 1.5 + depth ControlNet (from noise, or img2img from the day image), on the CPU."""
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetPipeline
    controlnet = load_gdt_model(ControlNetModel.from_pretrained, controlnet, dtype=dtype)
    pipeline = StableDiffusionControlNetImg2ImgPipeline if img2img else StableDiffusionControlNetPipeline
    return load_gdt_model(pipeline.from_pretrained, sd_model, controlnet=controlnet, safety_checker=None,
                          requires_safety_checker=False, dtype=dtype)


def fuse_lcm_lora(pipe, path):
    """The LCM-LoRA folded into the UNet weights (the sampler then costs what plain SD costs) + LCMScheduler.
    diffusers' own warnings stay on; every module of the file must have been wrapped before the fuse (a file
    for another architecture would otherwise fuse partly, in silence): check_lora_loaded."""
    from diffusers import LCMScheduler
    logging.getLogger("diffusers.loaders.lora_base").addFilter(no_text_encoder_lora_notice)
    load_gdt_model(pipe.load_lora_weights, path, "--sampler unipc or ", weight_name=LCM_LORA_WEIGHT)
    check_lora_loaded(pipe, lora_file(path))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)


def no_text_encoder_lora_notice(record):
    """logging filter: drop diffusers' notice that the LoRA has no text-encoder keys (the LCM-LoRA adapts the UNet
    only; check_lora_loaded counts what it does hold). Every other warning passes."""
    return "No LoRA keys associated to CLIPTextModel" not in record.getMessage()


def lora_file(path):
    """The LoRA's safetensors file: `path` itself, or LCM_LORA_WEIGHT in the folder (local or hub cache)."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        return os.path.join(path, LCM_LORA_WEIGHT)
    from huggingface_hub import hf_hub_download
    return hf_hub_download(path, LCM_LORA_WEIGHT)


def lora_modules(keys):
    """Module names of a LoRA state dict's keys, in kohya (`lora_unet_a_b.lora_down.weight`, `.alpha`) or
    peft / diffusers (`unet.a.b.lora_A.weight`) layout, without the weight suffixes."""
    suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight", ".lora_B.weight",
                ".lora.down.weight", ".lora.up.weight", ".lora_mid.weight", ".dora_scale")
    return sorted({next((k[:-len(s)] for s in suffixes if k.endswith(s)), k) for k in keys})


def check_lora_loaded(pipe, path):
    """Raise if a module of the LoRA file at `path` was not wrapped by load_lora_weights: diffusers drops keys it
    cannot place with a warning only, and the fuse would then apply part of the LoRA."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        wanted = lora_modules(f.keys())
    names, count = set(), 0
    for prefix, part in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, module in part.named_modules():
            if isinstance(module, BaseTunerLayer):
                count += 1
                names |= {f"{prefix}.{name}", f"lora_{prefix}_" + name.replace(".", "_"),
                          "lora_te_" + name.replace(".", "_")}
    if count >= len(wanted):
        return
    # kohya files name modules after diffusers' paths; one in the original SD layout is counted, not named
    missing = [m for m in wanted if m not in names] or ["(its names are in another layout)"]
    raise ValueError(f"LoRA {path}: {len(wanted) - count} of its {len(wanted)} modules match no layer of the "
                     f"pipeline, first {missing[0]!r}; it is not a LoRA for this Stable Diffusion 1.5 UNet (use "
                     f"latent-consistency/lcm-lora-sdv1-5), or use --sampler unipc")


def no_empty_fp32_notice(record):
    """logging filter: drop diffusers' notice that a module has "modules that should be kept in float32: []" (an
    empty list: loading IP-Adapter casts the UNet to its own dtype, and nothing is lost); other warnings pass."""
    return "should be kept in float32: []" not in record.getMessage()


def add_ip_adapter(pipe, path, weight, scale):
    """IP-Adapter (`weight` inside `path`, its image encoder beside it), fed one reference per sample."""
    logging.getLogger("diffusers.models.modeling_utils").addFilter(no_empty_fp32_notice)
    subfolder, weight_name = os.path.split(weight)
    load_gdt_model(pipe.load_ip_adapter, path, "--no-ip-adapter or ", subfolder=subfolder, weight_name=weight_name)
    pipe.set_ip_adapter_scale(scale)
    pipe.prepare_ip_adapter_image_embeds = per_sample_ip_adapter_embeds


def per_sample_ip_adapter_embeds(ip_adapter_image, ip_adapter_image_embeds, device, batch_size, guidance):
    """Stands in for the pipeline's `prepare_ip_adapter_image_embeds`, which repeats given embeddings
    once per prompt (one reference shared by the batch): B per-sample references would become B^2
    rows, and every image would attend to all of them (diffusers issue #9813)."""
    if any(e.shape[0] != batch_size * (1 + bool(guidance)) for e in ip_adapter_image_embeds):
        raise ValueError(f"ip_adapter_image_embeds need one row per sample (x2 with guidance), batch {batch_size}")
    return [e.to(device) for e in ip_adapter_image_embeds]


@dataclass
class Translator:
    """Everything gdt.translate_batch needs, loaded once by `build_translator`."""
    settings: Settings           # how to translate
    models: dict                 # gdt_model_paths(): what each model was loaded from
    pipe: object                 # the diffusers ControlNet pipeline
    captioner: tuple = None      # (model, processor); None: the fixed settings.caption
    depth: object = None         # predict(pil) -> inverse depth; None when neither control maps nor audit need it
    styles: dict = None          # cond -> reference image paths; None without IP-Adapter
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    micro_batch: int = 1         # images per model call, see build_translator
    style_cache: dict = field(default_factory=dict)


def build_translator(settings, models=None, styles=None, batch_size=4, compile=False):
    """Load every GDT model a gdt.Settings needs once, from `models` (gdt_model_paths(); default the hub ids).
    `styles`: cond -> real reference images for IP-Adapter, None for no IP-Adapter. The depth model
    makes the control maps (unless settings.control_dir) and audits the translations."""
    models = models or gdt_model_paths(captioner=settings.captioner)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES.get(settings.dtype, torch.float16 if device.type == "cuda" else torch.float32)
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
    pipe.vae.enable_slicing()  # decode a batch one image at a time: 576x1024 costs ~1-2 GB per image decoded at once
    if device.type == "cuda":  # NHWC convolutions feed tensor cores without layout transposes
        for module in (pipe.unet, pipe.controlnet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet.compile()
        pipe.controlnet.compile()
    pipe.set_progress_bar_config(disable=True)
    # Images per model call. CPU: one, as BLAS/oneDNN pick kernels by batch size (a batched image differs in its last
    # bits from itself alone) and one image fills the cores. GPU: batch_size, padded to it in gdt.translate_batch.
    return Translator(settings, models, pipe, captioner, depth, styles, device, dtype,
                      1 if device.type == "cpu" else batch_size)


# Resident memory one denoiser call (ControlNet + UNet) adds at 576x1024, as a fixed part plus a part per latent
# (a line through the two measured calls: 0.57 GiB on 1 latent, 3.15 on 8), and that the sliced VAE decode of one
# image adds; fp32, on the CPU (tools/bench.py --only memory; BENCHMARKS.md, 2026-12-07).
DENOISE_FIXED_GIB, DENOISE_PER_LATENT_GIB, DECODE_ACTIVATION_GIB = 0.20, 0.37, 2.40


def expected_memory(translator, batch_size):
    """One line for the start: the loaded models' weights (exact: parameters x bytes; the depth model's few
    tens of MB left out) and what a batch adds, from the CPU measurements."""
    pipe = translator.pipe
    modules = [pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder, getattr(pipe, "image_encoder", None),
               translator.captioner[0] if translator.captioner else None]
    weights = sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters()) / 2 ** 30
    lanes = batch_size * (2 if translator.settings.guidance > 1 else 1)  # classifier-free guidance doubles the batch
    line = f"expected memory: weights {weights:.1f} GiB ({translator.dtype})"
    scale = (translator.settings.gen_size[0] * translator.settings.gen_size[1] / (576 * 1024)) * (
        0.5 if translator.dtype in (torch.float16, torch.bfloat16) else 1)
    activations = scale * max(DENOISE_FIXED_GIB + lanes * DENOISE_PER_LATENT_GIB, DECODE_ACTIVATION_GIB)
    return line + (f" + activations {activations:.1f} GiB (the larger of one denoiser call on {lanes} latents and the "
                   f"sliced VAE decode of one image, measured on the CPU in fp32 at 576x1024, scaled by pixels and "
                   f"precision) = about {weights + activations:.1f} GiB; BENCHMARKS.md, memory")


@torch.no_grad()
def caption_images(translator, images):
    """GDT's BLIP-2 (or BLIP) captions of day images, docs/method.md §1; the fixed caption with --captioner none."""
    if translator.captioner is None:
        return [translator.settings.caption] * len(images)
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
            cache[path] = pipe.encode_image([as_rgb8(data.load_image(path))], pipe.device, 1)[0]
    positive = torch.cat([cache[p] for p in style_paths])[:, None]
    return torch.cat([torch.zeros_like(positive), positive]) if translator.settings.guidance > 1 else positive


# IP-Adapter's references: real images of each condition (docs/method.md §1).
def condition_frames(data_root, version, cond):
    """CAM_FRONT key frames (paths) of the training scenes whose description names `cond`: GDT's real
    style references (docs/method.md §1), frames depth training never uses. Weather references ('rain') come
    from day scenes only, as the prompt says 'in a rainy day'; 'night' takes every night scene."""
    index, val = data.load_index(data_root, version), data.val_scene_names(version)
    wanted = lambda text: cond in text and (cond == 'night' or 'night' not in text)  # noqa: E731
    paths = sorted(index.sample_data[t]['filename'] for s in index.scenes
                   if s['name'] not in val and wanted(s['description'].lower()) for t in index.scene_key_frames(s))
    if not paths:
        raise ValueError(f"no training scene in {data_root} ({version}) is described as '{cond}'"
                         f"{'' if cond == 'night' else ' by day'}: pass real '{cond}' images with "
                         f"--style-dir {cond}=DIR, or --no-ip-adapter")
    return paths


def style_references(style_dir, conds, dataset, data_root, version):
    """cond -> GDT's IP-Adapter reference images (docs/method.md §1), from gdt.py's --style-dir entries:
    COND=DIR per condition, DIR holding DIR/<cond>/,
    or ['data']: the nuScenes training scenes of the condition (condition_frames, the paper's choice)."""
    if style_dir == ["data"]:
        if dataset != "nuscenes":
            raise ValueError("--style-dir data draws from nuScenes night / rain training scenes: use --dataset "
                             "nuscenes, or pass --style-dir COND=DIR")
        return {c: [os.path.join(data_root, p) for p in condition_frames(data_root, version, c)] for c in conds}
    folders = {}
    for entry in style_dir or []:
        cond, _, folder = entry.partition("=")
        folders.update({cond: folder} if cond in PHRASES and folder else
                       {c: os.path.join(entry, c) for c in conds if c not in folders})
    for cond in conds:
        if not os.path.isdir(folders.get(cond, "")):
            raise ValueError(f"IP-Adapter needs real '{cond}' reference images: pass --style-dir {cond}=DIR or "
                             f"--style-dir DIR with DIR/{cond}/ (not found: {folders.get(cond)}), or --no-ip-adapter")
    return {c: [os.path.join(folders[c], p) for p in data.list_images("folder", folders[c])] for c in conds}


def denoiser_calls_per_image(settings):
    """UNet + ControlNet evaluations per image and attempt: the denoising steps (x strength with img2img),
    doubled by classifier-free guidance above 1 (the LCM-LoRA UNet has no guidance embedding, so
    diffusers doubles it too): UniPC 30 x 2 = 60, LCM 4 x 1 = 4 by default."""
    s = settings
    steps = min(int(s.steps * s.strength), s.steps) if s.strength else s.steps
    return steps * (2 if s.guidance > 1 else 1)


def prepare_batch(translator, images, keys):
    """Caption and depth condition of each frame: computed once, shared by all its conditions and attempts."""
    settings, n = translator.settings, translator.micro_batch
    images = [as_rgb8(im) for im in images]
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
    return dict(settings=dataclasses.asdict(settings),
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
    settings, n, (h, w) = translator.settings, translator.micro_batch, translator.settings.gen_size
    images = [as_rgb8(im) for im in images]
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
        control_images = [Image.fromarray(to_uint8(controls[i])).resize((w, h), Image.BICUBIC) for i in rows]
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
            out = Image.fromarray(to_uint8(generated)).resize(images[i].size, Image.LANCZOS)
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
            out = in_source_mode(out, images[j].mode)
            if settings.audit:
                saved = as_saved(out, Path(keys[j]).suffix)
                inverse_depth = control_depth(translator.depth, saved, settings.depth_tiles)
                record["agreement"] = geometry_agreement(inverse_depth, controls[j])[0]
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


# The translation files, the writing side (docs/method.md §1): `<out>/<cond>/<path relative to the data root>` in
# the source's format and mode, written atomically, and JSONL manifests `<out>/<cond>/manifest.rank<r>.jsonl`
# (data.py reads both; tools/classic_weather.py writes the same files).

JPEG_QUALITY = 95  # translations are training inputs: keep JPEG artefacts well below the night noise
STALE_AGE_S = 60  # a temp file untouched this long has no writer (an image is written in well under a second)


def as_rgb8(image):
    """8-bit RGB of any PIL image. 16-bit greyscale (PNG modes 'I;16', 'I') is scaled by 1/257:
    PIL's convert('RGB') clips it, turning every value above 255 white."""
    if image.mode.startswith('I'):
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8)).convert('RGB')
    return image.convert('RGB')


def in_source_mode(image, mode):
    """An 8-bit RGB translation back in the source's mode (16-bit greyscale: x 257)."""
    if mode.startswith('I'):
        grey = np.asarray(image.convert('L'), dtype=np.int32) * 257
        return Image.fromarray(grey.astype(np.uint16 if mode.startswith('I;16') else np.int32))
    return image.convert(mode)


def to_uint8(x):
    """uint8 of an array in [0, 1] (clipped), rounded to the nearest level."""
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(image, file, suffix):
    """Save in the format of the extension `suffix` (JPEG at JPEG_QUALITY)."""
    fmt = Image.registered_extensions()[suffix.lower()]
    image.save(file, format=fmt, **({'quality': JPEG_QUALITY} if fmt == 'JPEG' else {}))


def save_atomic(image, path):
    """Save in the format of path's extension, whole or not at all (data.write_atomic); the file is read back
    before it takes its name, so a full disk or a cut write fails here instead of leaving a broken output."""
    def write(tmp):
        save_image(image, tmp, Path(path).suffix)
        saved = data.load_image(tmp)  # decodes every pixel: a truncated file raises
        if saved.size != image.size:
            raise OSError(f"{path}: the written image reads back at {saved.size}, not {image.size}")
    return data.write_atomic(path, write)


def as_saved(image, suffix):
    """The image as its file will read back (JPEG loses detail): what the student sees and the audit checks."""
    buffer = io.BytesIO()
    save_image(image, buffer, suffix)
    return data.load_image(buffer)


def remove_stale(folders):
    """Delete the temp outputs `.<name>.tmp<pid>` below `folders` of killed runs: their process is gone
    and nothing touched them for a minute (a rank on another machine sharing the folder can have the
    same pid). Returns the count."""
    removed = 0
    for path in [os.path.join(d, n) for folder in folders for d, _, names in os.walk(folder) for n in names
                 if n.startswith('.') and re.search(r'\.tmp\d+$', n)]:
        try:
            os.kill(int(re.search(r'\.tmp(\d+)$', path)[1]), 0)  # the writer is alive (PermissionError: not ours)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another rank
                if time.time() - os.path.getmtime(path) > STALE_AGE_S:
                    os.unlink(path)
                    removed += 1
        except PermissionError:
            pass
    return removed


def append_record(folder, record, rank=0):
    """Append one JSON line to `<folder>/manifest.rank<rank>.jsonl` (data.read_manifests reads them): a manifest
    per rank, so ranks never append to the same file. An incomplete last line left by a killed run is dropped
    first (its frame has no output, so it is redone): the manifest stays one record per line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"manifest.rank{rank}.jsonl"
    if path.exists() and not (content := path.read_bytes()).endswith(b"\n") and content:
        with open(path, "r+b") as f:  # a torn last line (a killed write): its frame is being redone, drop it
            f.truncate(content.rfind(b"\n") + 1)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())  # on disk before the next frame: a full disk fails here, not in silence


def add_translation_args(p):
    """The flags that say which frames a writer of translations reads and where it writes (argparse)."""
    p.add_argument("--dataset", choices=("nuscenes", "robotcar", "folder"), default="nuscenes",
                   help="the split's training frames (as the trainers); folder: every .jpg/.jpeg/.png below --data-root")
    p.add_argument("--data-root", required=True, help="the dataset")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version folder")
    p.add_argument("--split", default="train", help="nuScenes / RobotCar split to translate")
    p.add_argument("--out", required=True, help="writes OUT/<cond>/<path relative to --data-root>")
    return p


def translation_frames(dataset, data_root, version, split, out, conds):
    """The frames a writer of translations (gdt.py, tools/classic_weather.py) works through, after the
    checks both make: `out` lies outside the dataset, the split has frames, and the temp files of a
    killed run below out/<cond>/ are gone."""
    if Path(out).resolve().is_relative_to(Path(data_root).resolve()):
        raise ValueError(f"--out {out} is inside --data-root {data_root}: translations never go into the dataset")
    data.check_writable(out)
    keys = data.list_images(dataset, data_root, version, split)
    if not keys:
        raise ValueError(f"no images for --dataset {dataset} --split {split} under {data_root}")
    stale = remove_stale([Path(out, c) for c in conds])
    if stale:
        print(f"removed {stale} half-written temp files of an interrupted run")
    return keys


def settings_from_args(args):
    """The Settings of the flags of the same names (--no-audit: audit off); unset flags: Settings' defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name, None)
             is not None}
    return Settings(**given, audit=not args.no_audit)


def parse_args(argv=None):
    p = data.ArgumentParser(description=__doc__, formatter_class=data.HelpFormatter)
    add_translation_args(p)
    add_gdt_model_args(p)
    p.add_argument("--cond", "--conds", nargs="+", metavar="COND",
                   help=f"target conditions ({', '.join(PHRASES)}), space- or comma-separated; default: night,rain")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="unipc",
                   help="unipc: the paper's setting; lcm: SD 1.5 + --lcm-lora, LCMScheduler, 4 steps, guidance 1")
    p.add_argument("--captioner", choices=("blip2", "blip", "none"), default="blip2",
                   help="blip2 needs about 24 GB in fp32 on a CPU: use blip or none there")
    p.add_argument("--caption", default="a street scene", help="the caption with --captioner none")
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
    p.add_argument("--ip-scale", type=float, default=0.6, help="IP-Adapter strength")
    p.add_argument("--steps", type=int, help="default 30 (unipc), 4 (lcm), 2 with --tiny")
    p.add_argument("--guidance", type=float, help="default 7.5 (unipc), 1 (lcm: 1-2; 1 runs no negative pass)")
    p.add_argument("--control-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    p.add_argument("--strength", type=float, help="img2img from the day image instead of from noise")
    p.add_argument("--gen-size", type=data.parse_size,
                   help="HxW generated (multiples of 8), resized back; default 576x1024, 64x112 with --tiny")
    p.add_argument("--night-ratio", type=float, default=0.40, help="night mean / day mean; 0: off")
    p.add_argument("--batch-size", type=int, default=4, help="frames loaded together; images per call on a GPU")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on GPU, else fp32")
    p.add_argument("--tiny", action="store_true", help="smoke-run defaults: 64x112, 2 steps (with --models-dir "
                   "from tools/tiny_models.py)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet (GPU, long runs)")
    p.add_argument("--no-check-data", action="store_true",
                   help="skip reading the frames still to translate (and their --control-dir maps) once before any "
                        "model loads, which finds a broken one before the run instead of when its batch comes")
    args = p.parse_args(argv)
    try:
        args.cond = data.parse_conditions(args.cond or ["night", "rain"])
    except ValueError as e:
        p.error(f"argument --cond/--conds: {e}")
    if args.tiny:
        args.steps, args.gen_size = args.steps or TINY_DEFAULTS["steps"], args.gen_size or TINY_DEFAULTS["gen_size"]
    try:
        settings_from_args(args)
    except ValueError as e:
        p.error(str(e))
    if args.keep_rejected and not args.min_agreement:
        p.error("--keep-rejected keeps frames under --min-agreement: give --min-agreement too")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = settings_from_args(args)
    keys = translation_frames(args.dataset, args.data_root, args.version, args.split, args.out, args.cond)
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
    if not args.no_check_data:  # before any model loads: a broken frame fails in seconds, not when its batch comes
        inputs = [os.path.join(args.data_root, k) for k, _ in work]
        inputs += [Path(settings.control_dir, k).with_suffix(".png") for k, _ in work] if settings.control_dir else []
        print(f"rank {rank}: {data.require_intact(inputs, progress=rank == 0)}; --no-check-data skips this")
    styles = None if args.no_ip_adapter else style_references(args.style_dir, args.cond, args.dataset, args.data_root,
                                                                 args.version)
    models = gdt_model_paths(args.models_dir, settings.captioner,
                             **{k: getattr(args, k) for k in (*GDT_MODELS, "caption_model", "ip_adapter_weight")})
    # cuDNN's autotuner may pick other kernels on a rerun: fixed ones make a resumed run's images bit-identical
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    translator = build_translator(settings, models, styles, args.batch_size, args.compile)
    if rank == 0:
        print(expected_memory(translator, translator.micro_batch))
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
                        save_atomic(out, folder / keys[j])
                    record.update(source=os.path.abspath(os.path.join(args.data_root, keys[j])), output=keys[j])
                    counts[cond][record["status"]] += 1
                    append_record(Path(args.out, cond), record, rank)
                bar.update(len(rows))
    print(f"rank {rank}: " + "; ".join(f"{c}: {n['ok']} written, {n['rejected']} rejected" for c, n in counts.items()))


if __name__ == "__main__":
    data.run_cli(main, "gdt.py")
