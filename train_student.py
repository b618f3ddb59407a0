"""Train the SSD student (docs/method.md §3-4): day images and their GDT translations, teacher + semantic loss.

    # CPU smoke run (after tools/synthetic.py, gdt.py and train_teacher.py on the synthetic world)
    python train_student.py --tiny --data-root world --size 90x160 --teacher runs/teacher/ckpt.pt \
        --gdt-root gdt --conds night rain --steps 20 --out runs/student
    # the paper's setting on one GPU / on 8 GPUs
    python train_student.py --data-root /data/nuscenes --teacher runs/teacher/ckpt.pt \
        --gdt-root /data/gdt --conds night rain --out runs/student
    torchrun --standalone --nproc_per_node=8 --log-dir runs/torchrun_logs train_student.py ...same flags...

The student sees the day frame with probability --p-day, else its translation into a condition drawn
uniformly from --conds. The frozen teacher sees the day frame; its pose network reconstructs the
target from the (day) source frames with both depths to tell where the teacher is reliable. A frozen
pretrained DINOv2 on the day frame anchors the student's encoder features (semantic loss).

Table 3 ablations: GDT vs classic translation: point --gdt-root at `tools/classic_weather.py` output;
teacher loss vs plain distillation: --teacher-mask none; semantic loss off: --w-sem 0.
Checkpoints, --resume, DDP, bf16, logging: training.py's loop, as for the teacher.
"""

import torch
import torch.nn as nn

import data
from losses import TEACHER_MASKS, distillation, reprojection_loss, semantic_loss, teacher_loss
from model import DinoFeatures, checkpoint_kind, load_depth_net, load_pose_net, predict_poses, read_checkpoint
from training import (add_common_args, build_depth_net, check_data, depth_param_groups, make_dataset, parse_args,
                      train)


def parse_conds(words, gdt_root):
    """--conds night rain (or night,rain) -> ('night', 'rain'), duplicates dropped; checks the names and
    that --gdt-root goes with them."""
    if words is None:
        return ("night", "rain") if gdt_root else ()
    conds = tuple(data.parse_conditions([words] if isinstance(words, str) else words))
    if conds and not gdt_root:
        raise ValueError(f"--conds {' '.join(conds)} needs --gdt-root, the folder gdt.py wrote (<root>/<cond>/...); without "
                         f"translations the student would see day images only")
    return conds


class StudentLoss(nn.Module):
    """Teacher loss (reliability-masked distillation) + w_sem x semantic loss (docs/method.md §3)."""

    def __init__(self, net, teacher, teacher_pose, dino, mask="reliable", w_sem=1.0, pose_order="md4all"):
        super().__init__()
        if mask not in TEACHER_MASKS:
            raise ValueError(f"--teacher-mask {mask!r} is unknown; choose one of {TEACHER_MASKS}")
        self.net, self.teacher, self.teacher_pose, self.dino = net, teacher, teacher_pose, dino
        self.mask, self.w_sem, self.pose_order = mask, w_sem, pose_order  # the order the teacher's pose net learnt
        for frozen in (teacher, teacher_pose, dino):
            if frozen is not None:
                frozen.requires_grad_(False).eval()

    def forward(self, batch):
        color = batch["color"]
        day = batch.get("day_input", color)  # the clean day frame at the network size
        out = self.net(batch["input"], out_size=color.shape[-2:])
        with torch.no_grad():
            target = self.teacher(day, out_size=color.shape[-2:])
        distill = distillation(out["scaled_disp"], target["scaled_disp"])
        pe_teacher = pe_student = None
        if self.mask != "none":
            # Where does the teacher's depth explain the day frames better than the student's?
            with torch.no_grad():
                sources = [batch["prev"], batch["next"]]
                poses = predict_poses(self.teacher_pose, color, *sources, self.pose_order)
                pe_teacher = reprojection_loss(color, sources, target["depth"], poses, batch["K"], automask=False)[0]
                pe_student = reprojection_loss(color, sources, out["depth"], poses, batch["K"], automask=False)[0]
        loss_teacher = teacher_loss(distill, pe_teacher, pe_student, self.mask)
        terms = {"teacher": loss_teacher}
        loss = loss_teacher
        if self.w_sem > 0:
            terms["semantic"] = semantic_loss(out["tokens"], self.dino(day))
            loss = loss + self.w_sem * terms["semantic"]
        return loss, terms


