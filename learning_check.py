"""Learning check on the synthetic world (CPU, tiny nets): does each stage learn what the paper claims?

    OMP_NUM_THREADS=1 python learning_check.py --out runs/check     # about 20 min on 2 CPU cores

1. Teachers on day-clear frames: LiDAR-supervised and self-supervised, each against the untrained
   net on the day-clear val frames (abs_rel must drop clearly).
2. Students on day + classic-translated night / rain frames (gdt.py --backend classic), each against
   its teacher on the night val frames: from the LiDAR teacher (plain distillation: it has no pose
   net) and from the self-supervised teacher (the paper's teacher loss).

Tiny random nets stand in for DINOv2 (no weights offline), so the student starts from the teacher
(--init-from-teacher) and the semantic loss is off: a random "DINOv2" carries no semantics to keep.
Every stage is resumable, so a rerun continues; results go to `<out>/learning_check.json`.
"""
import argparse
import json
import os

import torch

import evaluate
import gdt
import synthetic
import train_student
import train_teacher
from model import DepthNet, save_checkpoint


def evaluate_ckpt(ckpt, world, out, size):
    return evaluate.main(["--ckpt", ckpt, "--data-root", world, "--size", size, "--workers", "0", "--out", out])


def trained(out, steps):
    ckpt = os.path.join(out, "ckpt.pt")
    return os.path.isfile(ckpt) and torch.load(ckpt, map_location="cpu", weights_only=False)["step"] >= steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/check")
    p.add_argument("--size", default="90x160", help="loss / network resolution HxW")
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument("--student-steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    world, gdt_out = os.path.join(args.out, "world"), os.path.join(args.out, "gdt_classic")
    synthetic.render_world(world, train_day=6, train_night=1, train_rain=1, val_day=2, val_night=2, val_rain=2,
                           keyframes=12, size=(180, 320), seed=0, progress=True)
    gdt.main(["--backend", "classic", "--dataset", "nuscenes", "--data-root", world, "--out", gdt_out,
              "--cond", "night", "rain"])
    common = ["--tiny", "--data-root", world, "--size", args.size, "--batch-size", str(args.batch_size),
              "--workers", "1", "--no-val", "--log-every", "50", "--ckpt-every", "200"]
    results = {}

    torch.manual_seed(0)
    untrained = DepthNet("tiny", init="none", net_size=None)
    save_checkpoint(os.path.join(args.out, "untrained.pt"), model=untrained.state_dict(), config=untrained.config_dict())
    results["untrained"] = evaluate_ckpt(os.path.join(args.out, "untrained.pt"), world,
                                         os.path.join(args.out, "eval_untrained"), args.size)
    for name, supervision, lr in (("teacher_lidar", "lidar", "3e-3"), ("teacher_self", "self", "1e-4")):
        out = os.path.join(args.out, name)
        if not trained(out, args.teacher_steps):
            # --init-depth 10: from scratch, md4all's 0.2 m start stalls under metric velocity supervision
            train_teacher.main(common + ["--out", out, "--supervision", supervision, "--steps", str(args.teacher_steps),
                                         "--lr-encoder", lr, "--lr-decoder", lr, "--lr-pose", "1e-3", "--init-depth", "10"]
                               + (["--resume"] if os.path.isfile(os.path.join(out, "ckpt.pt")) else []))
        results[name] = evaluate_ckpt(os.path.join(out, "ckpt.pt"), world, os.path.join(args.out, "eval_" + name), args.size)

    # The LiDAR teacher has no pose net: its student distils everywhere (--teacher-mask none); the
    # self-supervised teacher's student uses the paper's teacher loss (reliable mask).
    for name, teacher, mask in (("student_lidar", "teacher_lidar", "none"), ("student_self", "teacher_self", "reliable")):
        out = os.path.join(args.out, name)
        if not trained(out, args.student_steps):
            train_student.main(common + ["--out", out, "--teacher", os.path.join(args.out, teacher, "ckpt.pt"),
                                         "--gdt-root", gdt_out, "--conds", "night,rain", "--init-from-teacher",
                                         "--teacher-mask", mask, "--w-sem", "0", "--steps", str(args.student_steps),
                                         "--lr-encoder", "1e-4", "--lr-decoder", "1e-4"]
                               + (["--resume"] if os.path.isfile(os.path.join(out, "ckpt.pt")) else []))
        results[name] = evaluate_ckpt(os.path.join(out, "ckpt.pt"), world, os.path.join(args.out, "eval_" + name), args.size)

    print(f"\n{'abs_rel':<14}" + "".join(f"{g:>11}" for g in evaluate.GROUP_ORDER))
    for name, summary in results.items():
        print(f"{name:<14}" + "".join(f"{summary[g]['abs_rel']:>11.4f}" for g in evaluate.GROUP_ORDER))
    day, untrained = "day-clear", results["untrained"]["day-clear"]["abs_rel"]
    checks = {f"{t} beats the untrained net on day-clear (< 0.8x)": results[t][day]["abs_rel"] < 0.8 * untrained
              for t in ("teacher_lidar", "teacher_self")}
    for student, teacher in (("student_lidar", "teacher_lidar"), ("student_self", "teacher_self")):
        checks[f"{student} beats {teacher} at night"] = \
            results[student]["night"]["abs_rel"] < results[teacher]["night"]["abs_rel"]
        checks[f"{student} within 10% of {teacher} on day-clear"] = \
            results[student][day]["abs_rel"] < 1.1 * results[teacher][day]["abs_rel"]
    for claim, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {claim}")
    with open(os.path.join(args.out, "learning_check.json"), "w") as f:
        json.dump({"args": vars(args), "results": results, "checks": checks}, f, indent=1)
    return all(checks.values())


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
