"""learning_check.py: the runs it plans, the frozen encoder it exports, and how it judges and reports results."""
import argparse
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import learning_check as lc
import synthetic
from model import DepthNet, DinoFeatures, save_checkpoint


def fake_results(teacher, student, seeds=2, **extra):
    """Results of every run of the check: {group: abs_rel} for teachers and main students per seed (seed s adds
    0.01 s), every other run at the first student's numbers unless given in `extra`."""
    metrics = lambda abs_rel: {g: {"abs_rel": abs_rel[g], "rmse": 10 * abs_rel[g], "a1": 1 - abs_rel[g]}
                               for g in lc.GROUPS}
    shift = lambda values, s: {g: v + 0.01 * s for g, v in values.items()}
    args = argparse.Namespace(out="o", size="90x160", batch_size=4, seeds=seeds, lr_pose="1e-3",
                              init_motion="0.7", teacher_steps=10, student_steps=10, rotation="euler",
                              scene_ends="md4all")
    results = {"untrained": metrics(dict.fromkeys(lc.GROUPS, 0.6))}
    for name, *_ in lc.plan_runs(args, "w", "g", "c"):
        seed = int(name[-1])
        results[name] = metrics(shift(teacher if name.startswith("teacher") else extra.get(name, student), seed))
    return results


def test_plan_runs_teachers_first_seeds_for_the_main_rows_and_each_students_teacher():
    args = argparse.Namespace(out="o", size="90x160", batch_size=4, seeds=2, lr_pose="1e-3", teacher_steps=600,
                              student_steps=300, init_motion="0.5", rotation="axis-angle", scene_ends="keep")
    runs = lc.plan_runs(args, "w", "g", "c")
    names = [r[0] for r in runs]
    assert names[:4] == ["teacher_self_s0", "teacher_self_s1", "teacher_lidar_s0", "teacher_lidar_s1"]
    assert all(r[4] is None for r in runs[:4]) and all(r[4] in names[:4] for r in runs[4:])
    assert {"student_self_teacher_loss_s1", "student_lidar_plain_distillation_s1"} < set(names)
    assert len(runs) == 4 + 7 + 5 and len(set(names)) == len(names)
    flags = {r[0]: r[2] for r in runs}
    teacher = flags["teacher_self_s1"]
    assert teacher[teacher.index("--pose-order") + 1] == "temporal" and teacher[teacher.index("--seed") + 1] == "1"
    assert teacher[teacher.index("--init-motion") + 1] == "0.5" and teacher[teacher.index("--rotation") + 1] == "axis-angle"
    assert all(r[2][r[2].index("--scene-ends") + 1] == "keep" for r in runs)  # the check as it ran before both
    assert "--pose-order" not in flags["teacher_lidar_s0"] and "--init-motion" not in flags["teacher_lidar_s0"]
    sem = flags["student_self_teacher_loss_semantic_s0"]
    assert sem[sem.index("--sem-weights") + 1] == os.path.join("o", "teacher_self_s0", "encoder")
    assert sem[sem.index("--w-sem") + 1] == "1" and sem.count("--w-sem") == 1
    plain = flags["student_self_plain_distillation_s0"]
    assert plain[plain.index("--teacher-mask") + 1] == "none" and plain[plain.index("--w-sem") + 1] == "0"
    lidar = flags["student_lidar_no_translations_s0"]
    assert lidar[lidar.index("--p-day") + 1] == "1" and lidar[lidar.index("--teacher-mask") + 1] == "none"
    gdt_root = lambda name: flags[name][flags[name].index("--gdt-root") + 1]
    assert gdt_root("student_self_teacher_loss_s1") == gdt_root("student_lidar_plain_distillation_s0") == "g"
    classic = flags["student_self_teacher_loss_classic_translations_s0"]  # the main row's flags, classic folder
    assert gdt_root("student_self_teacher_loss_classic_translations_s0") == "c"
    assert classic[classic.index("--teacher-mask") + 1] == "reliable" and classic[classic.index("--w-sem") + 1] == "0"
    assert gdt_root("student_lidar_plain_distillation_classic_translations_s0") == "c"
    assert "student_self_teacher_loss_classic_translations_s1" not in names  # extra rows run one seed


