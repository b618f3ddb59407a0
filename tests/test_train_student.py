"""train_student.py: the student objective, the frozen parts, the day / translated swap."""
import json
import math
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


def test_student_flags_reach_their_parameter_groups_and_the_day_share(tiny_world, teacher_ckpt, gdt_root, tmp_path,
                                                                      monkeypatch):
    seen = {}
    monkeypatch.setattr(train_student, "train", lambda args, loss, groups, modules, extra, dataset, *rest, **kw:
                        seen.update(groups=groups, modules=modules, dataset=dataset))
    train_student.main(student_args(tiny_world, teacher_ckpt, gdt_root, tmp_path, "--lr-encoder", "1e-5",
                                    "--lr-decoder", "2e-5", "--p-day", "0.25", "--w-sem", "0"))
    assert [(g["name"], g["lr"]) for g in seen["groups"]] == [("lr_encoder", 1e-5), ("lr_decoder", 2e-5)]
    encoder_ids = {id(p) for p in seen["modules"]["model"].model.backbone.parameters()}
    assert {id(p) for p in seen["groups"][0]["params"]} == encoder_ids
    dataset = seen["dataset"]  # the student sees the day frame with probability --p-day
    assert dataset.p_day == 0.25 and dataset.gdt_conds == ("night", "rain") and dataset.day_input


def test_student_defaults_are_the_reliable_mask_unit_semantic_weight_and_two_thirds_day(
        tiny_world, teacher_ckpt, gdt_root, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(train_student, "train", lambda args, loss, groups, modules, extra, dataset, *rest, **kw:
                        seen.update(loss=loss, dataset=dataset))
    train_student.main(student_args(tiny_world, teacher_ckpt, gdt_root, tmp_path))
    assert (seen["loss"].mask, seen["loss"].w_sem) == ("reliable", 1.0)
    assert seen["dataset"].p_day == pytest.approx(2 / 3)  # docs/method.md §4: |C| / (|C| + 1) with night, rain


class FlatDepth(torch.nn.Module):
    """A depth net stand-in: the same depth everywhere at the size asked for, and given patch tokens."""

    def __init__(self, depth, tokens=None):
        super().__init__()
        self.depth, self.tokens = depth, tokens

    def forward(self, images, out_size="input"):
        depth = torch.full((len(images), 1, *out_size), self.depth)
        return {"depth": depth, "scaled_disp": 1 / depth, "tokens": self.tokens}


class Fixed(torch.nn.Module):
    """A pose net (or DINOv2) stand-in returning one fixed tensor, recording the frames it was given."""

    def __init__(self, value):
        super().__init__()
        self.value, self.seen = value, []

    def forward(self, *frames):
        self.seen.append(frames)
        return self.value


def test_teacher_loss_distils_where_the_teachers_depth_reprojects_better_plus_weighted_semantic_loss():
    from losses import reprojection_loss
    h, w = 6, 12
    color = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    source = torch.cat([color[..., -2:], color[..., :-2]], -1)  # the scene 2 px to the right
    T = torch.eye(4)[None].clone()
    T[0, 0, 3] = 0.4  # with fx 10: a shift of 4 / depth pixels, so depth 2 m explains the source exactly
    K = torch.tensor([[[10.0, 0, (w - 1) / 2], [0, 10.0, (h - 1) / 2], [0, 0, 1]]])
    day = color.flip(-1)  # stands for the clean day frame at network size
    batch = {"color": color, "input": color, "day_input": day, "prev": source, "next": source, "K": K}
    student_tokens = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]]])
    dino_tokens = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    semantic = 1 - (1 + 2 / math.sqrt(2)) / 3
    teacher, student = FlatDepth(2.0), FlatDepth(4.0, student_tokens)
    pe_teacher, pe_student = (reprojection_loss(color, [source, source], torch.full((1, 1, h, w), d), [T, T], K,
                                                automask=False)[0] for d in (2.0, 4.0))
    better, worse = (pe_teacher < pe_student).float().mean().item(), (pe_teacher > pe_student).float().mean().item()
    assert better > 0.5 > worse  # the teacher's depth is right on most pixels
    for mask, share in (("reliable", better), ("printed", worse)):
        dino = Fixed(dino_tokens)
        loss, terms = StudentLoss(student, teacher, Fixed(T), dino, mask, w_sem=0.5)(batch)
        saw_day = [frames[0] is day for frames in dino.seen] == [True]
        assert saw_day, "DINOv2 anchors the student to the day frame, not to its (translated) input"
        # the distillation |1/4 - 1/2| / (1/4) is 1 everywhere: the teacher loss is the masked share
        assert terms["teacher"].item() == pytest.approx(share), mask
        assert terms["semantic"].item() == pytest.approx(semantic, rel=1e-6)
        assert loss.item() == pytest.approx(share + 0.5 * semantic, rel=1e-6)


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
    broken = str(tmp_path / "gdt" / "rain" / data.list_images("nuscenes", tiny_world)[1])  # [0] starts a scene
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) // 2)
    monkeypatch.setattr(train_student, "load_depth_net", lambda *a: pytest.fail("the teacher was loaded"))
    with pytest.raises(ValueError, match=rf"^1 of \d+ data files are broken: image unreadable: {re.escape(broken)}.*"
                                         r"delete it and run gdt\.py again"):
        train_student.main(student_args(tiny_world, teacher_ckpt, str(tmp_path / "gdt"), tmp_path / "s",
                                        "--steps", "2"))
    assert not (tmp_path / "s").exists()