def main(argv=None):
    p = add_common_args(data.ArgumentParser(description=__doc__))
    p.add_argument("--teacher", required=True, help="teacher checkpoint from train_teacher.py")
    p.add_argument("--gdt-root", default=None, help="gdt.py output folder (<root>/<cond>/<relative path>)")
    p.add_argument("--conds", "--cond", nargs="+", default=None, metavar="COND",
                   help="translated conditions to draw from, as gdt.py's --cond: night rain (or night,rain; "
                        "default with --gdt-root: night rain)")
    p.add_argument("--p-day", type=float, default=2 / 3,
                   help="probability of the day frame (the paper: |C|/(|C|+1); md4all: 1/(|C|+1))")
    p.add_argument("--teacher-mask", default="reliable", choices=TEACHER_MASKS,
                   help="reliable: distil where the teacher reprojects better (the paper's text); printed: the "
                        "printed inequality; none: plain md4all distillation")
    p.add_argument("--w-sem", type=float, default=1.0, help="semantic loss weight (0 = off)")
    p.add_argument("--sem-weights", default=None, help="frozen DINOv2 for the semantic loss: hub id or folder "
                                                       "(default: the official one; 'none': random, for benchmarks)")
    p.add_argument("--init-from-teacher", action="store_true", help="start from the teacher's weights")
    args = parse_args(p, argv)
    conds = parse_conds(args.conds, args.gdt_root)
    teacher_ckpt = read_checkpoint(args.teacher)
    if checkpoint_kind(teacher_ckpt) == "student":
        raise ValueError(f"--teacher {args.teacher} is a student checkpoint (train_student.py); pass the "
                         f"train_teacher.py checkpoint it was trained from")
    torch.manual_seed(args.seed)
    dataset = make_dataset(args, "train", frames=(0,) if args.teacher_mask == "none" else (-1, 0, 1),
                           color_jitter=not args.no_color_jitter, exact_jitter=not args.fast_jitter, flip=not args.no_flip,
                           gdt_root=args.gdt_root, gdt_conds=conds, p_day=args.p_day, day_input=True)
    if not conds:
        print("train_student.py: no --gdt-root: the student sees day images only")
    for cond, count in (getattr(dataset, "gdt_fallbacks", None) or {}).items():
        if count:
            print(f"train_student.py: {count} {cond} translations were rejected by gdt.py's geometry audit: "
                  f"those frames use the day image")
    val_dataset = None if args.no_val else make_dataset(args, "val")
    check_data(args, dataset, val_dataset)
    teacher = load_depth_net(teacher_ckpt)
    try:
        pose = None if args.teacher_mask == "none" else load_pose_net(teacher_ckpt)
    except ValueError as e:
        raise ValueError(f"--teacher {args.teacher}: {e}") from None
    net = build_depth_net(args)
    if args.init_from_teacher:
        net.load_state_dict(teacher.state_dict())
        net.head_log = teacher.head_log  # a Depth-Anything teacher's calibrated map (not a weight)
    dino = None
    if args.w_sem > 0:
        dino = DinoFeatures(args.encoder, args.sem_weights, args.net_size)
    pose_order = (teacher_ckpt.get("args") or {}).get("pose_order", "md4all")
    loss_module = StudentLoss(net, teacher, pose, dino, args.teacher_mask, args.w_sem, pose_order)
    groups = depth_param_groups(net, args.lr_encoder, args.lr_decoder)
    extra = dict(config=net.config_dict(), pose=None, pose_config=None)
    train(args, loss_module, groups, {"model": net}, extra, dataset, val_dataset, kind="student")


if __name__ == "__main__":
    data.run_cli(main, "train_student.py")