def test_gpu_augment_teacher_adds_the_self_supervised_teachers_with_the_flag_and_one_row_leaving_the_rest():
    args = argparse.Namespace(out="o", size="90x160", batch_size=4, seeds=2, lr_pose="1e-3", teacher_steps=600,
                              student_steps=300, init_motion="0.5", rotation="euler", scene_ends="md4all")
    default = lc.plan_runs(args, "w", "g", "c")
    args.gpu_augment_teacher = True
    runs = lc.plan_runs(args, "w", "g", "c")
    extra = {r[0]: r for r in runs if r not in default}
    assert set(extra) == {"teacher_self_gpu_augment_s0", "teacher_self_gpu_augment_s1"}
    assert len(runs) == len(default) + 2
    plain = {r[0]: r for r in default}["teacher_self_s1"]
    assert extra["teacher_self_gpu_augment_s1"][2] == plain[2] + ["--gpu-augment"]
    results = fake_results({g: 0.2 for g in lc.GROUPS}, {g: 0.2 for g in lc.GROUPS})
    table = lc.markdown_table(results, 2)
    assert "--gpu-augment" not in table
    results.update({n: results[n.replace("_gpu_augment", "")] for n in extra})
    rows = lc.markdown_table(results, 2).splitlines()
    assert [r for r in rows if r not in table.splitlines()] == [r for r in rows if "--gpu-augment" in r] != []


def test_exported_encoder_gives_the_depth_nets_own_tokens(tmp_path):
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=None).eval()
    save_checkpoint(str(tmp_path / "ckpt.pt"), model=net.state_dict(), config=net.config_dict())
    folder = lc.export_encoder(str(tmp_path / "ckpt.pt"), str(tmp_path / "encoder"))
    assert os.path.isfile(os.path.join(folder, "config.json")) and not os.path.exists(folder + ".tmp")
    images = torch.rand(2, 3, 42, 70)
    with torch.no_grad():
        tokens = net(images)["tokens"]
    frozen = DinoFeatures("tiny", folder, None)(images)
    assert tokens.shape == frozen.shape and torch.allclose(tokens, frozen, atol=1e-5)  # semantic loss 0 at start


def test_claims_pass_when_the_student_gains_more_than_the_seed_spread():
    teacher = {"day-clear": 0.20, "night": 0.35, "day-rain": 0.30}
    student = {"day-clear": 0.205, "night": 0.30, "day-rain": 0.26}
    ok = lc.claims(fake_results(teacher, student), seeds=2)
    main = [k for k in ok if not k.startswith("Table 3")]
    assert len(main) == 2 + 2 * 3 and all(ok[k] for k in main)


def test_claims_fail_on_a_gain_within_seed_noise_a_day_loss_or_a_poor_teacher():
    teacher = {"day-clear": 0.20, "night": 0.35, "day-rain": 0.30}
    small_gain = dict(teacher, night=0.345)  # 0.005 better; seeds differ by 0.01
    ok = lc.claims(fake_results(teacher, small_gain), seeds=2)
    assert not ok[next(k for k in ok if k.startswith("self student beats its teacher in night"))]
    assert not ok[next(k for k in ok if k.startswith("self student beats its teacher in day-rain"))]
    day_loss = dict(teacher, **{"day-clear": 0.22, "night": 0.3})
    ok = lc.claims(fake_results(teacher, day_loss), seeds=2)
    assert not ok[next(k for k in ok if k.startswith("self student within 0.01"))]
    ok = lc.claims(fake_results(dict(teacher, **{"day-clear": 0.4}), teacher), seeds=2)
    assert not ok[next(k for k in ok if "well under" in k)] and not ok[next(k for k in ok if "worse at night" in k)]


def test_table_3_directions_compare_each_ablation_with_the_main_student():
    teacher = {"day-clear": 0.20, "night": 0.35, "day-rain": 0.30}
    student = {"day-clear": 0.20, "night": 0.30, "day-rain": 0.26}
    worse, better = dict(student, night=0.33), dict(student, night=0.29)
    ok = lc.claims(fake_results(teacher, student, student_self_plain_distillation_s0=worse,
                                student_self_teacher_loss_semantic_s0=better,
                                student_self_no_translations_s0=better), seeds=2)
    assert ok["Table 3: teacher loss beats plain distillation at night (seed 0)"]
    assert ok["Table 3: semantic loss helps (self-supervised) at night (seed 0)"]
    assert not ok["Table 3: translations beat none (self-supervised) at night (seed 0)"]
    ok = lc.claims(fake_results(teacher, student, student_self_teacher_loss_classic_translations_s0=worse,
                                student_lidar_plain_distillation_classic_translations_s0=better), seeds=2)
    assert ok["Table 3: realistic translations beat classic ones (self-supervised) at night (seed 0)"]
    assert not ok["Table 3: realistic translations beat classic ones (LiDAR) at night (seed 0)"]


