"""The training loop of both trainers, and the command line they share (docs/method.md §4).

    check_data(args, train_set, val_set)  # every file they can read, once, before step 1 (--no-check-data skips)
    groups = depth_param_groups(net, args.lr_encoder, args.lr_decoder) + [dict(name="lr_pose", params=..., lr=...)]
    train(args, loss_module, groups, modules={"model": net, "pose": pose}, extra={"config": net.config_dict()},
          dataset=train_set, val_dataset=val_set, kind="teacher")

The contract of `train`: `loss_module(batch)` returns (loss, {name: term tensor}); `groups` are the
AdamW parameter groups, each with a `name` (the command-line flag of its learning rate, so a resume
can change it) and an `lr`; `modules` are what the checkpoint holds as state dicts, under their keys
(`modules["model"]` is the depth net that is validated); `extra` are saved as they are (configs).
The dataset is indexed with (epoch, index) pairs (data.EpochSampler), so persistent workers still
draw each epoch's augmentation; its items are dicts of tensors.
Each log record holds the mean loss terms, the learning rate, images/s and `data_wait`: the share of the
wall time since the previous record that rank 0 spent waiting for its next batch (near 0: the data keeps
up; large: add --workers or cores, or --gpu-augment).
The loop itself reads these settings from `args`: out, batch_size, epochs, steps, seed, workers,
dtype, compile, log_every, ckpt_every, val_every, no_val, resume, stop_at, min_depth, max_depth,
weight_decay, and `given` (the flags written on the command line, from `parse_args`).
"""
import argparse
import gc
import json
import math
import os
import signal
import threading
import time
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import data
from evaluate import net_predictor, score_loader, summarize
from model import DepthNet, checkpoint_kind, read_checkpoint, save_checkpoint

# DINOv2's class token is (1, 1, C): at one image per process its gradient is a slice of the tokens' with strides
# DDP's bucket does not expect, and DDP warns at every launch (harmless: it copies C numbers)
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def add_common_args(p):
    """Flags shared by the teacher and the student trainers (docs/method.md §4 defaults)."""
    p.add_argument("--dataset", default="nuscenes", choices=["nuscenes", "robotcar"])
    p.add_argument("--data-root", required=True)
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version folder")
    p.add_argument("--out", required=True, help="run folder: ckpt.pt, best.pt, log.jsonl")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a checkpoint")
    p.add_argument("--encoder", default="base", choices=["tiny", "small", "base", "large"])
    p.add_argument("--init", default="dinov2", choices=["dinov2", "depth-anything-v2-small", "none"])
    p.add_argument("--weights", default=None, help="hub id or local folder for --init (default: the official one)")
    p.add_argument("--size", type=data.parse_size, default=None, help="loss resolution HxW (nuScenes 320x576, RobotCar 320x544)")
    p.add_argument("--net-size", type=data.parse_size, default=(518, 784), help="depth-net input HxW, multiples of 14")
    p.add_argument("--min-depth", type=float, default=0.1)
    p.add_argument("--max-depth", type=float, default=None, help="default 80 (nuScenes) / 50 (RobotCar)")
    p.add_argument("--batch-size", type=data.at_least(1), default=4, help="per process")
    p.add_argument("--epochs", type=data.at_least(1), default=20)
    p.add_argument("--steps", type=data.at_least(1), default=None, help="total optimiser steps (overrides --epochs)")
    p.add_argument("--lr-encoder", type=float, default=5e-6)
    p.add_argument("--lr-decoder", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--no-color-jitter", action="store_true")
    p.add_argument("--fast-jitter", action="store_true",
                   help="jitter with one affine colour map (data.affine_jitter: ~13 ms less per frame, within about "
                        "2/255 on average) instead of torchvision's PIL ops as md4all does")
    p.add_argument("--gpu-augment", action="store_true",
                   help="DataLoader workers only decode; the resizes and md4all's jitter run batched on the training "
                        "device, as exact tensor forms of the PIL ops (the same tensors, fewer CPU cores per GPU)")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--exact-decode", action="store_true",
                   help="decode every frame in full before resizing, as md4all does (bit-exact reproduction; "
                        "default: JPEG DCT-scaled decodes at the loss size, up to 12/255 from it, mean 0.4/255)")
    p.add_argument("--scene-ends", default="md4all", choices=data.SCENE_ENDS,
                   help="nuScenes train: md4all replaces a scene's first and last key frame by its neighbour "
                        "(a duplicate item); keep: train on them")
    p.add_argument("--robotcar-k", default="md4all", choices=data.ROBOTCAR_K,
                   help="RobotCar training K: md4all's (fy, cy scaled by 320/960 after the 768-row crop: what "
                        "published models learnt) or geometric (by 320/768: the cropped frame's)")
    p.add_argument("--val-every", type=data.at_least(1), default=None, help="steps between validations (default: each epoch)")
    p.add_argument("--no-val", action="store_true", help="skip validation (and best.pt)")
    p.add_argument("--ckpt-every", type=data.at_least(1), default=1000)
    p.add_argument("--log-every", type=data.at_least(1), default=10)
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/ckpt.pt; --lr-* flags given with it replace the checkpoint's rates")
    p.add_argument("--stop-at", type=data.at_least(1), default=None, help="stop after this step as if interrupted (then --resume)")
    p.add_argument("--workers", type=data.at_least(0), default=None,
                   help="DataLoader workers per process (default: the CPUs per process on this machine, less one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast on GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the depth net")
    p.add_argument("--init-depth", type=float, default=None,
                   help="start a fresh head at this depth (m) instead of md4all's 0.2 m (helps from-scratch nets)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the encoder: less memory, ~30%% slower")
    p.add_argument("--tiny", action="store_true", help="tiny random nets, no downloads (tests, smoke runs)")
    p.add_argument("--no-check-data", action="store_true",
                   help="skip reading every training and validation file once before step 1 (data.check_files), "
                        "which finds broken files before training instead of at the step that reads them")
    return p


