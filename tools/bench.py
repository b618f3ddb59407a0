"""Throughput of every SSD stage on the device at hand: GDT, teacher and student training, inference,
and the data pipeline that feeds training.

    python tools/bench.py --tiny                      # CPU smoke run of the same code paths, seconds
    python tools/bench.py                             # one GPU: every figure, full-size models
    python tools/bench.py --only data                 # CPU: training items/s per worker, workers one GPU needs
    python tools/bench.py --only flops                # CPU, seconds: FLOPs of every stage at full size
    python tools/bench.py --only memory --memory-minutes 60   # CPU: resident memory of full-size steps
    python tools/bench.py --compile --models-dir /tmp/sd15-random --out bench-compile.json
    python tools/bench.py --only teacher student --train-batch 4     # a subset; the paper's batch
    python tools/bench.py --only onnx                 # CPU frames/s of the depth net: torch vs the ONNX export

Full size: the real architectures (SD 1.5 + ControlNet + IP-Adapter with its ViT-H image encoder;
DINOv2 ViT-B + DPT; ResNet-18 pose net) with random weights, which cost what pretrained ones cost.
The SD models are written once to --models-dir (4 GB, fp16) and loaded by gdt.build_translator.
Printed, and written atomically to --out as JSON after every figure (an interrupted or failing run
keeps what it measured; a failing section records its error and the others still run):
- matmul: measured rate of a large bf16 matmul (fp32 on CPU), the roofline of every share below;
- gdt: images/s at 576x1024, 30 steps, guidance 7.5, ControlNet + IP-Adapter, of ours
  (gdt.translate_batch, --gdt-batch images a call, fp16, channels-last, --compile) and of the
  naive loop (the diffusers pipeline once per image, fp16, defaults, reference passed as an image);
  their ratio; FLOPs per image and their share of the matmul rate; ours again with --sampler lcm
  (4 steps, guidance 1; a random LCM-LoRA, folded into the UNet). Captions and depth maps are
  inputs to all (gdt.py computes them once per frame for all conditions);
- teacher, student: training images/s at 518x784 (losses at 320x576; real loss modules, AdamW,
  bf16 autocast, batches already on the device: data loading is not timed) and MFU (FLOPs of one
  forward + backward x steps/s / matmul rate);
- inference: depth-net frames/s at 518x784, batch 1 and 16; peak GPU memory of each (none on CPU);
- flops: FLOPs per image of the training steps (teacher, student, LiDAR teacher), of inference and of
  GDT with the default sampler and with LCM (4 steps, guidance 1), counted on fake tensors (shapes
  only: full size in seconds on any machine);
- data: CPU cost of the real data.NuScenesDepth training items (teacher: 3 frames; student: + a GDT
  translation; LiDAR teacher: 1 frame + LiDAR projection) at the loss and network sizes, on a small
  synthetic world rendered at nuScenes' 900x1600 with JPEG frames (or --data-root), for the fast
  paths (PATHS): reference (full decode for every tensor, torchvision's PIL ops: the items before the
  fast decode), default (DCT-scaled decode, torchvision's jitter with the hue step by table lookups: the
  trainers' default, the same bytes), gpu_augment (the workers' share of --gpu-augment: decoding only;
  the same tensors are made on the GPU) and fast (DCT-scaled decode, affine jitter: --fast-jitter), and
  the bare decode of each item's frames: CPU ms per item, items/s of 1..N DataLoader workers, and the
  items/s one GPU consumes at --gpu-tflops (FLOPs per image from the flops section), hence the workers it needs.
- memory (only when asked, --only memory: tens of minutes on a CPU): resident memory of one full-size
  training step per cell (kind, batch, fp32 / bf16 autocast, gradient checkpointing; GDT: its batch's
  denoiser call and sliced VAE decode per sampler and precision), each in a fresh process on the CPU:
  weights, the state a step leaves, the step's activations, peak;
- onnx (only when asked: it needs pip install onnx onnxruntime): CPU frames/s at the network size, batch 1, of
  the depth net in torch (float32) and of its model.export_onnx graph in onnxruntime, on the same thread count,
  and the largest relative depth difference between the two;
--tiny: tiny models and sizes on one CPU thread; a smoke test of the code, not a speed claim.
"""
import argparse
import datetime
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop
from transformers.utils import logging as transformers_logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/ is not a package
import data  # noqa: E402
import gdt  # noqa: E402
import tiny_models  # noqa: E402
from model import DepthNet, DinoFeatures, PoseNet  # noqa: E402
from train_student import StudentLoss  # noqa: E402
from train_teacher import LidarLoss, SelfSupervisedLoss  # noqa: E402
from training import add_common_args, build_depth_net, depth_param_groups, resolve_args  # noqa: E402

SECTIONS = ("gdt", "teacher", "student", "inference", "flops", "data", "memory", "onnx")
DEFAULT_SECTIONS = SECTIONS[:-2]  # memory takes tens of minutes and onnx needs optional packages: --only
FULL = dict(gdt_size="576x1024", gdt_steps=30, gdt_batch=8, source_size=(900, 1600), encoder="base",
            pose="resnet18", loss_size=(320, 576), net_size=(518, 784), iters=20, data_samples=32)
TINY = dict(gdt_size="64x64", gdt_steps=2, gdt_batch=2, source_size=(64, 64), encoder="tiny", pose="tiny",
            loss_size=(48, 84), net_size=(42, 70), iters=2, data_samples=4)
TRAIN_BATCHES = (32, 16, 8, 4)  # GPU default: the largest that fits
GUIDANCE = gdt.SAMPLERS["unipc"]["guidance"]  # gdt.py's default sampler (the paper's)
H100_BF16_TFLOPS = 989.4  # dense bf16 peak of an H100 SXM (NVIDIA datasheet, without sparsity)
MFU = 0.40  # the training MFU BENCHMARKS.md targets: the rate the data pipeline must keep up with
PATHS = {  # how an item is made: the items before the fast decode, the trainers' default, --gpu-augment, --fast-jitter
    "reference": dict(fast_decode=False, exact_jitter=True, hue_tables=False),
    "default": dict(fast_decode=True, exact_jitter=True),
    "gpu_augment": dict(fast_decode=True, exact_jitter=True, device_augment=True),  # the workers' share only
    "fast": dict(fast_decode=True, exact_jitter=False)}