def test_markdown_table_and_bar_chart(tmp_path):
    teacher = {"day-clear": 0.20, "night": 0.35, "day-rain": 0.30}
    results = fake_results(teacher, dict(teacher, night=0.3))
    table = lc.markdown_table(results, seeds=2).splitlines()
    assert len(table) == 2 + 1 + 2 + 10  # header, rule, untrained, teachers, students
    assert "| self-supervised student: teacher loss, classic translations | 1 |" in table[9]
    assert table[3].startswith("| self-supervised teacher (day-clear) | 2 | 0.205 (0.200-0.210) |")
    assert "| self-supervised student: plain distillation | 1 | 0.200 |" in table[5]
    path = lc.bar_chart(results, 2, str(tmp_path / "chart.png"))
    with Image.open(path) as image:
        assert image.size == (900, 480) and len(image.getcolors(1 << 16)) > 20  # bars, text, whiskers


def test_translation_sheet_shows_the_day_frame_its_translations_and_the_val_conditions(tmp_path):
    world = synthetic.render_world(str(tmp_path / "w"), train_day=1, train_night=0, train_rain=0, val_day=0,
                                   val_night=1, val_rain=1, keyframes=2, size=(36, 64))
    rendered = synthetic.render_translations(world, str(tmp_path / "rendered"))
    classic = str(tmp_path / "classic")
    shutil.copytree(os.path.join(rendered, "night"), os.path.join(classic, "night"))
    shutil.copytree(os.path.join(rendered, "rain"), os.path.join(classic, "rain"))
    path = lc.translation_sheet(world, rendered, classic, str(tmp_path / "sheet.png"), height=36)
    with Image.open(path) as image:
        sheet = np.asarray(image.convert("L"), np.float32)
    assert sheet.shape == (2 * (36 + 18), 4 * 64) and not os.path.exists(path + ".tmp.png")
    tile = lambda row, col: sheet[row * 54 + 18:(row + 1) * 54, col * 64:(col + 1) * 64]
    assert tile(0, 1).mean() < 0.5 * tile(0, 0).mean() and tile(0, 3).mean() < 0.5 * tile(0, 0).mean()  # nights
    assert np.array_equal(tile(0, 1), tile(0, 2)) and tile(1, 0).mean() == 255  # the copy; no tile under day


def fake_corruption_report(clean, abs_rel, baseline=False):
    """A metrics.json of an evaluate.py --corruptions run: abs_rel per corruption at every severity."""
    summary = lambda a: {"plain": {"all": {"abs_rel": a, "a1": 1 - a, "count": 3}}}  # noqa: E731
    corruptions = {c: {**{s: summary(abs_rel) for s in lc.SEVERITIES}, "mean": summary(abs_rel)}
                   for c in lc.CORRUPTIONS}
    scores = {"mode": "plain", "mrr": 90.0, **({"mce": 80.0, "mrce": 70.0} if baseline else {})}
    return {"summary": summary(clean), "corruptions": corruptions, "robustness": scores}


def test_corruption_stage_corrupts_each_teacher_and_its_main_student_and_tables_them_apart(tmp_path):
    args = argparse.Namespace(out="o", size="90x160", batch_size=4, seeds=1, lr_pose="1e-3", init_motion="0.7",
                              teacher_steps=10, student_steps=10, rotation="euler", scene_ends="md4all")
    names = {r[0] for r in lc.plan_runs(args, "w", "g", "c")}
    pairs = lc.corruption_pairs()
    assert pairs == [("self", "teacher_self_s0", "student_self_teacher_loss_s0"),
                     ("lidar", "teacher_lidar_s0", "student_lidar_plain_distillation_s0")]
    assert {n for _, t, s in pairs for n in (t, s)} <= names
    reports = {t: fake_corruption_report(0.2, 0.3) for _, t, _ in pairs}
    reports.update({s: fake_corruption_report(0.1, 0.15, baseline=True) for _, _, s in pairs})
    table = lc.write_corruption_report(str(tmp_path), reports)
    lines = table.splitlines()
    assert lines[0].startswith("| net | clean | gaussian_noise |") and len(lines) == 2 + 4
    assert lines[2] == "| self-supervised teacher | 0.200 | " + "0.300 | " * 6 + "0.300 | 90.0 | 100 (baseline) | " \
                       "100 (baseline) |"
    assert lines[3].endswith("| 0.150 | 90.0 | 80.0 | 70.0 |")
    assert (tmp_path / "learning_check_corruptions.md").read_text().startswith(table)
    assert not (tmp_path / "learning_check.md").exists()  # the check's own table is another file


def test_corruption_stage_alone_needs_a_finished_check(tmp_path):
    pytest.importorskip("imagecorruptions", reason="optional: pip install imagecorruptions-imaug")
    with pytest.raises(FileNotFoundError, match="needs a finished check"):
        lc.corruption_stage(str(tmp_path), "90x160")