def resolve_args(args):
    """Fill dataset-dependent defaults and the --tiny overrides."""
    defaults = data.DATASET_DEFAULTS[args.dataset]
    args.size, args.max_depth = args.size or defaults["size"], args.max_depth or defaults["max_depth"]
    if args.workers is None:
        args.workers = data.default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if args.tiny:
        args.encoder, args.init, args.net_size = "tiny", "none", None
    return args


def given_flags(parser, argv):
    """Destinations of the flags written on the command line (not left at their defaults): argparse fills a
    default only where the namespace it is given lacks the attribute, so what a parse overwrites was given."""
    unset = object()
    blank = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args(argv)), unset))
    return {dest for dest, value in vars(parser.parse_args(argv, namespace=blank)).items() if value is not unset}


def check_run_folder(args):
    """Refuse to write into the dataset, or over a finished run without --resume / --overwrite."""
    out, root = os.path.realpath(args.out), os.path.realpath(args.data_root)
    if out == root or out.startswith(root + os.sep):
        raise ValueError(f"--out {args.out} is inside --data-root {args.data_root}: checkpoints would be written "
                         "into the dataset; choose a folder outside it")
    data.check_writable(args.out)
    ckpt = os.path.join(args.out, "ckpt.pt")
    if os.path.isfile(ckpt) and not (args.resume or args.overwrite):
        step = read_checkpoint(ckpt).get("step", "?")
        raise ValueError(f"{args.out} already holds a run (ckpt.pt at step {step}): pass --resume to continue it, "
                         f"--overwrite to replace it, or another --out")


def check_settings(parser, args):
    """Refuse at start, as a usage error naming the flag, settings that cannot work (instead of a failure or a
    silently wrong run hours later): rates and weights must be finite and >= 0, --p-day a probability, the
    depth range ordered, the sizes at least one 14-pixel patch, --net-size in whole patches."""
    for name, value in sorted(vars(args).items()):
        if name.startswith(("lr_", "w_")) or name == "weight_decay":
            if not (math.isfinite(value) and value >= 0):
                parser.error(f"--{name.replace('_', '-')} {value}: give a finite value >= 0")
    if not 0 <= getattr(args, "p_day", 0) <= 1:
        parser.error(f"--p-day {args.p_day}: a probability, in [0, 1]")
    if not 0 < args.min_depth < args.max_depth:
        parser.error(f"--min-depth {args.min_depth} / --max-depth {args.max_depth}: need 0 < min < max (metres)")
    for flag, size in (("--size", args.size), ("--net-size", args.net_size)):
        if size and min(size) < 14:
            parser.error(f"{flag} {size[0]}x{size[1]}: each side must be at least 14 pixels (one DINOv2 patch)")
    if args.net_size and any(v % 14 for v in args.net_size):
        parser.error(f"--net-size {args.net_size[0]}x{args.net_size[1]}: give multiples of 14 (DINOv2's patch), "
                     f"e.g. 518x784")
    if getattr(args, "gpu_augment", False) and args.fast_jitter:
        parser.error("--gpu-augment makes md4all's exact jitter on the device; --fast-jitter is the affine one on the "
                     "CPU: give one of them")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out and --overwrite replaces it: give one of them")
    for flag, dataset in (("robotcar_k", "robotcar"), ("scene_ends", "nuscenes")):
        if flag in args.given and args.dataset != dataset:
            parser.error(f"--{flag.replace('_', '-')} applies to --dataset {dataset} only: drop it")
    if args.tiny and "net_size" in args.given:
        parser.error("--tiny builds a net that sees the loss-size frames (--size): drop --net-size")


