"""Learning check on the synthetic world (CPU, tiny nets): does SSD do what the paper claims?

    OMP_NUM_THREADS=1 python tools/learning_check.py --out runs/check --jobs 2     # about 17 min on 2 CPU cores (docs/results.md)
    OMP_NUM_THREADS=1 python tools/learning_check.py --out runs/quick --teacher-steps 200 --student-steps 100 --seeds 1
    OMP_NUM_THREADS=1 python tools/learning_check.py --out runs/check --corruptions-only  # stage 5 on a finished check

Stages, each a real command of this repository run as its own process (logs in <out>/<run>/train.log):
1. The world: synthetic.py with a 12 Hz camera (--sweeps 5, about 0.5-0.9 m between frames, as nuScenes
   CAM_FRONT) and cars textured along their length, so the photometric loss sees the depth of what
   the ego passes. Night and rain versions of the day training frames, two kinds: rendered
   (synthetic.py --translate: the same scene, pose and time under the world's own night and rain, the
   ideal GDT, geometry-faithful and realistic; the stand-in for GDT in the main rows, as no diffusion
   weights exist offline) and classic (tools/classic_weather.py: an even darkening with glows, or haze
   and streaks; one extra row per teacher shows what translation realism is worth).
2. Teachers on day-clear frames, one per seed: self-supervised (the paper's setting) and LiDAR-supervised.
3. Students, the rows of the paper's Table 3 (docs/method.md §3-4): from the self-supervised teacher
   the teacher loss (`--teacher-mask reliable`, one per seed), plain distillation (`none`), the
   printed inequality (`printed`), no translations (`--p-day 1`), the semantic loss and classic
   translations; from the LiDAR teacher plain distillation (it has no pose net, so no teacher loss),
   no translations, the semantic loss and classic translations.
4. Evaluation on the val scenes (day-clear, night, day-rain), one table as markdown and JSON,
   `<out>/learning_check.png` (teacher vs student per condition), `<out>/translations.png` (a training
   frame, its rendered and classic translations, val frames) and PASS / FAIL lines for the claims.
5. Common corruptions (evaluate.py --corruptions, docs/method.md §5; needs the optional imagecorruptions package):
   the seed-0 teacher and main student of each supervision on the val scenes corrupted by CORRUPTIONS at
   severities 1, 3 and 5, none of which any net saw in training; the student's corruption errors are relative
   to its own teacher (RoboDepth's CE and RCE: below 100 % means more robust). Its own table and plots
   (<out>/learning_check_corruptions.md, .json, <out>/learning_check_corruptions_<self|lidar>.png): the table of
   stage 4 is unchanged. Skipped, with a note, when the package is missing.

Settings of this check, not of the method (each chosen for a reason measured on this world; the reasons are in
docs/results.md, "Why the check's settings"): tiny random nets at 90x160, 900 teacher and 300 student steps;
teacher rates 1e-3 (self-supervised, pose net 3e-3) and 3e-3 (LiDAR), students 1e-4; --init-depth 6;
--pose-order temporal with --init-motion 0.7; 12 day-clear training scenes and 4 val scenes per condition. With no
pretrained DINOv2 offline, each student starts from its teacher (--init-from-teacher), and the semantic-loss rows
anchor its features to that teacher's own frozen encoder (exported as a transformers Dinov2Model folder).
A rerun with the same --out resumes: finished runs are kept, interrupted ones continue.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import Dinov2Model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the stage scripts
sys.path.insert(0, ROOT)  # tools/ is not a package
import data  # noqa: E402
import evaluate  # noqa: E402
import synthetic  # noqa: E402
from model import DepthNet, load_depth_net, save_checkpoint  # noqa: E402
GROUPS = ("day-clear", "night", "day-rain")
METRICS = ("abs_rel", "rmse", "a1")
WORLD = dict(train_day=12, train_night=0, train_rain=0, val_day=4, val_night=4, val_rain=4, keyframes=12, sweeps=5,
             size=(180, 320), seed=0)  # night and rain training scenes only serve GDT's style references
TEACHER_LR = {"self": "1e-3", "lidar": "3e-3"}
# Stage 5: a few corruptions of each ImageNet-C family (noise, blur, weather, digital), three severities
CORRUPTIONS = ("gaussian_noise", "motion_blur", "snow", "fog", "contrast", "jpeg_compression")
SEVERITIES = ("1", "3", "5")
# Student variants: (teacher, label, flags). The first of each teacher runs once per seed.
STUDENTS = [("self", "teacher loss", ["--teacher-mask", "reliable"]),
            ("self", "plain distillation", ["--teacher-mask", "none"]),
            ("self", "printed inequality", ["--teacher-mask", "printed"]),
            ("self", "no translations", ["--teacher-mask", "reliable", "--p-day", "1"]),
            ("self", "teacher loss + semantic", ["--teacher-mask", "reliable", "--w-sem", "1"]),
    ("self", "teacher loss, classic translations", ["--teacher-mask", "reliable"]),
            ("lidar", "plain distillation", ["--teacher-mask", "none"]),
            ("lidar", "no translations", ["--teacher-mask", "none", "--p-day", "1"]),
            ("lidar", "plain distillation + semantic", ["--teacher-mask", "none", "--w-sem", "1"]),
    ("lidar", "plain distillation, classic translations", ["--teacher-mask", "none"])]


def slug(text):
    return text.replace(" + ", "_").replace(", ", "_").replace(" ", "_")


def plan_runs(args, world, gdt_rendered, gdt_classic):
    """Every training run: (name, script, flags, steps, teacher run or None), teachers first. Students
    draw rendered translations, the 'classic translations' rows classic_weather.py's."""
    common = ["--tiny", "--data-root", world, "--size", args.size, "--batch-size", str(args.batch_size),
              "--workers", "1", "--no-val", "--log-every", "50", "--ckpt-every", "100", "--scene-ends", args.scene_ends]
    runs = []
    for sup in ("self", "lidar"):
        for seed in range(args.seeds):
            flags = ["--supervision", sup, "--lr-encoder", TEACHER_LR[sup], "--lr-decoder", TEACHER_LR[sup],
                     "--init-depth", "6", "--seed", str(seed)]
            if sup == "self":
                flags += ["--lr-pose", args.lr_pose, "--pose-order", "temporal", "--init-motion", args.init_motion,
                          "--rotation", args.rotation]
            runs.append((f"teacher_{sup}_s{seed}", "train_teacher.py", common + flags, args.teacher_steps, None))
    if getattr(args, "gpu_augment_teacher", False):  # the self-supervised teachers again, images by augment_batch
        runs += [(name.replace("teacher_self", "teacher_self_gpu_augment"), script, flags + ["--gpu-augment"], steps,
                  None) for name, script, flags, steps, _ in list(runs) if name.startswith("teacher_self_s")]
    for sup, label, extra in STUDENTS:
        main_row = label == STUDENTS[[s[0] for s in STUDENTS].index(sup)][1]
        for seed in range(args.seeds if main_row else 1):
            teacher = f"teacher_{sup}_s{seed}"
            gdt = gdt_classic if label.endswith("classic translations") else gdt_rendered
            flags = ["--teacher", os.path.join(args.out, teacher, "ckpt.pt"), "--gdt-root", gdt,
                     "--conds", "night,rain", "--init-from-teacher", "--lr-encoder", "1e-4", "--lr-decoder", "1e-4",
                     "--seed", str(seed)] + extra
            if "--w-sem" in extra:
                flags += ["--sem-weights", os.path.join(args.out, teacher, "encoder")]
            else:
                flags += ["--w-sem", "0"]
            runs.append((f"student_{sup}_{slug(label)}_s{seed}", "train_student.py", common + flags,
                         args.student_steps, teacher))
    return runs


