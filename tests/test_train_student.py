"""train_student.py: the student objective, the frozen parts, the day / translated swap."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data
import train_student
import model
import train_teacher
from model import DepthNet, DinoFeatures, PoseNet
from train_student import StudentLoss


@pytest.fixture(scope="module")
def teacher_ckpt(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_teacher.main(["--tiny", "--data-root", tiny_world, "--size", "56x96", "--batch-size", "2",
                        "--workers", "0", "--out", str(out), "--steps", "2", "--no-val"])
    return str(out / "ckpt.pt")


@pytest.fixture(scope="module")
def gdt_root(tiny_world, tmp_path_factory):
    """A stand-in translation folder: each training frame darkened (night) or greyed (rain)."""
    root = tmp_path_factory.mktemp("gdt")
    for rel in data.list_images("nuscenes", tiny_world):
        image = np.asarray(Image.open(os.path.join(tiny_world, rel)), dtype=np.float32)
        for cond, out in (("night", image * 0.3), ("rain", image * 0.5 + 60)):
            path = root / cond / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(path)
    return str(root)


def student_args(world, teacher, gdt, out, *extra):
    return ["--tiny", "--data-root", world, "--size", "56x96", "--batch-size", "2", "--workers", "0",
            "--teacher", teacher, "--gdt-root", gdt, "--out", str(out), "--no-val", *extra]


@pytest.mark.parametrize("extra", [[], ["--teacher-mask", "none", "--w-sem", "0"], ["--teacher-mask", "printed"]])
def test_student_trains_with_each_ablation(tiny_world, teacher_ckpt, gdt_root, tmp_path, extra):
    train_student.main(student_args(tiny_world, teacher_ckpt, gdt_root, tmp_path, "--steps", "2",
                                    "--log-every", "1", *extra))
    with open(tmp_path / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)
    assert ("semantic" in records[0]) == ("--w-sem" not in extra)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["pose"] is None


def test_student_gradients_reach_neither_teacher_nor_dinov2(tiny_world):
    torch.manual_seed(0)
    student, teacher = DepthNet("tiny", init="none", net_size=None), DepthNet("tiny", init="none", net_size=None)
    pose, dino = PoseNet("tiny", init=None), DinoFeatures("tiny", net_size=None)
    loss_module = StudentLoss(student, teacher, pose, dino, "reliable", 1.0)
    dataset = data.NuScenesDepth(tiny_world, size=(56, 96), frames=(-1, 0, 1))
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    loss, terms = loss_module(batch)
    loss.backward()
    assert terms["semantic"] > 0 and terms["teacher"] >= 0
    assert all(p.grad is None for m in (teacher, pose, dino) for p in m.parameters())
    assert student.model.backbone.encoder.layer[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_day_translated_swap_follows_p_day_and_the_teacher_always_sees_day(tiny_world, gdt_root):
    day = data.NuScenesDepth(tiny_world, size=(28, 48))
    mixed = data.NuScenesDepth(tiny_world, size=(28, 48), gdt_root=gdt_root, gdt_conds=("night", "rain"),
                               p_day=2 / 3, seed=3)
    draws = []
    for epoch in range(25):
        mixed.set_epoch(epoch)
        for i in range(len(mixed)):
            item = mixed[i]
            assert torch.equal(item["color"], day[i]["color"])  # what the teacher gets
            if item["input_cond"] == "day":
                assert torch.equal(item["input"], item["color"])
            else:
                assert not torch.equal(item["input"], item["color"])
            draws.append(item["input_cond"])
    n = len(draws)
    share = draws.count("day") / n
    # binomial standard error at n ~ 200: 0.033; 4 sigma bounds
    assert abs(share - 2 / 3) < 4 * (2 / 9 / n) ** 0.5, share
    assert draws.count("night") > 0.1 * n and draws.count("rain") > 0.1 * n  # 1/6 each expected


def test_missing_translations_fail_before_training_with_the_command_that_makes_them(tiny_world, teacher_ckpt,
                                                                                    tmp_path):
    (tmp_path / "gdt" / "night").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="gdt.py"):
        train_student.main(["--tiny", "--data-root", tiny_world, "--size", "28x48", "--teacher", teacher_ckpt,
                            "--gdt-root", str(tmp_path / "gdt"), "--conds", "night", "--out", str(tmp_path / "s")])
    assert not (tmp_path / "s" / "ckpt.pt").exists()


def test_conds_are_parsed_with_spaces_and_checked(tmp_path):
    assert train_student.parse_conds("night, rain", "gdt") == ("night", "rain")
    # gdt.py's shape: space-separated words, commas inside them allowed, duplicates dropped
    assert train_student.parse_conds(["night", "rain,night"], "gdt") == ("night", "rain")
    with pytest.raises(ValueError, match=r"unknown condition\(s\) 'dusk'"):  # the trainer's own parser takes the list
        train_student.main(["--tiny", "--data-root", str(tmp_path / "d"), "--teacher", "t.pt", "--gdt-root", "g",
                            "--out", str(tmp_path / "o"), "--cond", "night", "dusk"])
    assert train_student.parse_conds(None, "gdt") == ("night", "rain")
    assert train_student.parse_conds(None, None) == ()
    with pytest.raises(ValueError, match="unknown condition.*'dusk'"):
        train_student.parse_conds("night,dusk", "gdt")
    with pytest.raises(ValueError, match="--conds night rain needs --gdt-root"):
        train_student.parse_conds("night,rain", None)


def test_a_student_checkpoint_is_refused_as_teacher(tiny_world, teacher_ckpt, gdt_root, tmp_path):
    train_student.main(student_args(tiny_world, teacher_ckpt, gdt_root, tmp_path / "s1", "--steps", "1",
                                    "--teacher-mask", "none", "--w-sem", "0"))
    with pytest.raises(ValueError, match="is a student checkpoint"):
        train_student.main(student_args(tiny_world, str(tmp_path / "s1" / "ckpt.pt"), gdt_root, tmp_path / "s2",
                                        "--steps", "1", "--teacher-mask", "none"))


def test_resuming_a_student_in_a_teachers_folder_says_so(tiny_world, teacher_ckpt, gdt_root, tmp_path):
    import shutil
    shutil.copy(teacher_ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="is a teacher \\(self-supervised\\) checkpoint.*train_student.py"):
        train_student.main(student_args(tiny_world, teacher_ckpt, gdt_root, tmp_path, "--steps", "2", "--resume"))


def test_semantic_loss_uses_the_given_frozen_encoder_with_tiny_nets(tiny_world, teacher_ckpt, gdt_root, tmp_path,
                                                                     monkeypatch):
    from transformers import Dinov2Model
    from model import dinov2_config
    torch.manual_seed(5)
    Dinov2Model(dinov2_config("tiny")).save_pretrained(tmp_path / "dino")
    built = []
    monkeypatch.setattr(train_student, "DinoFeatures", lambda *a, **k: built.append(a) or DinoFeatures(*a, **k))
    train_student.main(student_args(tiny_world, teacher_ckpt, gdt_root, tmp_path / "s", "--steps", "1",
                                    "--sem-weights", str(tmp_path / "dino")))
    assert built and built[0][1] == str(tmp_path / "dino")


def test_teacher_and_dinov2_see_the_clean_day_frame_at_network_size(tiny_world, gdt_root):
    dataset = data.NuScenesDepth(tiny_world, size=(28, 48), net_size=(42, 70), gdt_root=gdt_root,
                                 gdt_conds=("night",), p_day=0.0, day_input=True, color_jitter=True)
    day = data.NuScenesDepth(tiny_world, size=(28, 48), net_size=(42, 70))
    item = dataset[0]
    assert item["input_cond"] == "night" and item["day_input"].shape == (3, 42, 70)
    assert torch.equal(item["day_input"], day[0]["input"])  # un-jittered, untranslated, one resize
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, images, out_size=None):
            seen.append(images)
            return DepthNet("tiny", init="none", net_size=None).eval()(images, out_size=out_size)
    batch = torch.utils.data.default_collate([item])
    StudentLoss(DepthNet("tiny", init="none", net_size=None), Spy(), None, None, "none", 0.0)(batch)
    assert torch.equal(seen[0], batch["day_input"])


@pytest.mark.parametrize("order", ["md4all", "temporal"])
def test_the_reliability_mask_feeds_the_teacher_pose_net_in_its_own_order(tiny_world, order, monkeypatch):
    calls = []
    monkeypatch.setattr(train_student, "predict_poses",
                        lambda net, t, p, n, o: calls.append(o) or model.predict_poses(net, t, p, n, o))
    dataset = data.NuScenesDepth(tiny_world, size=(28, 48), frames=(-1, 0, 1))
    batch = torch.utils.data.default_collate([dataset[0]])
    torch.manual_seed(0)
    nets = [DepthNet("tiny", init="none", net_size=None) for _ in range(2)]
    StudentLoss(*nets, PoseNet("tiny", init=None), None, "reliable", 0.0, pose_order=order)(batch)
    assert calls == [order]


@pytest.mark.parametrize("flags,named", [(["--p-day", "1.5"], "--p-day 1.5: a probability"),
                                         (["--w-sem", "-1"], "--w-sem -1")])
def test_student_settings_that_cannot_work_are_refused_at_start(tiny_world, teacher_ckpt, tmp_path, capsys, flags,
                                                                named):
    with pytest.raises(SystemExit) as e:
        train_student.main(["--tiny", "--data-root", tiny_world, "--size", "28x48", "--teacher", teacher_ckpt,
                            "--out", str(tmp_path / "s"), *flags])
    assert e.value.code == 2 and named in capsys.readouterr().err


def test_a_broken_translation_stops_the_student_before_step_1_naming_it(tiny_world, teacher_ckpt, gdt_root, tmp_path,
                                                                         monkeypatch):
    shutil.copytree(gdt_root, tmp_path / "gdt")
    broken = str(tmp_path / "gdt" / "rain" / data.list_images("nuscenes", tiny_world)[0])
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) // 2)
    monkeypatch.setattr(train_student, "load_depth_net", lambda *a: pytest.fail("the teacher was loaded"))
    with pytest.raises(ValueError, match=rf"^1 of \d+ data files are broken: image unreadable: {re.escape(broken)}.*"
                                         r"delete it and run gdt\.py again"):
        train_student.main(student_args(tiny_world, teacher_ckpt, str(tmp_path / "gdt"), tmp_path / "s",
                                        "--steps", "2"))
    assert not (tmp_path / "s").exists()