def parse_args(parser, argv):
    """Parse, fill dataset defaults, record which flags were written (see `resume`), refuse settings that
    cannot work, check --out."""
    args = resolve_args(parser.parse_args(argv))
    args.given = sorted(given_flags(parser, argv))
    check_settings(parser, args)
    check_run_folder(args)
    return args


def make_dataset(args, split, **kwargs):
    """The md4all dataset of `args` for `split` at the loss resolution."""
    kwargs = dict(size=args.size, net_size=args.net_size, seed=args.seed, fast_decode=not args.exact_decode, **kwargs)
    if split == "train" and args.gpu_augment:
        kwargs["device_augment"] = True
    if args.dataset == "robotcar":  # validation on md4all's val split, never on the test split
        return data.RobotCarDepth(args.data_root, split=split, robotcar_k=args.robotcar_k, **kwargs)
    return data.NuScenesDepth(args.data_root, args.version, split, scene_ends=args.scene_ends, **kwargs)


def check_data(args, *datasets):
    """Read every file the run's datasets can read before training starts (data.check_files): a broken one fails
    now, in one line naming it, not at the step that draws it. Under torchrun each rank reads a strided share
    (RANK / WORLD_SIZE, as setup_distributed); a failing rank stops the others. --no-check-data skips it."""
    if args.no_check_data:
        return
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    paths = sorted({path for dataset in datasets if dataset is not None for path in dataset.files()})
    line = data.require_intact(paths[rank::world], progress=rank == 0)
    if rank == 0:
        share = f" (rank 0's share of {len(paths):,}: each of {world} ranks reads its own)" if world > 1 else ""
        print(f"{line}{share}; --no-check-data skips this")


def build_depth_net(args):
    net = DepthNet(args.encoder, args.init, args.weights, args.min_depth, args.max_depth, args.net_size,
                   init_depth=args.init_depth)
    if args.grad_ckpt:
        net.model.activation_checkpointing_enable()
    return net


def depth_param_groups(net, lr_encoder, lr_decoder):
    """AdamW groups of a DepthNet (docs/method.md §4): the DINOv2 encoder, and the decoder (DPT neck + head)."""
    return [dict(name="lr_encoder", params=list(net.model.backbone.parameters()), lr=lr_encoder),
            dict(name="lr_decoder", params=list(net.model.neck.parameters()) + list(net.model.head.parameters()),
                 lr=lr_decoder)]


def setup_distributed():
    """(rank, world size, device): DDP when torchrun set RANK, plain single process otherwise."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def all_reduce_sums(values, device):
    """Sum a list of floats over all ranks (metrics travel as sums and counts)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def agree_to_stop(asked, group):
    """True on every rank if any rank was asked to stop (a signal since the last step), so that all stop after the
    same step. One all-reduce of one number per step in a CPU (gloo) group, so no GPU synchronisation: 0.55 ms
    between two processes on a loaded 2-core machine."""
    if group is None:
        return asked
    flag = torch.tensor([float(asked)])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())


def validate(net, dataset, args, rank, world, device):
    """Per-group md4all metrics of `net` on `dataset`, each rank evaluating a strided shard."""
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=args.batch_size, num_workers=args.workers)
    was_training = net.training
    totals, _ = score_loader(loader, net_predictor(net.eval(), device), args.min_depth, args.max_depth)
    net.train(was_training)
    groups = ["all", "day-clear", "night", "day-rain"]
    keys = ["count", "abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"]
    flat = all_reduce_sums([totals.get(g, {}).get(k, 0.0) for g in groups for k in keys], device)
    totals = {g: dict(zip(keys, flat[i * len(keys):(i + 1) * len(keys)])) for i, g in enumerate(groups)}
    return summarize({g: t for g, t in totals.items() if t["count"] > 0})


