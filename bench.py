"""Throughput of every SSD stage on the device at hand: GDT, teacher and student training, inference.

    python bench.py --tiny                      # CPU smoke run of the same code paths, seconds
    python bench.py                             # one GPU: every figure, full-size models
    python bench.py --compile --models-dir /tmp/sd15-random --out bench-compile.json
    python bench.py --only teacher student --train-batch 4     # a subset; the paper's batch

Full size: the real architectures (SD 1.5 + ControlNet + IP-Adapter with its ViT-H image encoder;
DINOv2 ViT-B + DPT; ResNet-18 pose net) with random weights, which cost what pretrained ones cost.
The SD models are written once to --models-dir (4 GB, fp16) and loaded by gdt.build_translator.
Printed, and written atomically to --out as JSON (each section with device, torch version, date):
- matmul: measured rate of a large bf16 matmul (fp32 on CPU), the roofline of every share below;
- gdt: images/s at 576x1024, 30 steps, guidance 7.5, ControlNet + IP-Adapter, of ours
  (gdt.translate_batch, --gdt-batch images a call, fp16, channels-last, --compile) and of the
  naive loop (the diffusers pipeline once per image, fp16, defaults, reference passed as an image);
  their ratio; FLOPs per image and their share of the matmul rate. Captions and depth maps are
  inputs to both (gdt.py computes them once per frame for all conditions);
- teacher, student: training images/s at 518x784 (losses at 320x576; real loss modules, AdamW,
  bf16 autocast, batches already on the device: data loading is not timed) and MFU (FLOPs of one
  forward + backward x steps/s / matmul rate);
- inference: depth-net frames/s at 518x784, batch 1 and 16; peak GPU memory of each (none on CPU).
--tiny: tiny models and sizes on one CPU thread; a smoke test of the code, not a speed claim.
"""
import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop
from transformers.utils import logging as transformers_logging

import gdt
import tiny_models
from model import DepthNet, DinoFeatures, PoseNet
from train_student import StudentLoss
from train_teacher import SelfSupervisedLoss, add_common_args, build_depth_net, param_groups, resolve_args

SECTIONS = ("gdt", "teacher", "student", "inference")
FULL = dict(gdt_size="576x1024", gdt_steps=30, gdt_batch=8, source_size=(900, 1600), encoder="base",
            pose="resnet18", loss_size=(320, 576), net_size=(518, 784), iters=20)
TINY = dict(gdt_size="64x64", gdt_steps=2, gdt_batch=2, source_size=(64, 64), encoder="tiny", pose="tiny",
            loss_size=(48, 84), net_size=(42, 70), iters=2)
TRAIN_BATCHES = (32, 16, 8, 4)  # GPU default: the largest that fits
aten = torch.ops.aten
# FlopCounterMode knows the CUDA attention kernels but not the CPU one, which --tiny would leave out
CPU_ATTENTION_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
                       aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random models and sizes (CPU smoke test)")
    p.add_argument("--out", default="bench.json", help="JSON of every figure (written atomically)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="a subset of the sections")
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
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.gdt_images = args.gdt_images or 2 * args.gdt_batch
    return args


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return f"CPU {names[0] if names else platform.machine()}, torch threads: {torch.get_num_threads()}"


def reset_peak(device):
    gc.collect()  # pipelines hold reference cycles: free the last section's models first
    if device.type == "cuda":
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


def matmul_rate(device):
    """The device's measured dense matmul rate: bf16 8192^3 on GPU, fp32 1024^3 on CPU."""
    n, dtype, iters = (8192, torch.bfloat16, 50) if device.type == "cuda" else (1024, torch.float32, 5)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds(lambda: a @ b, 3, device)
    rate = 2 * n ** 3 * iters / seconds(lambda: a @ b, iters, device)
    return dict(matmul=f"{str(dtype).split('.')[-1]} {n}x{n}", tflops=rate / 1e12)


def save_sd15_models(root):
    """Random SD 1.5, depth ControlNet and IP-Adapter (ViT-H/14 image encoder) with the real configs,
    in tiny_models' layout, fp16; reused when `root` holds a finished copy."""
    paths = {"sd_model": f"{root}/sd", "controlnet": f"{root}/controlnet", "ip_adapter": f"{root}/ip_adapter"}
    if os.path.exists(os.path.join(root, "complete")):
        return paths
    from diffusers import (AutoencoderKL, ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel,
                           UniPCMultistepScheduler)
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)
    tokenizer = tiny_models.clip_tokenizer()  # byte-level: the text encoder still sees 77 tokens
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.x
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, projection_dim=768, max_position_embeddings=77,
                                            bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1))
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
            image_size=224, projection_dim=1024, hidden_act="gelu"))
        controlnet, ip_weights = ControlNetModel.from_unet(unet), tiny_models.ip_adapter_state_dict(unet, 1024)
    # UniPC, as gdt.py swaps in: the naive loop then runs the same 30 UNet calls (PNDM would run 31)
    unipc = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=unipc,
                            safety_checker=None, feature_extractor=CLIPImageProcessor(),
                            requires_safety_checker=False).to(torch.float16).save_pretrained(paths["sd_model"])
    controlnet.to(torch.float16).save_pretrained(paths["controlnet"])
    vision.to(torch.float16).save_pretrained(os.path.join(paths["ip_adapter"], "models", "image_encoder"))
    torch.save(ip_weights, os.path.join(paths["ip_adapter"], "models", "ip-adapter_sd15.bin"))
    open(os.path.join(root, "complete"), "w").close()
    return paths


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