def finished(run_dir, steps):
    ckpt = os.path.join(run_dir, "ckpt.pt")
    return os.path.isfile(ckpt) and torch.load(ckpt, map_location="cpu", weights_only=False)["step"] >= steps


def train(run, out):
    """Run one training command to its step count (resuming a checkpoint left by an interrupted run)."""
    name, script, flags, steps, _ = run
    run_dir = os.path.join(out, name)
    if finished(run_dir, steps):
        return name, 0.0
    cmd = [sys.executable, os.path.join(ROOT, script), *flags, "--out", run_dir, "--steps", str(steps)]
    if os.path.isfile(os.path.join(run_dir, "ckpt.pt")):
        cmd.append("--resume")
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode:
        raise RuntimeError(f"{name} failed (exit {done.returncode}); see {os.path.join(run_dir, 'train.log')}")
    return name, time.time() - start


def export_encoder(ckpt, folder):
    """Save the DINOv2 encoder of a depth checkpoint as a transformers Dinov2Model folder: the frozen
    encoder that `train_student.py --sem-weights` loads for the semantic loss."""
    backbone = load_depth_net(ckpt).model.backbone
    dino = Dinov2Model(backbone.config)
    dino.load_state_dict(backbone.state_dict())
    dino.save_pretrained(folder + ".tmp")
    os.replace(folder + ".tmp", folder)  # a folder appears whole or not at all: a rerun exports it again
    return folder