class SkipSampler(torch.utils.data.Sampler):
    """The indices of `sampler` after the first `skip`: resumes mid-epoch on the same order."""

    def __init__(self, sampler, skip):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return len(self.sampler) - self.skip


def resume(ckpt_path, modules, optimizer, scheduler, args, kind, master):
    """Load `modules`, optimiser and scheduler from `ckpt_path`; returns (step, best).

    Learning-rate flags written on this command line replace the checkpoint's (the fix the NaN stop
    advises); the others keep the checkpoint's. log.jsonl loses the records past the checkpoint's step.
    """
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start afresh")
    ckpt = read_checkpoint(ckpt_path)
    found = checkpoint_kind(ckpt)
    if found.split()[0] != kind:
        raise ValueError(f"--resume: {ckpt_path} is a {found} checkpoint, and this is train_{kind}.py; "
                         "use another --out")
    for key, module in modules.items():
        module.load_state_dict(ckpt[key])
    names = [group["name"] for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])  # takes the saved groups' keys: keep ours (older runs lack names)
    for group, name in zip(optimizer.param_groups, names):
        group["name"] = name
    scheduler.load_state_dict(ckpt["scheduler"])
    step, changed = ckpt["step"], {}
    for group in optimizer.param_groups:  # each group's name is the flag of its learning rate
        new = getattr(args, group["name"])
        if group["name"] in getattr(args, "given", ()) and new != group["initial_lr"]:
            changed[group["name"]] = (group["initial_lr"], new)
            group["initial_lr"] = new
    if changed:  # keep the linear decay: the new rate scaled by where the schedule stands
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        for group, base, decay in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * decay(step)
    log_path = os.path.join(os.path.dirname(ckpt_path), "log.jsonl")
    if master:
        if os.path.isfile(log_path):  # records after the checkpoint will be written again
            with open(log_path) as f:
                records = [line for line in f if json.loads(line).get("step", 0) <= step]
            with open(log_path, "w") as f:
                f.writelines(records)
        record = dict(step=step, resumed_from=ckpt_path,
                      lr_changed={k: {"from": a, "to": b} for k, (a, b) in changed.items()})
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, (a, b) in changed.items():
            print(f"resume: --{name.replace('_', '-')} {a:g} -> {b:g} (from this command line)")
    return step, ckpt["best"]


# Resident memory a training step adds per image at the paper's sizes (ViT-B, 518x784 input, 320x576 losses,
# ResNet-18 pose), fp32, without checkpointing, measured on the CPU at batch 2 (the student: 1) (tools/bench.py
# --only memory; BENCHMARKS.md, 2026-12-07), and the share of it left with --grad-ckpt (batch 1, teacher and
# student alike). CUDA's caching allocator keeps more than it uses: read the estimate as a floor.
STEP_ACTIVATION_GIB = {"teacher": 2.33, "lidar_teacher": 2.06, "student": 2.29}
CHECKPOINTED_SHARE = 0.63
MEASURED_SIZE = (518, 784)