def gdt_ours(args, paths, work, inputs, device, rate):
    """images/s and FLOPs per image of gdt.translate_batch, its models loaded by gdt.build_translator."""
    images, keys, captions, controls = inputs
    translator = gdt.build_translator(gdt.parse_args([
        "--data-root", work, "--out", work, "--cond", "night", "--captioner", "none", "--style-dir",
        f"{work}/styles", "--control-dir", work,  # never read: the depth maps are passed in
        "--sd-model", paths["sd_model"], "--controlnet", paths["controlnet"], "--ip-adapter", paths["ip_adapter"],
        "--size", args.gdt_size, "--steps", str(args.gdt_steps), "--batch-size", str(args.gdt_batch),
        "--dtype", args.gdt_dtype]))
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
    return dict(ours_images_per_s=images_per_s, ours_batch=b, ours_dtype=str(pipe.unet.dtype).split(".")[-1],
                tflop_per_image=flops / 1e12, roofline_fraction=flops * images_per_s / (rate * 1e12),
                ours_peak_gib=peak_gib(device))


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
             ip_adapter_image=style, height=h, width=w, num_inference_steps=args.gdt_steps, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(gdt.sample_seed(keys[i], "night")))
    run(0)
    reset_peak(device)
    images_per_s = len(images) / seconds(lambda: [run(i) for i in range(len(images))], 1, device)
    return dict(naive_images_per_s=images_per_s, naive_dtype=str(dtype).split(".")[-1],
                naive_peak_gib=peak_gib(device))


def bench_gdt(args, device, rate):
    """Naive, then ours, on the same images, settings and models (one at a time: each peak is its own)."""
    work, cudnn = tempfile.mkdtemp(prefix="bench-gdt-"), torch.backends.cudnn
    flags = cudnn.benchmark, cudnn.deterministic  # build_translator sets them; training must not inherit them
    try:
        root = args.models_dir or os.path.join(work, "models")
        paths = tiny_models.save_tiny_models(root) if args.tiny else save_sd15_models(root)
        inputs = gdt_inputs(args, work)
        naive = gdt_naive(args, paths, work, inputs, device)
        ours = gdt_ours(args, paths, work, inputs, device, rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        cudnn.benchmark, cudnn.deterministic = flags
    return dict(size=args.gdt_size, steps=args.gdt_steps, guidance=7.5, images=args.gdt_images,
                speedup=ours["ours_images_per_s"] / naive["naive_images_per_s"], **ours, **naive)


def trainer_args(args):
    """train_teacher's flags at their defaults (what build_depth_net and param_groups read), bench's net."""
    size = "x".join(str(v) for v in args.net_size)
    ns = resolve_args(add_common_args(argparse.ArgumentParser()).parse_args(
        ["--data-root", "-", "--out", "-", "--encoder", args.encoder, "--init", "none", "--net-size", size]
        + ["--grad-ckpt"] * args.grad_ckpt))
    ns.lr_pose = 1e-4  # train_teacher.main's --lr-pose default
    return ns


def build_loss(kind, args):
    """The real loss module of the teacher (self-supervised) or of the student, random weights."""
    net = build_depth_net(trainer_args(args))
    if kind == "teacher":
        return SelfSupervisedLoss(net, PoseNet(args.pose, init=None))
    teacher = DepthNet(args.encoder, "none", net_size=args.net_size)
    return StudentLoss(net, teacher, PoseNet(args.pose, init=None), DinoFeatures(args.encoder, "none", args.net_size))


def synthetic_batch(kind, batch, args, device):
    """A training batch at the loss resolution, as data.NuScenesDepth collates it, on the device."""
    (h, w), rand = args.loss_size, lambda: torch.rand(batch, 3, h, w, device=device)
    K = torch.tensor([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1]], device=device).repeat(batch, 1, 1)
    moved = torch.full((batch,), 0.5, device=device)  # metres between frames, for the velocity loss
    extra = dict(dist_prev=moved, dist_next=moved) if kind == "teacher" else {}
    return dict(color=rand(), input=rand(), prev=rand(), next=rand(), K=K, **extra)