DATA_KINDS = {  # what each trainer's dataset reads per item (train_teacher.py, train_student.py defaults)
    "teacher": dict(frames=(-1, 0, 1)),
    "student": dict(frames=(-1, 0, 1), gdt_conds=("night",), p_day=0.0),  # every item reads a translation
    "lidar_teacher": dict(frames=(0,), with_lidar=True),
}
aten = torch.ops.aten
# FlopCounterMode knows the CUDA attention kernels but not the CPU one, which --tiny would leave out
CPU_ATTENTION_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
                       aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__}


def parse_args(argv=None):
    p = data.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny random models and sizes (CPU smoke test)")
    p.add_argument("--out", default="bench.json", help="JSON of every figure (rewritten atomically after each)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS),
                   help="a subset of the sections (onnx runs only when named)")
    p.add_argument("--compile", action="store_true", help="torch.compile UNet + ControlNet and the depth nets")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the trained encoder")
    p.add_argument("--models-dir", help="keep the random SD models here (reused when present); default: temp")
    p.add_argument("--gdt-size", help="HxW generated (576x1024)")
    p.add_argument("--gdt-steps", type=int, help="denoising steps (30)")
    p.add_argument("--gdt-batch", type=int, help="images per call in our path (8)")
    p.add_argument("--gdt-images", type=int, help="images timed for each path (2 x --gdt-batch)")
    p.add_argument("--gdt-dtype", default="auto", choices=("auto", "fp16", "bf16"), help="ours; auto: fp16")
    p.add_argument("--train-batch", type=int, help=f"default: the largest of {TRAIN_BATCHES} that fits")
    p.add_argument("--iters", type=int, help="timed training steps, and inference passes per batch size (20)")
    p.add_argument("--infer-batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--data-root", help="nuScenes-format dataroot for the data section (its first day-clear "
                   "training scene is read); default: a small synthetic world at 900x1600 (72x128 with --tiny)")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version of --data-root")
    p.add_argument("--data-workers", nargs="+", type=int, help="DataLoader worker counts (1, 2, 4 .. CPUs)")
    p.add_argument("--data-samples", type=int, help="items timed per figure (32)")
    p.add_argument("--memory-cells", nargs="+", help="memory section: the cells to measure, as KIND,BATCH,DTYPE,CKPT "
                   "(e.g. teacher,4,fp32,ckpt; lidar_teacher,1,bf16,-; gdt,8,fp16,lcm: the last field is GDT's "
                   "sampler); "
                   "default: every cell of MEMORY_CELLS")
    p.add_argument("--memory-minutes", type=float, default=20, help="memory section: start no cell after this long; "
                   "the cells left are recorded as not measured")
    p.add_argument("--memory-cell", help=argparse.SUPPRESS)  # internal: measure one cell in this (fresh) process
    p.add_argument("--gpu-tflops", type=float, help=f"training FLOP rate of one GPU, TFLOP/s (default: {MFU:.0%}% "
                   f"of the measured bf16 matmul rate on a GPU, else of an H100's {H100_BF16_TFLOPS})")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.gdt_images = args.gdt_images or 2 * args.gdt_batch
    cpus = os.cpu_count() or 1  # 1, 2, 4, ... and every CPU
    args.data_workers = args.data_workers or sorted({2 ** i for i in range(cpus.bit_length())} | {cpus})
    if min(args.data_workers) < 1 or args.data_samples < 1:
        p.error("--data-workers and --data-samples must be at least 1")
    return args


class Results(dict):
    """Every figure so far, keyed by section, rewritten atomically to `path` each time one is added:
    a run that is interrupted, or whose later section fails, keeps what it measured."""

    def __init__(self, path, meta):
        super().__init__(meta=meta)
        self.path, self.stamp = path, {k: meta[k] for k in ("device", "torch", "date")}

    def add(self, section, **figures):
        self.setdefault(section, dict(self.stamp)).update(figures)
        write_json(self, self.path)


def write_json(results, path):
    """Write the results atomically (data.write_atomic)."""
    data.write_atomic(path, lambda tmp: tmp.write_text(json.dumps(results, indent=2)))


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return (f"CPU {names[0] if names else platform.machine()}, {os.cpu_count()} cores, "
            f"torch threads: {torch.get_num_threads()}")


def reset_peak(device):
    """Start a new peak-memory window on the GPU (nothing to do on CPU, where none is reported)."""
    if device.type == "cuda":
        gc.collect()  # pipelines hold reference cycles: free the last section's models first
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    """Peak GPU memory since reset_peak; None on CPU (nothing comparable to measure)."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def seconds(fn, iters, device):
    """Wall seconds of `iters` calls of fn, synchronised only at both ends of the timed region."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return time.perf_counter() - start