def expected_memory(kind, loss_module, optimizer, args, bf16):
    """One line for the start of training: the memory a step is expected to need, how it is computed and from
    what. State is exact: 16 bytes per trained parameter (fp32 weights, gradients, two AdamW moments), 4 per
    frozen one. Activations: STEP_ACTIVATION_GIB x batch, scaled by the input's pixels (ViT-B only)."""
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    n_trained = sum(p.numel() for p in loss_module.parameters() if id(p) in trained)
    n_frozen = sum(p.numel() for p in loss_module.parameters() if id(p) not in trained)
    state = (16 * n_trained + 4 * n_frozen) / 2 ** 30
    per_image = STEP_ACTIVATION_GIB.get(kind)
    if per_image is None or getattr(args, "encoder", None) != "base" or not getattr(args, "net_size", None):
        return (f"expected memory: weights + gradients + AdamW state {state:.2f} GiB ({n_trained / 1e6:.1f} M trained, "
                f"{n_frozen / 1e6:.1f} M frozen parameters) + activations (measured for --encoder base only: "
                f"BENCHMARKS.md, memory)")
    pixels = args.net_size[0] * args.net_size[1] / (MEASURED_SIZE[0] * MEASURED_SIZE[1])
    per_image *= CHECKPOINTED_SHARE if args.grad_ckpt else 1
    activations = per_image * args.batch_size * pixels
    lower = " (bf16 autocast: not yet measured on a GPU, where it should need less; on a CPU without native bf16 "\
        "it needed 1.23x the fp32 activations)" if bf16 else ""
    return (f"expected memory: about {state + activations:.1f} GiB = weights + gradients + AdamW state {state:.2f} GiB "
            f"({n_trained / 1e6:.1f} M trained, {n_frozen / 1e6:.1f} M frozen parameters) + activations "
            f"{activations:.1f} GiB ({per_image:.2f} GiB per image, measured on the CPU at 518x784 in fp32"
            f"{' with --grad-ckpt' if args.grad_ckpt else ''}, x {args.batch_size} images x {pixels:.2f} of its pixels)"
            f"{lower}; BENCHMARKS.md, memory")


def waiting_for(batches, waited):
    """The batches of `batches`, adding to waited[0] the seconds each took to arrive: the time the training
    loop stood still waiting for data (a starved GPU shows it as a large share of the step time)."""
    batches = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - start
        yield batch