def train_step(loss_module, optimizer, batch, bf16):
    """The core of train_teacher.train's step: autocast forward, backward, AdamW step; no host sync."""
    with torch.autocast(batch["color"].device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = loss_module(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_flops(loss_module, batch):
    """FLOPs of one forward + backward of the loss module on `batch`."""
    flops = count_flops(lambda: loss_module(batch)[0].backward())
    loss_module.zero_grad(set_to_none=True)
    return flops


def bench_training(kind, args, device, rate):
    """images/s, MFU and peak memory of training steps, at the largest batch that fits."""
    bf16 = device.type == "cuda"
    loss_module, targs = build_loss(kind, args).to(device), trainer_args(args)
    optimizer = torch.optim.AdamW(param_groups(loss_module, targs), weight_decay=targs.weight_decay)
    # counted at batch 1 before compiling (the count is linear in the batch: tests/test_bench.py checks)
    flops_per_image = step_flops(loss_module, synthetic_batch(kind, 1, args, device))
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
        return dict(batch=b, steps=args.iters, images_per_s=images_per_s, loss_size=list(args.loss_size),
                    net_size=list(args.net_size), tflop_per_image=flops_per_image / 1e12,
                    mfu=flops_per_image * images_per_s / (rate * 1e12), peak_gib=peak_gib(device),
                    dtype="bf16 autocast" if bf16 else "fp32")
    raise RuntimeError(f"{kind} training ran out of memory at every batch size in {batches}: try --grad-ckpt")


@torch.inference_mode()
def bench_inference(args, device):
    """Depth-net frames/s and peak memory at the network size, for each of --infer-batches."""
    net = DepthNet(args.encoder, "none", net_size=args.net_size).to(device).eval()
    if args.compile:
        net.compile()
    figures = dict(net_size=list(args.net_size), dtype="bf16 autocast" if device.type == "cuda" else "fp32")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for b in args.infer_batches:
            x = torch.rand(b, 3, *args.net_size, device=device)
            seconds(lambda: net(x), 3 if args.compile else 1, device)
            reset_peak(device)
            figures[f"batch{b}_frames_per_s"] = b * args.iters / seconds(lambda: net(x), args.iters, device)
            figures[f"batch{b}_peak_gib"] = peak_gib(device)
    return figures


def print_table(results):
    meta = results["meta"]
    print(f"\n{meta['device']} | torch {meta['torch']} | {meta['date']} | {meta['command']}")
    for section, figures in list(results.items())[1:]:
        for key, value in figures.items():
            shown = "n/a (no GPU)" if value is None else f"{value:.4g}" if isinstance(value, float) else value
            if key not in meta:
                print(f"  {section:<10} {key:<22} {shown}")


def write_json(results, path):
    """Write atomically: a temp file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_flush_denormal(True)  # as the trainers: denormals from random weights cost up to 10x on CPU
    if args.tiny:  # tiny models gain nothing from threads, and on shared cores spinning threads cost 10x
        torch.set_num_threads(1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    diffusers_logging.disable_progress_bar()  # loading bars would bury the table
    transformers_logging.disable_progress_bar()
    meta = dict(device=device_name(device), torch=torch.__version__, date=datetime.date.today().isoformat())
    results = {"meta": dict(meta, command=" ".join(["python bench.py", *argv]), tiny=args.tiny)}
    results["matmul"] = dict(matmul_rate(device), **meta)
    rate = results["matmul"]["tflops"]
    torch.manual_seed(0)
    for section in args.only:
        if section == "gdt":
            results["gdt"] = dict(bench_gdt(args, device, rate), **meta)
        elif section in ("teacher", "student"):
            results[section] = dict(bench_training(section, args, device, rate), **meta)
        else:
            results["inference"] = dict(bench_inference(args, device), **meta)
        reset_peak(device)
    print_table(results)
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