def count_flops(fn):
    """FLOPs (matmuls, convolutions, attention; 2 per multiply-add) of one call of fn."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


@contextmanager
def shapes_only(build):
    """The module `build()` makes, with fake tensors: full-size shapes and FLOP counts in seconds, with
    neither the memory nor the arithmetic (built on the meta device, then faked on the CPU). Tensors
    made inside the block are fake too; nothing that reads values (.item(), masks) works there. (Plain
    meta tensors are faster, but model.py's float32 regions ask autocast about the device type.)"""
    with torch.device("meta"):
        module = build()
    with FakeTensorMode(allow_non_fake_inputs=True):
        yield module.to_empty(device="cpu")


def matmul_rate(device):
    """The device's measured dense matmul rate: bf16 8192^3 on GPU, fp32 1024^3 on CPU."""
    n, dtype, iters = (8192, torch.bfloat16, 50) if device.type == "cuda" else (1024, torch.float32, 5)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds(lambda: a @ b, 3, device)
    rate = 2 * n ** 3 * iters / seconds(lambda: a @ b, iters, device)
    return dict(matmul=f"{str(dtype).split('.')[-1]} {n}x{n}", tflops=rate / 1e12)


def sd15_models():
    """Random SD 1.5 UNet, VAE and text encoder, the depth ControlNet made from the UNet, and
    IP-Adapter's ViT-H/14 image encoder, with the real configurations."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection
    vocab = len(tiny_models.clip_tokenizer())  # byte-level: the text encoder still sees 77 tokens
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.x
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, projection_dim=768, max_position_embeddings=77,
                                        bos_token_id=vocab - 2, eos_token_id=vocab - 1))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=1024, hidden_act="gelu"))
    return torch.nn.ModuleDict(dict(unet=unet, vae=vae, text=text, vision=vision,
                                    controlnet=ControlNetModel.from_unet(unet)))


def save_sd15_models(root):
    """sd15_models(), an IP-Adapter and an LCM-LoRA for them, fp16, in the folders `gdt.py --models-dir root`
    reads (gdt_model_paths; no depth model or captioner); reused when `root` holds a finished copy."""
    paths = gdt.gdt_model_paths(root)
    if os.path.exists(os.path.join(root, "complete")) and all(
            os.path.isdir(paths[k]) for k in ("sd_model", "controlnet", "ip_adapter", "lcm_lora")):
        return paths
    from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler
    from transformers import CLIPImageProcessor
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = sd15_models()
        ip_weights = tiny_models.ip_adapter_state_dict(m.unet, m.vision.config.projection_dim)
    # UniPC, as gdt.py swaps in: the naive loop then runs the same 30 UNet calls (PNDM would run 31)
    unipc = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    StableDiffusionPipeline(vae=m.vae, text_encoder=m.text, tokenizer=tiny_models.clip_tokenizer(), unet=m.unet,
                            scheduler=unipc, safety_checker=None, feature_extractor=CLIPImageProcessor(),
                            requires_safety_checker=False).to(torch.float16).save_pretrained(paths["sd_model"])
    m.controlnet.to(torch.float16).save_pretrained(paths["controlnet"])
    weight = os.path.join(paths["ip_adapter"], paths["ip_adapter_weight"])
    m.vision.to(torch.float16).save_pretrained(os.path.join(os.path.dirname(weight), "image_encoder"))
    torch.save(ip_weights, weight)
    tiny_models.save_tiny_lcm_lora(paths["lcm_lora"], m.unet)  # rank 4, not 64: fused, a LoRA costs nothing
    open(os.path.join(root, "complete"), "w").close()
    return paths


def gdt_flops(size, steps):
    """FLOPs per image of GDT at `size` (H, W) with the default sampler (`steps`, guidance 7.5) and
    with LCM (4 steps, guidance 1): text encoder, denoiser calls, VAE decode; on meta tensors. Left
    out: IP-Adapter's extra attention on 4 image tokens (0.2% at 64x128) and the image encoder (once
    per reference image, cached); the LCM-LoRA counts as fused into the UNet."""
    h, w = size
    with torch.device("meta"):  # diffusers' models run on meta tensors, faster than fake ones
        m = sd15_models()
        latents, t = torch.randn(1, 4, h // 8, w // 8), torch.tensor([500])
        context, tokens = torch.randn(1, 77, m.unet.config.cross_attention_dim), torch.zeros(1, 77, dtype=torch.long)

        def denoise():  # one evaluation: ControlNet residuals into the UNet
            down, mid = m.controlnet(latents, t, context, controlnet_cond=torch.randn(1, 3, h, w), return_dict=False)
            return m.unet(latents, t, context, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample

        text, call, decode = (count_flops(fn) for fn in (lambda: m.text(tokens), denoise,
                                                         lambda: m.vae.decode(latents)))
    lcm = gdt.SAMPLERS["lcm"]

    def per_image(steps, guidance):  # the negative prompt's pass doubles the text encoder and each call
        calls = gdt.denoiser_calls_per_image(argparse.Namespace(steps=steps, guidance=guidance, strength=None))
        return (2 if guidance > 1 else 1) * text + calls * call + decode

    default, fast = per_image(steps, GUIDANCE), per_image(lcm["steps"], lcm["guidance"])
    return dict(size=f"{h}x{w}", default_steps=steps, default_guidance=GUIDANCE, lcm_steps=lcm["steps"],
                lcm_guidance=lcm["guidance"], denoiser_call_tflop=call / 1e12, vae_decode_tflop=decode / 1e12,
                text_encoder_tflop=text / 1e12, default_tflop_per_image=default / 1e12,
                lcm_tflop_per_image=fast / 1e12, lcm_cost_ratio=fast / default)


def gdt_inputs(args, work):
    """Day images at the source size, their keys, captions and depth conditions; a style folder."""
    (h, w), n, rng = args.source_size, args.gdt_images, np.random.default_rng(0)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for _ in range(n)]
    near = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]  # a road: nearer towards the bottom
    controls = [np.broadcast_to(near, (h, w, 3)).copy() for _ in range(n)]
    os.makedirs(os.path.join(work, "styles", "night"))
    for i in range(3):
        Image.fromarray((rng.random((224, 224, 3)) * 80).astype(np.uint8)).save(f"{work}/styles/night/{i}.png")
    return images, [f"bench/{i:04d}.jpg" for i in range(n)], ["a street scene"] * n, controls


def gdt_ours(args, paths, work, inputs, device, rate, sampler):
    """images/s and FLOPs per image of gdt.translate_batch, its models loaded by gdt.build_translator."""
    images, keys, captions, controls = inputs
    settings = gdt.Settings(sampler=sampler, steps=args.gdt_steps if sampler == "unipc" else None,  # lcm: its 4 steps
                            gen_size=data.parse_size(args.gdt_size), captioner="none", dtype=args.gdt_dtype,
                            control_dir=work, audit=False)  # never read: the depth maps are passed in
    style_dir = os.path.join(work, "styles", "night")
    styles = {"night": [os.path.join(style_dir, p) for p in data.list_images("folder", style_dir)]}
    translator = gdt.build_translator(settings, paths, styles, batch_size=args.gdt_batch)
    pipe, b = translator.pipe, args.gdt_batch  # build_translator already made them channels-last on GPU
    run = lambda lo, hi: gdt.translate_batch(  # noqa: E731
        translator, images[lo:hi], keys[lo:hi], "night", captions[lo:hi], controls[lo:hi])
    run(0, b)  # warm-up: kernels, allocator, style-embedding cache
    flops = count_flops(lambda: run(0, b)) / b
    if args.compile:  # what gdt.py --compile does, after counting FLOPs on the eager modules
        pipe.unet.compile()
        pipe.controlnet.compile()
        run(0, b)
    reset_peak(device)
    images_per_s = len(images) / seconds(lambda: [run(i, i + b) for i in range(0, len(images), b)], 1, device)
    figures = dict(images_per_s=images_per_s, batch=b, dtype=str(pipe.unet.dtype).split(".")[-1],
                   tflop_per_image=flops / 1e12, roofline_fraction=flops * images_per_s / (rate * 1e12),
                   peak_gib=peak_gib(device))
    return {f"{'ours' if sampler == 'unipc' else sampler}_{k}": v for k, v in figures.items()}


def gdt_naive(args, paths, work, inputs, device):
    """images/s of the diffusers pipeline called once per image, fp16 (fp32 on CPU), default settings."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    images, keys, captions, controls = inputs
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    controlnet = ControlNetModel.from_pretrained(paths["controlnet"], dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(paths["sd_model"], controlnet=controlnet, dtype=dtype,
                                                             safety_checker=None, requires_safety_checker=False)
    pipe.load_ip_adapter(paths["ip_adapter"], subfolder="models", weight_name="ip-adapter_sd15.bin")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    h, w = (int(v) for v in args.gdt_size.split("x"))
    style = Image.open(f"{work}/styles/night/0.png").convert("RGB")

    def run(i):
        control = Image.fromarray(gdt.to_uint8(controls[i])).resize((w, h), Image.BICUBIC)
        pipe(prompt=gdt.condition_prompt("night", captions[i]), negative_prompt=gdt.NEGATIVE_PROMPT, image=control,
             ip_adapter_image=style, height=h, width=w, num_inference_steps=args.gdt_steps, guidance_scale=GUIDANCE,
             generator=torch.Generator().manual_seed(gdt.sample_seed(keys[i], "night")))
    run(0)
    reset_peak(device)
    images_per_s = len(images) / seconds(lambda: [run(i) for i in range(len(images))], 1, device)
    return dict(naive_images_per_s=images_per_s, naive_dtype=str(dtype).split(".")[-1],
                naive_peak_gib=peak_gib(device))


def bench_gdt(args, device, results):
    """Naive, then ours, on the same images, settings and models (one at a time: each peak is its own)."""
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.disable_progress_bar()  # loading bars would bury the table
    work, cudnn = tempfile.mkdtemp(prefix="bench-gdt-"), torch.backends.cudnn
    flags = cudnn.benchmark, cudnn.deterministic  # build_translator sets them; training must not inherit them
    results.add("gdt", size=args.gdt_size, steps=args.gdt_steps, guidance=GUIDANCE, images=args.gdt_images)
    try:
        root = args.models_dir or os.path.join(work, "models")
        paths = tiny_models.write_models(root) if args.tiny else save_sd15_models(root)
        inputs = gdt_inputs(args, work)
        results.add("gdt", **gdt_naive(args, paths, work, inputs, device))
        for sampler in ("unipc", "lcm"):  # ours with the paper's sampler, then with the few-step one
            results.add("gdt", **gdt_ours(args, paths, work, inputs, device, results["matmul"]["tflops"], sampler))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        cudnn.benchmark, cudnn.deterministic = flags
    g = results["gdt"]
    results.add("gdt", speedup=g["ours_images_per_s"] / g["naive_images_per_s"],
                lcm_speedup=g["lcm_images_per_s"] / g["ours_images_per_s"])


def trainer_args(args):
    """The trainers' flags at their defaults (what build_depth_net reads, the learning rates), bench's net."""
    size = "x".join(str(v) for v in args.net_size)
    ns = resolve_args(add_common_args(argparse.ArgumentParser()).parse_args(
        ["--data-root", "-", "--out", "-", "--encoder", args.encoder, "--init", "none", "--net-size", size]
        + ["--grad-ckpt"] * args.grad_ckpt))
    return ns


def param_groups(loss_module, targs):
    """The AdamW groups the trainer of `loss_module` builds: encoder, decoder, and the teacher's pose net."""
    groups = depth_param_groups(loss_module.net, targs.lr_encoder, targs.lr_decoder)
    if isinstance(loss_module, SelfSupervisedLoss):
        groups.append(dict(name="lr_pose", params=list(loss_module.pose.parameters()), lr=1e-4))  # --lr-pose default
    return groups


def build_loss(kind, args):
    """The real loss module of the self-supervised teacher, the LiDAR teacher or the student, random weights."""
    net = build_depth_net(trainer_args(args))
    if kind == "teacher":
        return SelfSupervisedLoss(net, PoseNet(args.pose, init=None))
    if kind == "lidar_teacher":
        return LidarLoss(net)
    teacher = DepthNet(args.encoder, "none", net_size=args.net_size)
    return StudentLoss(net, teacher, PoseNet(args.pose, init=None), DinoFeatures(args.encoder, "none", args.net_size))


def synthetic_batch(kind, batch, args, device):
    """A training batch as data.NuScenesDepth collates it (frames at the loss size, `input` at the network
    size), on the device."""
    (h, w), rand = args.loss_size, lambda hw: torch.rand(batch, 3, *hw, device=device)  # noqa: E731
    if kind == "lidar_teacher":
        return dict(input=rand(args.net_size), lidar=80 * torch.rand(batch, 1, h, w, device=device))
    frames = dict(color=rand((h, w)), prev=rand((h, w)), next=rand((h, w)))
    K = torch.tensor([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1]], device=device).repeat(batch, 1, 1)
    moved = torch.full((batch,), 0.5, device=device)  # metres between frames, for the velocity loss
    extra = dict(dist_prev=moved, dist_next=moved) if kind == "teacher" else {}
    return dict(input=rand(args.net_size), K=K, **frames, **{k + "_aug": v for k, v in frames.items()}, **extra)


