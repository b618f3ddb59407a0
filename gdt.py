"""GDT: generative day -> night / rain / snow / fog translation of the training images (docs/method.md §1).

    # offline smoke run: a synthetic world (tools/synthetic.py) and random tiny models (tools/tiny_models.py)
    python gdt.py --tiny --models-dir tiny --dataset nuscenes --data-root world --out gdt --cond night --style-dir data
    # the paper's setting; IP-Adapter references from the train split's own night / rain scenes
    python gdt.py --dataset nuscenes --data-root /data/nuscenes --out /data/gdt --cond night,rain --style-dir data
    python gdt.py --models-dir /data/models ...      # every model from DIR/<last part of its hub id>
    python gdt.py ... --sampler lcm                  # LCM-LoRA, 4 steps: 1/15 of the denoiser FLOPs
    python gdt.py ... --min-agreement 0.8            # redraw (next seed, --max-tries) frames under 0.8 delta1
    torchrun --standalone --nproc_per_node=8 gdt.py ...   # same flags: frames split over the ranks
    python gdt.py --dataset folder --data-root my_images --out gdt --cond night --style-dir night=real_night/
    python tools/gdt_report.py gdt                   # counts, agreement histograms, worst frames

Writes `<out>/<cond>/<path relative to --data-root>` (the source's format, size and mode) and a JSONL
record per image to `<out>/<cond>/manifest.rank<r>.jsonl` (data.py reads both; an output's last record
wins): "output", "status" ("ok", or "rejected": no attempt passed --min-agreement, no file written), the
geometry "agreement" and every attempt's seed. Seeds hash the key, condition and attempt: any subset,
order, batch size, rank count or resume gives the same image. The models and their loading live in
model.py (build_translator), the audit's metric in losses.py (geometry_agreement), Table 3's classic
baseline in tools/classic_weather.py. BLIP-2 needs about 24 GB in fp32: on a CPU use --captioner blip.
From another script (Settings holds the flags' defaults and checks):

    translator = gdt.build_translator(gdt.Settings(sampler="lcm"), model.gdt_model_paths("models/"),
                                      styles={"night": ["real_night.jpg"]})
    [(night, record)] = gdt.translate_audited(translator, [Image.open("day.jpg")], ["day.jpg"], "night")
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import data
from losses import align_scale_shift, geometry_agreement
from model import (DTYPES, GDT_MODELS, add_gdt_model_args, build_translator, caption_images, gdt_model_paths,
                   style_embeds)

PHRASES = {"night": "At night", "rain": "In a rainy day", "snow": "In a snowy day", "fog": "In a foggy day"}
NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
SAMPLERS = {"unipc": dict(steps=30, guidance=7.5), "lcm": dict(steps=4, guidance=1.0)}  # docs/method.md §1
TINY_DEFAULTS = dict(steps=2, size=(64, 112))  # --tiny: a smoke run, seconds per frame on a CPU


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
    inv = np.asarray(data.load_image(Path(control_dir, key).with_suffix(".png")).convert("F"))  # missing: named
    return control_depth(lambda _: inv, None)  # the map is its own prediction


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
        if any(v <= 0 or v % 8 for v in self.size):
            raise ValueError("--size: give HxW, both multiples of 8 (e.g. 576x1024)")
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


def settings_from_args(args):
    """The Settings of the flags of the same names (--no-audit: audit off); unset flags: Settings' defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name, None)
             is not None}
    return Settings(**given, audit=not args.no_audit)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=data.HelpFormatter)
    data.add_translation_args(p)
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
    p.add_argument("--size", type=data.parse_size,
                   help="HxW generated (multiples of 8), resized back; default 576x1024, 64x112 with --tiny")
    p.add_argument("--night-ratio", type=float, default=0.40, help="night mean / day mean; 0: off")
    p.add_argument("--batch-size", type=int, default=4, help="frames loaded together; images per call on a GPU")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on GPU, else fp32")
    p.add_argument("--tiny", action="store_true", help="smoke-run defaults: 64x112, 2 steps (with --models-dir "
                   "from tools/tiny_models.py)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet (GPU, long runs)")
    args = p.parse_args(argv)
    args.cond = data.split_conditions(args.cond or ["night", "rain"])
    unknown = [c for c in args.cond if c not in PHRASES]
    if unknown or not args.cond:
        p.error(f"argument --cond/--conds: invalid choice: {', '.join(map(repr, unknown)) or 'none given'} "
                f"(choose from {', '.join(PHRASES)})")
    if args.tiny:
        args.steps, args.size = args.steps or TINY_DEFAULTS["steps"], args.size or TINY_DEFAULTS["size"]
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
    styles = None if args.no_ip_adapter else data.style_references(args.style_dir, args.cond, args.dataset,
                                                                      args.data_root, args.version, tuple(PHRASES))
    models = gdt_model_paths(args.models_dir, settings.captioner,
                             **{k: getattr(args, k) for k in (*GDT_MODELS, "caption_model", "ip_adapter_weight")})
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