def train(args, loss_module, groups, modules, extra, dataset, val_dataset=None, kind="teacher"):
    """Train `loss_module` on `dataset` (see the module docstring for the contract): DDP under torchrun,
    bf16 on GPU, atomic checkpoints, exact resume, a JSONL log, best.pt by night abs_rel. Returns the step."""
    # Processes, devices and precision
    rank, world, device = setup_distributed()
    master = rank == 0
    torch.manual_seed(args.seed + rank)
    torch.set_flush_denormal(True)  # CPU: a saturated sigmoid's denormal gradients can cost 10x per step
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    os.makedirs(args.out, exist_ok=True)
    ckpt_path, log_path = os.path.join(args.out, "ckpt.pt"), os.path.join(args.out, "log.jsonl")

    # Schedule: steps per epoch of this world size, AdamW, linear decay to zero
    steps_per_epoch = len(dataset) // (args.batch_size * world)
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(dataset)} frames, fewer than --batch-size {args.batch_size} "
                         f"x {world} processes: lower --batch-size or add data")
    total = args.steps or args.epochs * steps_per_epoch
    loss_module.to(device)
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
    if master:
        memory_kind = "lidar_teacher" if getattr(args, "supervision", "self") == "lidar" else kind
        print(expected_memory(memory_kind, loss_module, optimizer, args, bf16))

    # Resume, or start a fresh log
    step, best = 0, math.inf
    if args.resume:
        step, best = resume(ckpt_path, modules, optimizer, scheduler, args, kind, master)
    elif master and os.path.exists(log_path):
        os.remove(log_path)  # a fresh run (--overwrite, or no checkpoint yet): the old log would mix two runs
    net = modules["model"]
    if args.compile:
        net.compile()  # in place: state-dict keys unchanged
    model = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else loss_module

    # Data: items come as (epoch, index) pairs, so the workers live across epochs and still draw each
    # epoch's augmentation (they keep the dataset copy they started with)
    getattr(dataset, "share_tables", lambda: None)()  # the hue tables, built once before the workers fork
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    pairs = data.EpochSampler(sampler)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=pairs, num_workers=args.workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=args.workers > 0)
    validating, val_every = val_dataset is not None and not args.no_val, args.val_every or steps_per_epoch
    augment_on_device = getattr(dataset, "device_augment", False)

    def log(record):
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(path):
        if master:
            save_checkpoint(path, **{key: m.state_dict() for key, m in modules.items()}, **extra,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), step=step, best=best,
                            args={k: v for k, v in vars(args).items() if not callable(v)})

    bar = tqdm(total=total, initial=step, disable=not master, desc=os.path.basename(args.out.rstrip("/")),
               dynamic_ncols=True)
    sums, count, finite, tick = None, 0, torch.ones((), dtype=torch.bool, device=device), time.time()
    waited = [0.0]  # seconds spent waiting for batches since the last log record (waiting_for)
    # Ctrl-C or SIGTERM (a scheduler's preemption): finish the step, save it, stop. Under torchrun the ranks
    # agree on the step to stop after (agree_to_stop), and a repeated signal is torchrun forwarding it to each
    # rank (it kills them after its --shutdown_timeout, 30 s by default); in one process a second one stops at once.
    stop, control = threading.Event(), dist.new_group(backend="gloo") if dist.is_initialized() else None

    def stop_after_this_step(signum, frame):
        stop.set()
        if world == 1:
            signal.signal(signum, previous_handlers[signum])
    catch = threading.current_thread() is threading.main_thread()
    previous_handlers = {sig: signal.signal(sig, stop_after_this_step) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if catch else {}
    stopping = False
    try:
        while step < total and step != args.stop_at and not stopping:
            epoch, skip = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            pairs.set_epoch(epoch, SkipSampler(sampler, skip * args.batch_size))  # a resume skips the finished part
            for batch in waiting_for(loader, waited):
                # One optimiser step
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                if augment_on_device:  # --gpu-augment: the workers only decoded
                    batch = dataset.augment_batch(batch)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, terms = model(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update(1)

                # Running sums stay on the device (no host sync per step); NaN is checked when we log or save
                values = torch.stack([loss.detach().float()] + [v.detach().float() for v in terms.values()])
                sums = values if sums is None else sums + values
                finite &= torch.isfinite(values).all()
                count += 1
                stopping = agree_to_stop(stop.is_set(), control)
                last = step == total or step == args.stop_at or stopping
                due_log, due_save = last or step % args.log_every == 0, last or step % args.ckpt_every == 0
                if (due_log or due_save) and all_reduce_sums([float(not finite)], device)[0] > 0:
                    raise ValueError(f"loss became NaN/inf before step {step}; stopped without saving. The last "
                                     f"good checkpoint is {ckpt_path} (if any): resume from it with lower "
                                     f"learning rates (--resume --lr-encoder ... --lr-decoder ...: flags given "
                                     f"with --resume replace the checkpoint's), or check the data of this epoch.")

                # Log the mean of each term since the last record, over all ranks
                if due_log:
                    reduced = all_reduce_sums(sums.tolist() + [count], device)
                    mean = [v / reduced[-1] for v in reduced[:-1]]
                    elapsed = time.time() - tick
                    rate, stall = count * args.batch_size * world / elapsed, min(waited[0] / elapsed, 1.0)
                    log(dict(step=step, epoch=epoch, loss=mean[0], **dict(zip(terms, mean[1:])),
                             lr=scheduler.get_last_lr()[0], images_per_s=rate, data_wait=stall))
                    bar.set_postfix(loss=f"{mean[0]:.4f}", img_s=f"{rate:.1f}", data_wait=f"{stall:.0%}")
                    sums, count, tick, waited[0] = None, 0, time.time(), 0.0

                # Validate (best.pt: the lowest night abs_rel, or overall without night frames) and checkpoint
                if validating and (step % val_every == 0 or step == total):
                    metrics = validate(net, val_dataset, args, rank, world, device)
                    log(dict(step=step, val=metrics))
                    score = metrics.get("night", metrics.get("all"))["abs_rel"]
                    if score < best:
                        best = score
                        save(os.path.join(args.out, "best.pt"))
                if due_save:
                    save(ckpt_path)
                if last:
                    break
    finally:  # also when the loop stops on an error: the bar ends its line, the caller's Ctrl-C is its own again,
        bar.close()  # and the persistent workers stop now (data.stop_workers: no /tmp/pymp-* left behind)
        data.stop_workers(getattr(loader, "_iterator", None))
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    # Tear down: the DDP reducer's destructor waits on gloo/NCCL work that needs the process group and the
    # GIL; destroyed after the group (or while it tears down) it can deadlock, so release it first
    if dist.is_initialized():
        dist.barrier()
        del model
        gc.collect()
        dist.destroy_process_group()
    if stopping:
        if not master:
            raise SystemExit(130)  # rank 0 says it, once
        raise KeyboardInterrupt(f"interrupted at step {step}; {ckpt_path} holds step {step}: run the same command "
                                f"with --resume to continue")
    if master:
        best_path = os.path.join(args.out, "best.pt")
        print(f"done: step {step}; checkpoint {ckpt_path}"
              + (f", best {best_path}" if os.path.isfile(best_path) else "") + f", log {log_path}")
    return step