def train_step(loss_module, optimizer, batch, bf16):
    """The core of training.train's step: autocast forward, backward, AdamW step; no host sync."""
    with torch.autocast(batch["input"].device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = loss_module(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_flops(loss_module, batch):
    """FLOPs of one forward + backward of the loss module on `batch`."""
    flops = count_flops(lambda: loss_module(batch)[0].backward())
    loss_module.zero_grad(set_to_none=True)
    return flops


def training_tflops(kind, args):
    """TFLOP per image of one training step (forward + backward), on fake tensors (linear in the batch:
    tests/test_bench.py checks)."""
    build = lambda: build_loss(kind, args)  # noqa: E731
    with nullcontext(build()) if args.tiny else shapes_only(build) as loss_module:  # tiny: real ones are faster
        batch = synthetic_batch(kind, 1, args, torch.device("cpu"))
        if kind != "lidar_teacher":
            return step_flops(loss_module, batch) / 1e12
        # SILog selects pixels by value, which fake tensors lack, and holds no matmul: count the net's step
        depth = lambda: loss_module.net(batch["input"], out_size=batch["lidar"].shape[-2:])["depth"]  # noqa: E731
        return count_flops(lambda: depth().mean().backward()) / 1e12


def bench_training(kind, args, device, results):
    """images/s, MFU and peak memory of training steps, at the largest batch that fits."""
    bf16, rate = device.type == "cuda", results["matmul"]["tflops"]
    flops = training_tflops(kind, args)
    results.add(kind, loss_size=list(args.loss_size), net_size=list(args.net_size), tflop_per_image=flops,
                dtype="bf16 autocast" if bf16 else "fp32")
    loss_module, targs = build_loss(kind, args).to(device), trainer_args(args)
    optimizer = torch.optim.AdamW(param_groups(loss_module, targs), weight_decay=targs.weight_decay)
    if args.compile:
        loss_module.net.compile()  # the DepthNet: its forward calls backbone, neck and head itself
    batches = [args.train_batch] if args.train_batch else (TRAIN_BATCHES if device.type == "cuda" else [2])
    for b in batches:
        optimizer.zero_grad(set_to_none=True)
        reset_peak(device)  # frees what an attempt that ran out of memory held
        batch = synthetic_batch(kind, b, args, device)
        step = lambda: train_step(loss_module, optimizer, batch, bf16)  # noqa: E731
        try:
            seconds(step, 3 if args.compile else 1, device)
            reset_peak(device)
            images_per_s = b * args.iters / seconds(step, args.iters, device)
        except torch.OutOfMemoryError:
            continue
        return results.add(kind, batch=b, steps=args.iters, images_per_s=images_per_s,
                           mfu=flops * images_per_s / rate, peak_gib=peak_gib(device))
    raise RuntimeError(f"{kind} training ran out of memory at every batch size in {batches}: try --grad-ckpt")


@torch.inference_mode()
def bench_inference(args, device, results):
    """Depth-net frames/s and peak memory at the network size, for each of --infer-batches."""
    net = DepthNet(args.encoder, "none", net_size=args.net_size).to(device).eval()
    if args.compile:
        net.compile()
    results.add("inference", net_size=list(args.net_size), dtype="bf16 autocast" if device.type == "cuda" else "fp32")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for b in args.infer_batches:
            x = torch.rand(b, 3, *args.net_size, device=device)
            seconds(lambda: net(x), 3 if args.compile else 1, device)
            reset_peak(device)
            results.add("inference", **{f"batch{b}_frames_per_s": b * args.iters / seconds(lambda: net(x), args.iters,
                                                                                              device),
                                        f"batch{b}_peak_gib": peak_gib(device)})


@torch.inference_mode()
def bench_onnx(args, device, results):
    """CPU frames/s of the depth net at the network size, batch 1: torch float32 and its ONNX graph in onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the onnx section needs onnxruntime: pip install onnx onnxruntime") from None
    from model import export_onnx
    threads = torch.get_num_threads()
    net = DepthNet(args.encoder, "none", net_size=args.net_size).eval()
    x = torch.rand(1, 3, *args.net_size)
    with tempfile.TemporaryDirectory() as work:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(export_onnx(net, os.path.join(work, "depth.onnx")), options,
                                               providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    expected, (depth,) = net(x)["depth"].numpy(), session.run(["depth"], feed)
    cpu = torch.device("cpu")
    seconds(lambda: net(x), 1, cpu), seconds(lambda: session.run(["depth"], feed), 1, cpu)  # warm-up
    torch_rate = args.iters / seconds(lambda: net(x), args.iters, cpu)
    onnx_rate = args.iters / seconds(lambda: session.run(["depth"], feed), args.iters, cpu)
    results.add("onnx", net_size=list(args.net_size), threads=threads, onnxruntime=onnxruntime.__version__,
                torch_cpu_frames_per_s=torch_rate, onnxruntime_cpu_frames_per_s=onnx_rate,
                onnx_speedup=onnx_rate / torch_rate,
                max_relative_depth_difference=float(abs(depth / expected - 1).max()))


def bench_flops(args, device, results):
    """FLOPs per image of every stage at the bench's sizes, on fake tensors (the same on any device)."""
    for kind in DATA_KINDS:
        results.add("flops", **{f"{kind}_step_tflop_per_image": training_tflops(kind, args)})
    with shapes_only(lambda: DepthNet(args.encoder, "none", net_size=args.net_size).eval()) as net:
        frame = count_flops(lambda: net(torch.rand(1, 3, *args.net_size)))
    results.add("flops", inference_tflop_per_frame=frame / 1e12)
    size = data.parse_size(args.gdt_size)
    results.add("flops", **{f"gdt_{k}": v for k, v in gdt_flops(size, args.gdt_steps).items()})


def data_world(args, work):
    """(dataroot, version, scene): --data-root's first day-clear training scene, or a synthetic world of
    one such scene (3 key frames, a sweep either side of each) rendered with JPEG frames at nuScenes'
    900x1600 (72x128 with --tiny)."""
    root, version = args.data_root, args.version
    if not root:
        import synthetic
        root, version = os.path.join(work, "world"), synthetic.VERSION
        synthetic.render_world(root, train_day=1, train_night=0, train_rain=0, val_day=0, val_night=0, val_rain=0,
                               keyframes=3, sweeps=1, size=(72, 128) if args.tiny else args.source_size,
                               workers=min(2, os.cpu_count() or 1))
    index, val = data.load_index(root, version), data.val_scene_names(version)
    scenes = [s["name"] for s in index.scenes if s["name"] not in val
              and data.condition_of(s["description"]) == "day-clear"]
    if not scenes:
        raise ValueError(f"--data-root {root} ({version}) has no day-clear training scene for the data section")
    return root, version, scenes[0]


def gdt_folder(root, paths, work):
    """A GDT output folder holding a 'night' translation of each path as gdt.py writes one (the source's
    size and format) with its manifest; the image itself is a darkened day frame."""
    folder = Path(work, "gdt", "night")
    for path in paths:
        with Image.open(os.path.join(root, path)) as day:
            gdt.save_atomic(day.convert("RGB").point(lambda v: v // 3), folder / path)
    records = [json.dumps({"output": path, "status": "ok"}) for path in paths]
    (folder / "manifest.rank0.jsonl").write_text("\n".join(records) + "\n")
    return str(folder.parent)


def item_cost(dataset, samples):
    """CPU ms per item and items/s of dataset[i] in this process, on one thread (as in a worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]  # warm-up: file cache, lazy tables
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(samples):
            dataset[i % len(dataset)]
        return 1e3 * (time.process_time() - cpu) / samples, samples / (time.perf_counter() - wall)
    finally:
        torch.set_num_threads(threads)


def bare_decode_ms(dataset, samples):
    """CPU ms per item of decoding its frames and nothing else, on one thread: the target frame whole (the
    network size needs it), each neighbour at the DCT scale of the loss size, a GDT translation whole. No
    worker can do less: the floor that --gpu-augment is measured against."""
    def frames(i):
        token, _ = dataset.items[i]
        path = dataset.index.sample_data[token]["filename"]
        yield os.path.join(dataset.root, path), None
        yield from ((os.path.join(dataset.root, dataset.index.neighbour(token, step)["filename"]), dataset.size)
                    for step in (-1, 1) if step in dataset.frames)
        cond = dataset._draws(i)[1].cond
        if cond != "day":
            yield os.path.join(dataset.gdt_root, cond, path), None

    def decode(i):
        for path, size in frames(i):
            with Image.open(path) as im:
                if size:
                    im.draft("RGB", size[::-1])
                im.load()
    decode(0)
    cpu = time.process_time()
    for i in range(samples):
        decode(i % len(dataset))
    return 1e3 * (time.process_time() - cpu) / samples


def default_item_stages(dataset, samples):
    """CPU ms of each stage of a default self-supervised teacher item, each PIL call timed alone on one thread
    over the item's target frames: where the floor of md4all-exact items lies."""
    from PIL import ImageEnhance
    paths = [os.path.join(dataset.root, dataset.index.sample_data[token]["filename"]) for token, _ in dataset.items]
    (h, w), (nh, nw), factors = dataset.size, dataset.net_size, (1.1, 0.9, 1.1, 0.03)

    def decoded(path, size=None):
        with Image.open(path) as im:
            if size:
                im.draft("RGB", size[::-1])
            return im.convert("RGB")
    full, half = [decoded(p) for p in paths], [decoded(p, (h, w)) for p in paths]
    small, big = [im.resize((w, h), Image.LANCZOS) for im in half], [im.resize((nw, nh), Image.LANCZOS) for im in full]

    def blends(im):
        im = ImageEnhance.Brightness(im).enhance(factors[0])
        return ImageEnhance.Color(ImageEnhance.Contrast(im).enhance(factors[1])).enhance(factors[2])

    def ms(fn):
        fn(0)
        cpu = time.process_time()
        for i in range(samples):
            fn(i % len(paths))
        return 1e3 * (time.process_time() - cpu) / samples
    one = {name: ms(fn) for name, fn in dict(
        decode_full=lambda i: decoded(paths[i]), decode_loss_scale=lambda i: decoded(paths[i], (h, w)),
        resize_to_net=lambda i: full[i].resize((nw, nh), Image.LANCZOS),
        resize_to_loss=lambda i: half[i].resize((w, h), Image.LANCZOS),
        blends_loss=lambda i: blends(small[i]), blends_net=lambda i: blends(big[i]),
        hue_tables_loss=lambda i: data.hue_shift(small[i], 7), hue_tables_net=lambda i: data.hue_shift(big[i], 7),
        hue_pil_loss=lambda i: data.torchvision_hue_shift(small[i], 7),
        hue_pil_net=lambda i: data.torchvision_hue_shift(big[i], 7),
        tensor_loss=lambda i: data.to_tensor(small[i]), tensor_net=lambda i: data.to_tensor(big[i])).items()}
    # a teacher item: the target whole and at the loss scale, two neighbours at the loss scale; four jittered images
    item = dict(decode=one["decode_full"] + 3 * one["decode_loss_scale"],
                resize=one["resize_to_net"] + 3 * one["resize_to_loss"],
                blends=one["blends_net"] + 3 * one["blends_loss"],
                hue=one["hue_tables_net"] + 3 * one["hue_tables_loss"],
                hue_torchvision=one["hue_pil_net"] + 3 * one["hue_pil_loss"],
                tensors=one["tensor_net"] + 6 * one["tensor_loss"])
    item["sum"] = sum(v for k, v in item.items() if k != "hue_torchvision")
    return dict(per_call=one, per_item=item)


def loader_rate(dataset, workers, samples, batch=4):
    """Items/s that a DataLoader with `workers` processes delivers once each has handed over its first
    batch (start-up excluded), batches of 4 (the paper's batch per GPU)."""
    order = [i % len(dataset) for i in range(samples + batch * workers)]
    batches = iter(torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers))
    for _ in range(workers):
        next(batches)
    start, n = time.perf_counter(), 0
    for b in batches:
        n += len(b["key"])
    return n / (time.perf_counter() - start)


def gpu_rate(args, device, results):
    """TFLOP/s one GPU spends on training steps, and where the figure comes from."""
    if args.gpu_tflops:
        return args.gpu_tflops, "given (--gpu-tflops)"
    if device.type == "cuda":
        return MFU * results["matmul"]["tflops"], f"{MFU:.0%} of the measured bf16 matmul rate"
    return MFU * H100_BF16_TFLOPS, f"{MFU:.0%} of an H100's dense bf16 peak ({H100_BF16_TFLOPS} TFLOP/s)"


def bench_data(args, device, results):
    """CPU cost of each trainer's items on three paths (PATHS), and the workers one GPU needs on each."""
    rate, source = gpu_rate(args, device, results)
    work = tempfile.mkdtemp(prefix="bench-data-")
    try:
        root, version, scene = data_world(args, work)
        build = lambda kind, path, **extra: data.NuScenesDepth(  # noqa: E731
            root, version, "train", size=args.loss_size, net_size=args.net_size, scenes=[scene], color_jitter=True,
            flip=True, **PATHS[path], **DATA_KINDS[kind], **extra)
        day = build("teacher", "default")
        paths = [day.index.sample_data[token]["filename"] for token, _ in day.items]
        gdt_root = gdt_folder(root, paths, work)
        with Image.open(os.path.join(root, paths[0])) as frame:
            results.add("data", dataroot=args.data_root or f"synthetic world ({scene})", frame_size=frame.size[::-1],
                        frame_format=frame.format, items=len(paths), loss_size=list(args.loss_size),
                        net_size=list(args.net_size), samples=args.data_samples, workers=args.data_workers,
                        gpu_tflops=rate, gpu_rate=source, load_average=list(os.getloadavg()))
        for kind in DATA_KINDS:
            flops = results.get("flops", {}).get(f"{kind}_step_tflop_per_image") or training_tflops(kind, args)
            figures = dict(tflop_per_image=flops, gpu_images_per_s=rate / flops)
            for path in PATHS:
                dataset = build(kind, path, **({"gdt_root": gdt_root} if kind == "student" else {}))
                ms, per_s = item_cost(dataset, args.data_samples)
                # a worker on a core of its own delivers 1000 / CPU ms items/s (what shared cores measure less of)
                figures[path] = dict(cpu_ms_per_item=ms, items_per_s_one_process=per_s,
                                     workers_per_gpu=math.ceil(figures["gpu_images_per_s"] * ms / 1e3))
                results.add("data", **{kind: figures})
                for w in (args.data_workers if path == "default" else ()):  # the trainers' default path
                    figures[path][f"items_per_s_{w}_workers"] = loader_rate(dataset, w, args.data_samples)
                    results.add("data", **{kind: figures})
            reference = figures["reference"]["cpu_ms_per_item"]
            decode = bare_decode_ms(dataset, args.data_samples)
            figures.update(default_speedup=reference / figures["default"]["cpu_ms_per_item"],
                           gpu_augment_speedup=reference / figures["gpu_augment"]["cpu_ms_per_item"],
                           fast_speedup=reference / figures["fast"]["cpu_ms_per_item"], bare_decode_cpu_ms=decode,
                           gpu_augment_over_bare_decode=figures["gpu_augment"]["cpu_ms_per_item"] / decode)
            results.add("data", **{kind: figures})
        results.add("data", teacher_default_stages_ms=default_item_stages(day, args.data_samples))
    finally:
        shutil.rmtree(work, ignore_errors=True)


MEMORY_CELLS = [f"{kind},{batch},{dtype},{ckpt}" for dtype in ("fp32", "bf16") for ckpt in ("-", "ckpt")
                for batch in (1, 2, 4) for kind in DATA_KINDS] + [  # GDT: its batch of 8, each sampler and precision
    f"gdt,8,{dtype},{sampler}" for sampler in ("unipc", "lcm") for dtype in ("fp16", "fp32")]


def rss_gib(field="VmRSS"):
    """This process's resident memory (VmRSS) or its peak since the last reset_peak_rss (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2 ** 20
    raise OSError(f"/proc/self/status has no {field}: the memory section needs Linux")


def reset_peak_rss():
    """Start a new VmHWM window (Linux: writing 5 to clear_refs resets the peak resident set size)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_cell(cell, args):
    """Resident memory of one training step of the real modules at full size, random weights, measured in this
    fresh process on the CPU: the weights, gradients and AdamW moments a step leaves (state) and the step's
    peak over what was resident before it (activations, mostly)."""
    kind, batch, dtype, ckpt = cell.split(",")
    if kind == "gdt":
        return gdt_memory_cell(cell, int(batch), dtype, ckpt)
    args.grad_ckpt, baseline = ckpt == "ckpt", rss_gib()
    loss_module = build_loss(kind, args)
    optimizer = torch.optim.AdamW(param_groups(loss_module, trainer_args(args)), weight_decay=0.01)
    batch_data = synthetic_batch(kind, int(batch), args, torch.device("cpu"))
    before = rss_gib()
    reset_peak_rss()
    start = time.perf_counter()
    train_step(loss_module, optimizer, batch_data, dtype == "bf16")
    peak, seconds_taken = rss_gib("VmHWM"), time.perf_counter() - start
    trained = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    frozen = sum(p.numel() for p in loss_module.parameters()) - trained
    return dict(cell=cell, trained_params=trained, frozen_params=frozen, weights_gib=before - baseline,
                state_gib=rss_gib() - baseline, activation_gib=peak - before, peak_gib=peak - baseline,
                step_s=seconds_taken, state_formula_gib=(16 * trained + 4 * frozen) / 2 ** 30)


@torch.inference_mode()
def gdt_memory_cell(cell, batch, dtype, sampler, size=(576, 1024)):
    """GDT's peak of one denoiser call (ControlNet + UNet on the batch, doubled by classifier-free guidance with
    the default sampler) and the VAE decode of the batch with VAE slicing (one image at a time), SD 1.5 shapes,
    random weights, in `dtype`, on the CPU."""
    baseline = rss_gib()
    m = sd15_models().to(torch.float16 if dtype == "fp16" else torch.float32)
    m.vae.enable_slicing()
    weights = rss_gib() - baseline
    lanes = batch * (2 if gdt.SAMPLERS[sampler]["guidance"] > 1 else 1)
    latents = torch.randn(lanes, 4, size[0] // 8, size[1] // 8, dtype=m.unet.dtype)
    context = torch.randn(lanes, 77, m.unet.config.cross_attention_dim, dtype=m.unet.dtype)
    t, before = torch.tensor([500]), rss_gib()
    reset_peak_rss()
    start = time.perf_counter()
    down, mid = m.controlnet(latents, t, context, controlnet_cond=torch.rand(lanes, 3, *size, dtype=m.unet.dtype),
                             return_dict=False)
    m.unet(latents, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    denoise_peak = rss_gib("VmHWM") - before
    del down, mid
    reset_peak_rss()
    m.vae.decode(latents[:batch] / m.vae.config.scaling_factor)
    decode_peak = rss_gib("VmHWM") - before
    params = sum(p.numel() for p in m.parameters())
    return dict(cell=cell, trained_params=0, frozen_params=params, weights_gib=weights, state_gib=weights,
                activation_gib=max(denoise_peak, decode_peak), denoise_activation_gib=denoise_peak,
                decode_activation_gib=decode_peak, peak_gib=weights + max(denoise_peak, decode_peak),
                step_s=time.perf_counter() - start, state_formula_gib=params * (2 if dtype == "fp16" else 4) / 2 ** 30)


def bench_memory(args, device, results):
    """memory_cell for each of --memory-cells, each in a fresh process (its own peak), cheapest first, until
    --memory-minutes have passed; the cells left are recorded as not measured. Full size only."""
    import subprocess
    cells, start = sorted(args.memory_cells or MEMORY_CELLS, key=memory_cost), time.perf_counter()
    results.add("memory", net_size=list(args.net_size), loss_size=list(args.loss_size), allocator="CPU (glibc)",
                cells=cells)
    for cell in cells:
        if time.perf_counter() - start > 60 * args.memory_minutes:
            results.add("memory", **{cell: "not measured: past --memory-minutes on this machine"})
            continue
        command = [sys.executable, os.path.abspath(__file__), "--memory-cell", cell, "--out", os.devnull]
        run = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        results.add("memory", **{cell: json.loads(lines[-1]) if run.returncode == 0 and lines
                                 else f"failed: {run.stderr.strip().splitlines()[-1:]}"})


def memory_cost(cell):
    """Rough relative cost of a cell, to measure the cheap ones first: batch, x3 for bf16 on CPU, x1.3 checkpointed."""
    kind, batch, dtype, ckpt = cell.split(",")
    if kind == "gdt":  # one denoiser call and a decode at 576x1024: about 30 training steps' worth of FLOPs
        return 30 * int(batch) * (3 if dtype == "fp16" else 1)
    return int(batch) * (3 if dtype == "bf16" else 1) * (1.3 if ckpt == "ckpt" else 1) * (
        1.5 if kind == "student" else 0.6 if kind == "lidar_teacher" else 1)


def print_table(results):
    meta = results["meta"]
    print(f"\n{meta['device']} | torch {meta['torch']} | {meta['date']} | {meta['command']}")
    show = lambda v: "n/a (no GPU)" if v is None else f"{v:.4g}" if isinstance(v, float) else v  # noqa: E731
    for section, figures in list(results.items())[1:]:
        for key, value in figures.items():
            if key not in meta and key not in DATA_KINDS and key != "teacher_default_stages_ms" and not (
                    section == "memory" and "," in key):
                print(f"  {section:<10} {key:<30} {show(value)}")
    if any(kind in results.get("data", {}) for kind in DATA_KINDS):
        print_data_table(results["data"], show)
    stages = results.get("data", {}).get("teacher_default_stages_ms")
    if stages:
        print("  default teacher item, CPU ms by stage: "
              + ", ".join(f"{k} {v:.1f}" for k, v in stages["per_item"].items()))
    if "cells" in results.get("memory", {}):
        print_memory_table(results["memory"])


def print_data_table(d, show):
    """Items/s of each trainer's dataset next to the images/s one GPU consumes."""
    workers = [f"items_per_s_{w}_workers" for w in d["workers"]]
    print(f"\n  data items at loss {d['loss_size']}, net {d['net_size']} from {d['frame_format']} frames "
          f"{d['frame_size']}; GPU: {show(d['gpu_tflops'])} TFLOP/s ({d['gpu_rate']})")
    print("  " + " | ".join(["item", "path", "CPU ms/item", "items/s 1 process"]
                            + [f"items/s {w} workers" for w in d["workers"]] + ["GPU images/s", "workers/GPU"]))
    for kind in DATA_KINDS:
        g = d.get(kind, {})
        print(f"  {kind} | bare decode | {show(g.get('bare_decode_cpu_ms', '-'))} | speed-up over reference: default "
              f"{show(g.get('default_speedup', '-'))}, gpu_augment {show(g.get('gpu_augment_speedup', '-'))} "
              f"({show(g.get('gpu_augment_over_bare_decode', '-'))}x the bare decode), "
              f"fast {show(g.get('fast_speedup', '-'))}")
        for name in PATHS:
            f, g = d.get(kind, {}).get(name, {}), d.get(kind, {})
            cells = [f.get("cpu_ms_per_item"), f.get("items_per_s_one_process"), *(f.get(w) for w in workers)]
            last = [g.get("gpu_images_per_s"), f.get("workers_per_gpu")]
            print("  " + " | ".join([kind, name] + ["-" if c is None else str(show(c)) for c in cells + last]))


def print_memory_table(m):
    print("\n  memory (CPU resident, GiB): cell | trained / frozen M params | weights | state after the step | "
          "step's activations | peak | step s")
    for cell in m["cells"]:
        f = m.get(cell)
        if isinstance(f, dict):
            print(f"  {cell} | {f['trained_params'] / 1e6:.1f} / {f['frozen_params'] / 1e6:.1f} | "
                  f"{f['weights_gib']:.2f} | "
                  f"{f['state_gib']:.2f} | {f['activation_gib']:.2f} | {f['peak_gib']:.2f} | {f['step_s']:.0f}")
        else:
            print(f"  {cell} | {f}")


BENCHES = dict(gdt=bench_gdt, teacher=lambda *a: bench_training("teacher", *a),
               student=lambda *a: bench_training("student", *a), inference=bench_inference, flops=bench_flops,
               data=bench_data, memory=bench_memory, onnx=bench_onnx)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.memory_cell:  # one cell of the memory section, in the fresh process bench_memory started
        torch.set_flush_denormal(True)
        print(json.dumps(memory_cell(args.memory_cell, args)))
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_flush_denormal(True)  # as the trainers: denormals from random weights cost up to 10x on CPU
    if args.tiny:  # tiny models gain nothing from threads, and on shared cores spinning threads cost 10x
        torch.set_num_threads(1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    transformers_logging.disable_progress_bar()
    results = Results(args.out, dict(device=device_name(device), torch=torch.__version__, tiny=args.tiny,
                                     date=datetime.date.today().isoformat(),
                                     command=" ".join(["python tools/bench.py", *argv])))
    results.add("matmul", **matmul_rate(device))
    torch.manual_seed(0)
    failed = []
    for section in args.only:
        try:
            BENCHES[section](args, device, results)
        except Exception as e:  # the other sections still run; the JSON says what failed
            traceback.print_exc()
            results.add(section, error=f"{type(e).__name__}: {e}")
            failed.append(section)
        reset_peak(device)
    print_table(results)
    if failed:
        raise RuntimeError(f"tools/bench.py: section(s) {', '.join(failed)} failed (tracebacks above; their errors are "
                           f"in {args.out} with every figure measured)")
    return results


if __name__ == "__main__":
    main()