def summarize_seeds(results, names):
    """{group: {metric: (mean, low, high)}} over the runs `names` (one per seed)."""
    return {g: {m: (float(np.mean(v)), float(min(v)), float(max(v)))
                for m in METRICS for v in [[results[n][g][m] for n in names]]} for g in GROUPS}


def table_rows(results, seeds):
    """(row label, run names) in the order of the paper's Tables 1 and 3."""
    by_prefix = lambda prefix: [f"{prefix}_s{s}" for s in range(seeds)]
    rows = [("untrained net", ["untrained"])]
    for sup, title in (("self", "self-supervised"), ("lidar", "LiDAR")):
        rows.append((f"{title} teacher (day-clear)", by_prefix(f"teacher_{sup}")))
        if sup == "self" and all(n in results for n in by_prefix("teacher_self_gpu_augment")):
            rows.append((f"{title} teacher, --gpu-augment (day-clear)", by_prefix("teacher_self_gpu_augment")))
        for s, label, _ in STUDENTS:
            if s == sup:
                names = [n for n in by_prefix(f"student_{sup}_{slug(label)}") if n in results]
                rows.append((f"{title} student: {label}", names))
    return [(label, names) for label, names in rows if names]


def markdown_table(results, seeds):
    """One markdown table: per condition abs_rel, rmse, a1; several seeds: mean (low-high)."""
    head = "| row | seeds | " + " | ".join(f"{g} {m}" for g in GROUPS for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (2 + len(GROUPS) * len(METRICS))]
    for label, names in table_rows(results, seeds):
        stats = summarize_seeds(results, names)
        cells = []
        for g in GROUPS:
            for m in METRICS:
                mean, low, high = stats[g][m]
                fmt = "{:.2f}" if m == "rmse" else "{:.3f}"
                cells.append(fmt.format(mean) + (f" ({fmt.format(low)}-{fmt.format(high)})" if len(names) > 1 else ""))
        lines.append(f"| {label} | {len(names)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims(results, seeds):
    """The paper's claims as {statement: pass}: teacher quality, student vs teacher beyond seed spread,
    and the direction of each Table 3 ablation."""
    ok, pair = {}, lambda sup: ([f"teacher_{sup}_s{s}" for s in range(seeds)],
                                [f"student_{sup}_{slug(STUDENTS[[x[0] for x in STUDENTS].index(sup)][1])}_s{s}"
                                 for s in range(seeds)])
    ab = lambda name, g: results[name][g]["abs_rel"]
    teachers, _ = pair("self")
    ok["self-supervised teacher well under 0.30 abs_rel by day (every seed)"] = all(ab(t, "day-clear") < 0.25
                                                                                     for t in teachers)
    ok["self-supervised teacher worse at night than by day (every seed)"] = all(
        ab(t, "night") > ab(t, "day-clear") for t in teachers)
    for sup in ("self", "lidar"):
        teachers, students = pair(sup)
        for g in ("night", "day-rain"):
            gains = [ab(t, g) - ab(s, g) for t, s in zip(teachers, students)]
            spread = max(np.ptp([ab(t, g) for t in teachers]), np.ptp([ab(s, g) for s in students]))
            ok[f"{sup} student beats its teacher in {g} by more than the seed spread (gain {np.mean(gains):.3f}, "
               f"spread {spread:.3f})"] = min(gains) > 0 and np.mean(gains) > spread
        worst = max(ab(s, "day-clear") - ab(t, "day-clear") for t, s in zip(teachers, students))
        ok[f"{sup} student within 0.01 abs_rel of its teacher by day (worst {worst:+.3f})"] = worst < 0.01
    main_self = f"student_self_{slug(STUDENTS[0][1])}_s0"
    for name, label in (("student_self_plain_distillation_s0", "teacher loss beats plain distillation"),
                        ("student_self_printed_inequality_s0", "teacher loss beats the printed inequality"),
                        ("student_self_no_translations_s0", "translations beat none (self-supervised)"),
                        ("student_self_teacher_loss_semantic_s0", "semantic loss helps (self-supervised)")):
        if name in results:
            better = ab(name, "night") > ab(main_self, "night") if "semantic" not in name else \
                ab(name, "night") < ab(main_self, "night")
            ok[f"Table 3: {label} at night (seed 0)"] = better
    for name, label in (("student_lidar_no_translations_s0", "translations beat none (LiDAR)"),
                        ("student_lidar_plain_distillation_semantic_s0", "semantic loss helps (LiDAR)")):
        if name in results:
            main_lidar = "student_lidar_plain_distillation_s0"
            ok[f"Table 3: {label} at night (seed 0)"] = (ab(name, "night") > ab(main_lidar, "night")) == (
                "semantic" not in name)
    for sup, title in (("self", "self-supervised"), ("lidar", "LiDAR")):
        reference = f"student_{sup}_{slug(STUDENTS[[x[0] for x in STUDENTS].index(sup)][1])}"
        name = f"{reference}_classic_translations_s0"
        if name in results:  # GDT (here: rendered) against translations that only darken or haze
            ok[f"Table 3: realistic translations beat classic ones ({title}) at night (seed 0)"] = (
                ab(name, "night") > ab(f"{reference}_s0", "night"))
    return {claim: bool(passed) for claim, passed in ok.items()}


def bar_chart(results, seeds, path):
    """PNG: abs_rel per condition, teacher vs its main student, for both teachers; the whiskers span the seeds."""
    bars = [(sup, kind, names) for sup in ("self", "lidar") for kind, names in zip(("teacher", "student"), [
        [f"teacher_{sup}_s{s}" for s in range(seeds)],
        [f"student_{sup}_{slug(STUDENTS[[x[0] for x in STUDENTS].index(sup)][1])}_s{s}" for s in range(seeds)]])]
    colours = {("self", "teacher"): (120, 144, 180), ("self", "student"): (31, 78, 150),
               ("lidar", "teacher"): (230, 170, 110), ("lidar", "student"): (200, 100, 20)}
    W, H, left, top, bottom = 900, 480, 70, 50, 70
    stats = {(sup, kind): summarize_seeds(results, names) for sup, kind, names in bars}
    top_value = max(v[2] for s in stats.values() for g in GROUPS for v in [s[g]["abs_rel"]]) * 1.15
    image = Image.new("RGB", (W, H), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=14)
    y = lambda v: H - bottom - (H - bottom - top) * v / top_value
    for tick in np.arange(0, top_value, 0.05 if top_value < 0.6 else 0.1):
        draw.line([(left, y(tick)), (W - 10, y(tick))], fill=(225, 225, 225))
        draw.text((left - 8, y(tick)), f"{tick:.2f}", fill="black", font=font, anchor="rm")
    group_w = (W - left - 10) / len(GROUPS)
    bar_w = group_w * 0.8 / len(bars)
    for i, g in enumerate(GROUPS):
        x0 = left + i * group_w + group_w * 0.1
        for j, (sup, kind, _) in enumerate(bars):
            mean, low, high = stats[(sup, kind)][g]["abs_rel"]
            x = x0 + j * bar_w
            draw.rectangle([x + 2, y(mean), x + bar_w - 2, y(0)], fill=colours[(sup, kind)])
            if high > low:
                draw.line([(x + bar_w / 2, y(low)), (x + bar_w / 2, y(high))], fill="black", width=2)
            draw.text((x + bar_w / 2, y(high) - 3), f"{mean:.3f}", fill="black", font=font, anchor="mb")
        draw.text((x0 + group_w * 0.4, H - bottom + 12), g, fill="black", font=font, anchor="mt")
    draw.text((W / 2, 18), f"abs_rel on the synthetic val scenes (lower is better; whiskers: {seeds} seeds)",
              fill="black", font=font, anchor="mm")
    for j, (sup, kind, _) in enumerate(bars):
        x = left + j * 200
        draw.rectangle([x, H - 30, x + 14, H - 16], fill=colours[(sup, kind)])
        label = f"{'self-supervised' if sup == 'self' else 'LiDAR'} {kind}"
        draw.text((x + 20, H - 23), label, fill="black", font=font, anchor="lm")
    data.write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def corruption_pairs():
    """(supervision, teacher run, its main student run), seed 0: the nets stage 5 corrupts."""
    return [(sup, f"teacher_{sup}_s0", f"student_{sup}_{slug(STUDENTS[[s[0] for s in STUDENTS].index(sup)][1])}_s0")
            for sup in ("self", "lidar")]


def corruption_stage(out, size):
    """Stage 5: teacher and main student through evaluate.py --corruptions, the teacher as the student's baseline.
    Returns {run: its metrics.json}; writes the table and copies each student's plot (teacher dashed)."""
    world, reports = os.path.join(out, "world"), {}
    for sup, teacher, student in corruption_pairs():
        for name, baseline in ((teacher, None), (student, teacher)):
            ckpt = os.path.join(out, name, "ckpt.pt")
            if not os.path.isfile(ckpt) or not os.path.isdir(world):
                raise FileNotFoundError(f"{ckpt} or {world} missing: stage 5 needs a finished check in {out} (run "
                                        f"tools/learning_check.py --out {out} without --corruptions-only first)")
            folder = os.path.join(out, name, "eval_corruptions")
            argv = ["--ckpt", ckpt, "--data-root", world, "--size", size, "--workers", "0", "--corruptions",
                    *CORRUPTIONS, "--severities", *SEVERITIES, "--label", name, "--out", folder]
            if baseline:
                argv += ["--baseline-metrics", os.path.join(out, baseline, "eval_corruptions", "metrics.json")]
            with open(os.path.join(out, name, "eval_corruptions.log"), "w") as log, redirect_stdout(log), \
                    redirect_stderr(log):
                evaluate.main(argv)
            with open(os.path.join(folder, "metrics.json")) as f:
                reports[name] = json.load(f)
        shutil.copyfile(os.path.join(out, student, "eval_corruptions", "corruptions.png"),
                        os.path.join(out, f"learning_check_corruptions_{sup}.png"))
    return reports


def corruption_table(reports):
    """Markdown: per net abs_rel on clean frames and the mean over severities of each corruption (all val frames),
    RoboDepth's mRR and, for students, mCE and mRCE relative to their teacher."""
    head = ("| net | clean | " + " | ".join(CORRUPTIONS) + " | mean | mRR % | mCE % vs teacher | mRCE % vs teacher |")
    lines = [head, "|" + "---|" * (len(CORRUPTIONS) + 6)]
    for sup, teacher, student in corruption_pairs():
        for name in (teacher, student):
            r, mode = reports[name], reports[name]["robustness"]["mode"]
            means = [r["corruptions"][c]["mean"][mode]["all"]["abs_rel"] for c in CORRUPTIONS]
            score = r["robustness"]
            cells = [f"{r['summary'][mode]['all']['abs_rel']:.3f}", *(f"{m:.3f}" for m in means),
                     f"{np.mean(means):.3f}", f"{score['mrr']:.1f}",
                     f"{score['mce']:.1f}" if "mce" in score else "100 (baseline)",
                     f"{score['mrce']:.1f}" if "mrce" in score else "100 (baseline)"]
            title = f"{'self-supervised' if sup == 'self' else 'LiDAR'} {'teacher' if name == teacher else 'student'}"
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_corruption_report(out, reports):
    """learning_check_corruptions.md and .json: the table of stage 5, as measured."""
    table = corruption_table(reports)
    severities = ", ".join(SEVERITIES)
    note = (f"abs_rel on all val frames, each corruption the mean over severities {severities}; DEE, RR, CE, RCE as "
            f"RoboDepth defines them (docs/method.md §5), each student's CE and RCE relative to its own teacher "
            f"(below 100 %: the student is more robust).")
    data.write_atomic(os.path.join(out, "learning_check_corruptions.md"),
                      lambda tmp: tmp.write_text(table + "\n\n" + note + "\n"))
    summary = {name: {"summary": r["summary"], "robustness": r["robustness"],
                      "corruptions": {c: r["corruptions"][c] for c in CORRUPTIONS}} for name, r in reports.items()}
    data.write_atomic(os.path.join(out, "learning_check_corruptions.json"), lambda tmp: tmp.write_text(json.dumps(
        {"corruptions": CORRUPTIONS, "severities": SEVERITIES, "pairs": corruption_pairs(), "results": summary},
        indent=1)))
    return table


def run_corruption_stage(out, size, required=False):
    """Stage 5 with its report; without the optional corruption package an error when `required`, else a note."""
    try:
        import imagecorruptions  # noqa: F401
    except ImportError:
        if required:
            raise ImportError(f"--corruptions-only needs the imagecorruptions package: {evaluate.CORRUPTIONS_INSTALL}")
        print(f"stage 5 (corruptions) skipped: {evaluate.CORRUPTIONS_INSTALL} to run it")
        return None
    start = time.time()
    table = write_corruption_report(out, corruption_stage(out, size))
    print(f"\n{table}\n\nwrote {out}/learning_check_corruptions.md, .json and _self/_lidar.png in "
          f"{(time.time() - start) / 60:.1f} min")
    return table


def translation_sheet(world, gdt_rendered, gdt_classic, path, height=90):
    """PNG: a day training frame, its rendered and its classic night and rain versions, and a val frame
    of the world's own night and rain (what the students are tested on)."""
    target = data.list_images("nuscenes", world)[len(data.list_images("nuscenes", world)) // 2]
    index = data.NuScenesIndex(world, synthetic.VERSION)
    val = {c: index.sample_data[next(t for t, cond in index.split("val") if cond == c)]["filename"]
           for c in ("night-clear", "day-rain")}
    tiles = [("day (train)", os.path.join(world, target)),
             ("rendered night", os.path.join(gdt_rendered, "night", target)),
             ("classic night", os.path.join(gdt_classic, "night", target)),
             ("val night", os.path.join(world, val["night-clear"])),
             ("rendered rain", os.path.join(gdt_rendered, "rain", target)),
             ("classic rain", os.path.join(gdt_classic, "rain", target)),
             ("val rain", os.path.join(world, val["day-rain"]))]
    images = [Image.open(p).convert("RGB") for _, p in tiles]
    width = round(images[0].width * height / images[0].height)
    sheet = Image.new("RGB", (4 * width, 2 * (height + 18)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=12)
    for i, ((label, _), image) in enumerate(zip(tiles, images)):
        x, y = (i if i < 4 else i - 3) * width, 0 if i < 4 else height + 18
        sheet.paste(image.resize((width, height), Image.LANCZOS), (x, y + 18))
        draw.text((x + width / 2, y + 9), label, fill="black", font=font, anchor="mm")
    data.write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


def main(argv=None):
    p = data.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/check")
    p.add_argument("--size", default="90x160", type=lambda text: data.parse_size(text) and text,
                   help="loss / network resolution HxW (checked here, before the world is rendered)")
    p.add_argument("--teacher-steps", type=data.at_least(1), default=900)
    p.add_argument("--student-steps", type=data.at_least(1), default=300)
    p.add_argument("--seeds", type=data.at_least(1), default=2, help="seeds of each teacher and its main student")
    p.add_argument("--lr-pose", default="3e-3", help="the self-supervised teacher's pose-net learning rate")
    p.add_argument("--init-motion", default="0.7", help="the self-supervised pose net's starting forward motion (m)")
    p.add_argument("--rotation", default="euler", choices=["euler", "axis-angle"],
                   help="the self-supervised pose net's rotation (train_teacher.py --rotation; axis-angle: the "
                        "check before 2026-12-07)")
    p.add_argument("--scene-ends", default="md4all", choices=data.SCENE_ENDS,
                   help="train_*.py --scene-ends (keep: the check before 2026-12-07)")
    p.add_argument("--batch-size", type=data.at_least(1), default=4)
    p.add_argument("--jobs", type=data.at_least(1), default=2, help="training runs at once (one CPU core each)")
    p.add_argument("--corruptions-only", action="store_true",
                   help="run stage 5 (corruptions) alone on the finished check in --out (its world and checkpoints)")
    p.add_argument("--gpu-augment-teacher", action="store_true",
                   help="also train the self-supervised teachers with --gpu-augment (a row of their own; the other "
                        "rows are unchanged)")
    args = p.parse_args(argv)
    if args.corruptions_only:
        return run_corruption_stage(args.out, args.size, required=True) is not None
    start = time.time()
    world = os.path.join(args.out, "world")
    gdt_rendered, gdt_classic = os.path.join(args.out, "gdt_rendered"), os.path.join(args.out, "gdt_classic")
    synthetic.render_world(world, workers=args.jobs, progress=True, **WORLD)
    synthetic.render_translations(world, gdt_rendered, ("night", "rain"), workers=args.jobs, progress=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "classic_weather.py"), "--dataset", "nuscenes",
                    "--data-root", world, "--out", gdt_classic, "--cond", "night", "rain"], check=True)
    translation_sheet(world, gdt_rendered, gdt_classic, os.path.join(args.out, "translations.png"))
    runs = plan_runs(args, world, gdt_rendered, gdt_classic)
    timings = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        timings.update(pool.map(lambda r: train(r, args.out), [r for r in runs if r[4] is None]))
        for seed in range(args.seeds):
            for sup in ("self", "lidar"):
                folder = os.path.join(args.out, f"teacher_{sup}_s{seed}", "encoder")
                if not os.path.isdir(folder):
                    export_encoder(os.path.join(args.out, f"teacher_{sup}_s{seed}", "ckpt.pt"), folder)
        timings.update(pool.map(lambda r: train(r, args.out), [r for r in runs if r[4] is not None]))

    torch.manual_seed(0)
    untrained = DepthNet("tiny", init="none", net_size=None, init_depth=6)
    save_checkpoint(os.path.join(args.out, "untrained", "ckpt.pt"), model=untrained.state_dict(),
                    config=untrained.config_dict())
    results = {}
    for name in ["untrained"] + [r[0] for r in runs]:
        with open(os.path.join(args.out, name, "eval.log"), "w") as log, redirect_stdout(log), redirect_stderr(log):
            results[name] = evaluate.main(["--ckpt", os.path.join(args.out, name, "ckpt.pt"), "--data-root", world,
                                           "--size", args.size, "--workers", "0",
                                           "--out", os.path.join(args.out, name, "eval")])
    table, ok = markdown_table(results, args.seeds), claims(results, args.seeds)
    print("\n" + table + "\n")
    for claim, passed in ok.items():
        print(f"{'PASS' if passed else 'FAIL'}  {claim}")
    wall = time.time() - start
    data.write_atomic(os.path.join(args.out, "learning_check.md"), lambda tmp: tmp.write_text(table + "\n\n" + "\n".join(
        f"- {'PASS' if v else 'FAIL'}: {k}" for k, v in ok.items()) + "\n"))
    data.write_atomic(os.path.join(args.out, "learning_check.json"), lambda tmp: tmp.write_text(json.dumps(
        {"args": vars(args), "world": WORLD, "translations": {"rendered": gdt_rendered, "classic": gdt_classic},
         "commands": {r[0]: [r[1], *r[2]] for r in runs},
         "results": results, "claims": ok, "train_seconds": timings, "wall_seconds": wall}, indent=1)))
    bar_chart(results, args.seeds, os.path.join(args.out, "learning_check.png"))
    print(f"wrote {args.out}/learning_check.md, .json and .png and translations.png in {wall / 60:.1f} min")
    run_corruption_stage(args.out, args.size)
    return all(ok.values())


if __name__ == "__main__":
    raise SystemExit(0 if data.run_cli(main, "learning_check.py") else 1)
