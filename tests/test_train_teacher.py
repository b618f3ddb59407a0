"""train_teacher.py: both supervision modes learn, checkpoints resume exactly, DDP works, NaN stops."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import data
import train_teacher
import training
from losses import reprojection_loss, smoothness_loss
from model import DepthNet, PoseNet, load_depth_net, load_pose_net, pose_to_matrix, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(world, out, *extra):
    argv = ["--tiny", "--data-root", world, "--size", "56x96", "--batch-size", "2", "--workers", "0",
            "--out", str(out), "--no-val", "--lr-encoder", "1e-4", "--lr-decoder", "1e-4", *extra]
    return train_teacher.main(argv)


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("supervision,lr", [("self", "1e-4"), ("lidar", "1e-2")])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_world, tmp_path, supervision, lr):
    self_supervised = supervision == "self"
    dataset = data.NuScenesDepth(tiny_world, size=(56, 96), frames=(-1, 0, 1) if self_supervised else (0,),
                                 with_lidar=not self_supervised)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])

    def loss_of(net, pose):
        module = train_teacher.SelfSupervisedLoss(net, pose) if self_supervised else train_teacher.LidarLoss(net)
        with torch.no_grad():
            return module(batch)[0].item()
    torch.manual_seed(0)  # main() seeds the same way before building the nets
    before = loss_of(DepthNet("tiny", "none", net_size=None), PoseNet("tiny", init=None))
    run(tiny_world, tmp_path, "--supervision", supervision, "--steps", "8", "--log-every", "4", "--no-color-jitter",
        "--no-flip", "--lr-encoder", lr, "--lr-decoder", lr, "--lr-pose", "1e-3")
    ckpt = str(tmp_path / "ckpt.pt")
    after = loss_of(load_depth_net(ckpt), load_pose_net(ckpt) if self_supervised else None)
    assert after < 0.999 * before, (before, after)
    assert len(losses(tmp_path)) == 2
    assert (torch.load(ckpt, weights_only=False)["pose"] is None) == (not self_supervised)


@pytest.mark.parametrize("supervision", ["self", "lidar"])
def test_each_learning_rate_flag_reaches_its_own_parameter_group(tiny_world, tmp_path, monkeypatch, supervision):
    seen = {}
    monkeypatch.setattr(train_teacher, "train", lambda args, loss, groups, modules, *rest, **kw: seen.update(
        groups=groups, modules=modules))
    run(tiny_world, tmp_path, "--supervision", supervision, "--lr-encoder", "1e-5", "--lr-decoder", "2e-5",
        "--lr-pose", "3e-5")
    rates = [(g["name"], g["lr"]) for g in seen["groups"]]
    if supervision == "lidar":  # no pose net to train
        assert rates == [("lr_encoder", 1e-5), ("lr_decoder", 2e-5)] and "pose" not in seen["modules"]
        return
    assert rates == [("lr_encoder", 1e-5), ("lr_decoder", 2e-5), ("lr_pose", 3e-5)]
    pose_ids = {id(p) for p in seen["modules"]["pose"].parameters()}
    assert {id(p) for p in seen["groups"][2]["params"]} == pose_ids
    assert not pose_ids & {id(p) for g in seen["groups"][:2] for p in g["params"]}


def test_interrupted_and_resumed_run_gives_identical_weights(tiny_world, tmp_path):
    run(tiny_world, tmp_path / "straight", "--steps", "4")
    run(tiny_world, tmp_path / "split", "--steps", "4", "--stop-at", "2")
    assert torch.load(tmp_path / "split" / "ckpt.pt", weights_only=False)["step"] == 2
    run(tiny_world, tmp_path / "split", "--steps", "4", "--resume")
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=False)
    assert b["step"] == 4
    for part in ("model", "pose"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k


def test_validation_writes_metrics_and_the_best_checkpoint(tiny_world, tmp_path):
    argv = ["--tiny", "--data-root", tiny_world, "--size", "56x96", "--batch-size", "2", "--workers", "0",
            "--out", str(tmp_path), "--steps", "2", "--val-every", "2"]
    train_teacher.main(argv)
    with open(tmp_path / "log.jsonl") as f:
        val = [r["val"] for r in map(json.loads, f) if "val" in r]
    assert len(val) == 1 and {"all", "day-clear", "night", "day-rain"} <= set(val[0])
    assert val[0]["night"]["count"] == 4 and 0 < val[0]["night"]["abs_rel"]
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["best"] == pytest.approx(val[0]["night"]["abs_rel"])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_world, tmp_path, monkeypatch,
                                                                                capsys):
    run(tiny_world, tmp_path, "--steps", "2")
    good = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    forward = train_teacher.SelfSupervisedLoss.forward

    def poisoned(self, batch):
        loss, terms = forward(self, batch)
        return loss * float("nan"), terms
    monkeypatch.setattr(train_teacher.SelfSupervisedLoss, "forward", poisoned)
    with pytest.raises(SystemExit) as stop:
        data.run_cli(lambda: run(tiny_world, tmp_path, "--steps", "4", "--resume"), "train_teacher.py")
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert stop.value.code == 1 and last.startswith("train_teacher.py: error: loss became NaN/inf before step 4")
    kept = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert kept["step"] == 2 and all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])


def test_resume_without_a_checkpoint_names_the_file(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt.pt"):
        run(tiny_world, tmp_path, "--steps", "2", "--resume")


def test_two_process_torchrun_validates_across_ranks_stops_on_ctrl_c_together_and_plain_python_loads_it(
        tiny_world, tmp_path):
    # Ctrl-C in a terminal reaches torchrun, which forwards it to each rank: both must stop after the same step
    # (training.agree_to_stop), rank 0 saving it, and tear down without hanging (the DDP teardown once
    # deadlocked in one run of three; training.py releases DDP before the process group since). Bounded.
    import signal
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_teacher.py"), "--tiny", "--data-root", tiny_world, "--size", "56x96",
           "--batch-size", "1", "--workers", "0", "--fast-jitter", "--out", str(out), "--steps", "100000",
           "--val-every", "2", "--log-every", "1"]  # --fast-jitter: the exact hue step's tables cost each rank 1 s
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = out / "log.jsonl"
    try:
        while proc.poll() is None and not (log.exists() and '"step": 3,' in log.read_text()):
            time.sleep(0.05)  # until step 3 is logged: validation (step 2) is behind it
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to its foreground process group
        _, err = proc.communicate(timeout=900)  # generous: the whole stop takes a few seconds
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    said = [line for line in err.splitlines() if line.startswith("train_teacher.py: ")]
    assert len(said) == 1 and said[0].startswith("train_teacher.py: interrupted at step "), err[-3000:]
    step = int(said[0].split("interrupted at step ")[1].split(";")[0])
    assert 'File "' + os.path.join(ROOT, "train_teacher.py") not in err and "SIGKILL" not in err, err[-3000:]
    ckpt = str(out / "ckpt.pt")
    assert torch.load(ckpt, weights_only=False)["step"] == step >= 3
    net, pose = load_depth_net(ckpt), load_pose_net(ckpt)
    with torch.no_grad():
        x = torch.rand(1, 3, 56, 96)
        assert net(x)["depth"].shape == (1, 1, 56, 96) and pose(x, x).shape == (1, 4, 4)
    with open(out / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, step + 1))
    assert next(r for r in records if "val" in r)["val"]["all"]["count"] == 12  # both ranks' shards, summed


def test_robotcar_self_supervised_run_trains_and_validates_day_and_night(tmp_path):
    from worlds import make_robotcar  # the fake md4all RobotCar tree (tests/worlds.py)
    root = make_robotcar(tmp_path / "robotcar")
    train_teacher.main(["--tiny", "--dataset", "robotcar", "--data-root", root, "--size", "24x40",
                        "--batch-size", "1", "--workers", "0", "--out", str(tmp_path / "run"), "--steps", "2",
                        "--val-every", "2"])
    with open(tmp_path / "run" / "log.jsonl") as f:
        val = [r["val"] for r in map(json.loads, f) if "val" in r][0]
    assert val["day-clear"]["count"] == 1 and val["night"]["count"] == 1
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["config"]["max_depth"] == 50.0


class RecordingPose(torch.nn.Module):
    """A pose net that returns a fixed motion and remembers which frames it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.T = pose_to_matrix(torch.tensor([[0.01, 0.02, -0.03]]), torch.tensor([[0.1, -0.2, 0.8]]))

    def forward(self, a, b):
        self.calls.append((a, b))
        return self.T.expand(len(a), 4, 4)


def frames_batch():
    torch.manual_seed(0)
    b = {k: torch.rand(1, 3, 8, 12) for k in ("color", "prev", "next", "color_aug", "prev_aug", "next_aug")}
    return b


@pytest.mark.parametrize("order", ["md4all", "temporal"])
def test_pose_pairs_follow_the_pose_order_and_use_the_jittered_frames(order):
    pose, batch = RecordingPose(), frames_batch()
    poses = train_teacher.SelfSupervisedLoss(torch.nn.Identity(), pose, pose_order=order).poses(batch)
    aug = lambda k: batch[k + "_aug"]  # noqa: E731  md4all: the pose net sees the colour-jittered frames
    if order == "md4all":  # (target, source) for both neighbours, as md4all's default
        expected_calls = [(aug("color"), aug("prev")), (aug("color"), aug("next"))]
        assert torch.equal(poses[0], pose.T)
    else:  # time order, prev inverted: T_{t->prev} = (T_{prev->t})^-1
        expected_calls = [(aug("prev"), aug("color")), (aug("color"), aug("next"))]
        assert torch.allclose(poses[0] @ pose.T, torch.eye(4)[None], atol=1e-6)
    assert all(a is x and b is y for (a, b), (x, y) in zip(pose.calls, expected_calls))
    assert torch.equal(poses[1], pose.T)


class DepthMap(torch.nn.Module):
    """A depth net stand-in: one fixed depth map, at the size the loss asks for."""

    def __init__(self, depth, min_depth=0.1, max_depth=80.0):
        super().__init__()
        self.depth, self.min_depth, self.max_depth = depth, min_depth, max_depth

    def forward(self, images, out_size="input"):
        assert tuple(out_size) == tuple(self.depth.shape[-2:])
        return {"depth": self.depth, "scaled_disp": 1 / self.depth}


class ForwardBySource(torch.nn.Module):
    """A pose net stand-in: straight-ahead motion of twice the source frame's mean brightness, in metres."""

    def forward(self, target, source):
        return forward_motion(2 * source.mean((1, 2, 3)))


def forward_motion(metres):
    T = torch.eye(4).repeat(len(metres), 1, 1)
    T[:, 2, 3] = metres
    return T


def test_self_supervised_loss_weights_its_terms_and_holds_each_motion_to_its_own_distance():
    g = torch.Generator().manual_seed(0)
    color = torch.rand(1, 3, 6, 8, generator=g)
    prev = color.clone()
    prev[..., :4] = torch.rand(1, 3, 6, 4, generator=g)  # the right half static: auto-masking zeroes it
    batch = dict(color=color, color_aug=color, input=color.flip(-1),  # the depth net's input is not the loss frame
                 prev=prev, next=torch.rand(1, 3, 6, 8, generator=g),
                 prev_aug=torch.full((1, 3, 6, 8), 0.5), next_aug=torch.full((1, 3, 6, 8), 0.8),
                 K=torch.tensor([[[5.0, 0, 3.5], [0, 5.0, 2.5], [0, 0, 1]]]),
                 dist_prev=torch.tensor([1.5]), dist_next=torch.tensor([4.0]))
    depth = 2 + torch.rand(1, 1, 6, 8, generator=g)
    loss, terms = train_teacher.SelfSupervisedLoss(DepthMap(depth), ForwardBySource())(batch)
    # predicted motions 1.0 m (prev) and 1.6 m (next) against 1.5 m and 4 m travelled
    assert terms["velocity"].item() == pytest.approx((0.5 + 2.4) / 2)
    poses = [forward_motion(torch.tensor([1.0])), forward_motion(torch.tensor([1.6]))]
    reprojection = reprojection_loss(color, [prev, batch["next"]], depth, poses, batch["K"])[0].mean().item()
    smooth = smoothness_loss(1 / depth, color).item()
    assert 0 < reprojection and terms["reprojection"].item() == pytest.approx(reprojection, rel=1e-5)
    assert terms["smoothness"].item() == pytest.approx(smooth, rel=1e-5)
    assert loss.item() == pytest.approx(reprojection + 1e-3 * smooth + 0.02 * 1.45, rel=1e-5)


def test_lidar_loss_scores_only_lidar_inside_the_nets_depth_range():
    depth = torch.full((1, 1, 2, 2), 10.0)
    lidar = torch.tensor([[[[20.0, 60.0], [10.0, 0.0]]]])  # 60 m lies beyond this net's 40 m
    loss, terms = train_teacher.LidarLoss(DepthMap(depth, max_depth=40.0))({"input": torch.rand(1, 3, 2, 2),
                                                                          "lidar": lidar})
    l2 = math.log(2)  # d = log(10 / 20) and 0
    assert loss.item() == pytest.approx(10 * math.sqrt(l2 ** 2 / 2 - 0.85 * (l2 / 2) ** 2), rel=1e-5)


def test_teacher_defaults_are_md4alls_loss_weights_and_the_papers_rates(tiny_world, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(train_teacher, "train", lambda args, loss, groups, *rest, **kw: seen.update(
        loss=loss, groups=groups))
    train_teacher.main(["--tiny", "--data-root", tiny_world, "--out", str(tmp_path), "--no-val", "--workers", "0"])
    assert (seen["loss"].w_smooth, seen["loss"].w_velocity, seen["loss"].pose_order) == (1e-3, 0.02, "md4all")
    assert [g["lr"] for g in seen["groups"]] == [5e-6, 5e-5, 1e-4]


def test_smoothness_gets_the_scaled_disparity(tiny_world, monkeypatch):
    seen = {}

    def spy(disp, image):
        seen["disp"] = disp
        return disp.mean() * 0
    monkeypatch.setattr(train_teacher, "smoothness_loss", spy)
    dataset = data.NuScenesDepth(tiny_world, size=(56, 96), frames=(-1, 0, 1))
    batch = torch.utils.data.default_collate([dataset[0]])
    torch.manual_seed(0)
    net = DepthNet("tiny", "none", net_size=None, init_depth=20.0)
    train_teacher.SelfSupervisedLoss(net, PoseNet("tiny", init=None))(batch)
    out = net(batch["input"], out_size=(56, 96))
    assert torch.allclose(seen["disp"], out["scaled_disp"])  # md4all's 1/depth, not the sigmoid output
    assert torch.allclose(seen["disp"], 1 / out["depth"])


def test_rerun_into_a_finished_run_is_refused_unless_resume_or_overwrite(tiny_world, tmp_path):
    run(tiny_world, tmp_path, "--steps", "2", "--log-every", "1")
    with pytest.raises(ValueError, match=rf"{tmp_path}.*step 2.*--resume.*--overwrite"):
        run(tiny_world, tmp_path, "--steps", "1")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 2 and len(losses(tmp_path)) == 2
    run(tiny_world, tmp_path, "--steps", "1", "--overwrite")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 1 and len(losses(tmp_path)) == 1


def test_out_inside_the_data_root_is_refused(tiny_world):
    with pytest.raises(ValueError, match="inside --data-root"):
        run(tiny_world, os.path.join(tiny_world, "runs"), "--steps", "1")


def test_learning_rates_given_on_resume_replace_the_checkpoints(tiny_world, tmp_path):
    run(tiny_world, tmp_path, "--steps", "4", "--stop-at", "2")
    run(tiny_world, tmp_path, "--steps", "4", "--stop-at", "3", "--resume")  # no flag: the checkpoint's rate
    groups = torch.load(tmp_path / "ckpt.pt", weights_only=False)["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == pytest.approx(1e-4)
    run(tiny_world, tmp_path, "--steps", "4", "--resume", "--lr-encoder", "1e-6", "--lr-pose=2e-6")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert [g["initial_lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([1e-6, 1e-4, 2e-6])
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)  # linear decay reached its end
    with open(tmp_path / "log.jsonl") as f:
        changes = [r["lr_changed"] for r in map(json.loads, f) if r.get("lr_changed")]
    assert changes == [{"lr_encoder": {"from": 1e-4, "to": 1e-6}, "lr_pose": {"from": 1e-4, "to": 2e-6}}]


def test_resume_from_an_earlier_checkpoint_keeps_one_log_record_per_step(tiny_world, tmp_path):
    run(tiny_world, tmp_path, "--steps", "4", "--stop-at", "2", "--log-every", "1")
    early = (tmp_path / "ckpt.pt").read_bytes()
    run(tiny_world, tmp_path, "--steps", "4", "--resume", "--log-every", "1")
    (tmp_path / "ckpt.pt").write_bytes(early)  # e.g. the last checkpoint of a crashed machine was older
    run(tiny_world, tmp_path, "--steps", "4", "--resume", "--log-every", "1")
    with open(tmp_path / "log.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_user_errors_are_one_line_without_a_traceback(tiny_world, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        data.run_cli(lambda: run(str(tmp_path / "nowhere"), tmp_path / "out", "--steps", "1"),
                              "train_teacher.py")
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("train_teacher.py: error: ") and "nowhere" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--steps", "-1"), ("--size", "0x160"),
                                        ("--ckpt-every", "0"), ("--log-every", "0"), ("--val-every", "0"),
                                        ("--workers", "-1")])
def test_non_positive_sizes_are_argparse_errors(tiny_world, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        run(tiny_world, tmp_path, flag, value)
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("flags,named", [(["--lr-encoder", "-1"], "--lr-encoder -1"),
                                         (["--lr-pose", "nan"], "--lr-pose nan"),
                                         (["--w-smooth", "-0.1"], "--w-smooth"),
                                         (["--min-depth", "10", "--max-depth", "1"], "0 < min < max"),
                                         (["--min-depth", "0"], "0 < min < max"),
                                         (["--size", "4x4"], "--size 4x4: each side must be at least 14"),
                                         (["--resume", "--overwrite"], "give one of them"),
                                         (["--net-size", "100x100"], "--tiny builds a net"),
                                         (["--encoder", "tiny", "--init", "none", "--net-size", "100x100"],
                                          "multiples of 14")])
def test_settings_that_cannot_work_are_refused_before_anything_is_read(tiny_world, tmp_path, capsys, flags, named):
    argv = ["--data-root", tiny_world, "--size", "56x96", "--out", str(tmp_path / "run"), *flags]
    with pytest.raises(SystemExit) as e:
        train_teacher.main((["--tiny"] if "--encoder" not in flags else []) + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and named in err, err
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.parametrize("flags", [["--pose-order", "md4all"], ["--pose-order", "temporal", "--supervision", "lidar"]])
def test_init_motion_needs_self_supervision_in_time_order(tiny_world, tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as e:
        run(tiny_world, tmp_path, "--steps", "1", "--init-motion", "0.7", *flags)
    assert e.value.code == 2 and "--init-motion" in capsys.readouterr().err


def test_init_motion_sets_the_first_step_s_forward_motion(tiny_world, tmp_path):
    run(tiny_world, tmp_path, "--steps", "1", "--init-motion", "0.7", "--pose-order", "temporal", "--lr-pose", "0")
    pose = load_pose_net(str(tmp_path / "ckpt.pt"))
    assert float(pose.decoder[-1].bias[5]) == pytest.approx(-70.0)


def test_training_ends_with_where_the_checkpoint_and_log_are(tiny_world, tmp_path, capsys):
    run(tiny_world, tmp_path, "--steps", "1")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert str(tmp_path / "ckpt.pt") in last and str(tmp_path / "log.jsonl") in last


def test_persistent_workers_give_the_same_weights_as_none_across_epochs(tiny_world, tmp_path):
    steps_per_epoch = len(data.NuScenesDepth(tiny_world, size=(56, 96), frames=(-1, 0, 1))) // 2
    steps = str(2 * steps_per_epoch + 1)  # into the third epoch: each epoch must draw its own augmentation
    run(tiny_world, tmp_path / "w0", "--steps", steps)
    run(tiny_world, tmp_path / "w2", "--steps", steps, "--workers", "2")
    a = torch.load(tmp_path / "w0" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "w2" / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def broken_copy(tiny_world, tmp_path, which):
    """A copy of the world with one file cut in half: the previous frame of the item the first step draws (the
    trainer's sampler, seed 0), or the LiDAR scan of a validation frame. Returns (world, the broken file)."""
    world = str(tmp_path / "world")
    shutil.copytree(tiny_world, world)
    data.load_index.cache_clear()
    if which == "prev frame":
        train = data.NuScenesDepth(world, frames=(-1, 0, 1))
        first = next(iter(torch.utils.data.DistributedSampler(train, num_replicas=1, rank=0, seed=0)))
        path = os.path.join(world, train.index.neighbour(train.items[first][0], -1)["filename"])
    else:
        val = data.NuScenesDepth(world, split="val")
        path = os.path.join(world, val.index.lidar_record(val.items[0][0])["filename"])
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:len(raw) // 2 + 1])  # + 1: also cut inside a 20-byte LiDAR point
    return world, path


@pytest.mark.parametrize("which", ["prev frame", "val LiDAR scan"])
def test_a_broken_file_stops_the_run_before_step_1_in_one_line_naming_it(tiny_world, tmp_path, capsys, which):
    world, broken = broken_copy(tiny_world, tmp_path, which)
    out = tmp_path / "out"
    argv = ["--tiny", "--data-root", world, "--size", "56x96", "--workers", "0", "--out", str(out), "--steps", "2"]
    with pytest.raises(SystemExit) as e:
        data.run_cli(lambda: train_teacher.main(argv), "train_teacher.py")
    err = capsys.readouterr().err
    error = err.strip().splitlines()[-1]  # after the check's progress bar
    assert e.value.code == 1 and "Traceback" not in err, err
    assert error.startswith("train_teacher.py: error: 1 of ") and broken in error and "--no-check-data" in error
    assert not (out / "ckpt.pt").exists() and not (out / "log.jsonl").exists()


def test_no_check_data_reads_nothing_ahead_and_the_broken_frame_fails_when_drawn(tiny_world, tmp_path, monkeypatch,
                                                                                capsys):
    world, broken = broken_copy(tiny_world, tmp_path, "prev frame")
    monkeypatch.setattr(data, "check_files", lambda *a, **k: pytest.fail("--no-check-data still checked"))
    with pytest.raises(ValueError, match=rf"image unreadable: {re.escape(broken)}"):  # at step 1, as before
        run(world, tmp_path / "out", "--steps", "2", "--no-check-data")
    assert "checked" not in capsys.readouterr().out


def test_the_check_prints_what_it_read_and_how_long_it_took(tiny_world, tmp_path, capsys):
    run(tiny_world, tmp_path, "--steps", "1")
    files = len(data.NuScenesDepth(tiny_world, frames=(-1, 0, 1)).files())
    assert re.search(rf"^checked {files} files in \d+\.\d s; --no-check-data skips this$", capsys.readouterr().out,
                     re.M)


def test_depth_anything_start_calibrates_on_plain_frames_spread_over_the_scenes_and_resumes_its_map(tiny_world,
                                                                                                     tmp_path, capsys):
    class Recorder:  # stands in for the net: what calibrate_head is given
        head_log = None

        def calibrate_head(self, images, depth, batch_size):
            self.images, self.head_log = images, dict(offset=0.5, eps=1e-6, shift=-2.0)
            return dict(line="median 10.00 m, near (10th percentile) 4.00 m, far (90th) 30.00 m")

    parser = training.add_common_args(data.ArgumentParser())
    args = training.resolve_args(parser.parse_args(["--data-root", tiny_world, "--out", str(tmp_path), "--size", "56x96",
                                                    "--net-size", "56x98", "--init", "depth-anything-v2-small",
                                                    "--workers", "0"]))
    args.resume = False
    plain = training.make_dataset(args, "train")  # 2 day-clear scenes of 4 key frames, scene ends replaced
    net = Recorder()
    train_teacher.calibrate_pretrained_head(net, args, frames=4)
    picks = [round(i) for i in np.linspace(0, len(plain) - 1, 4)]
    assert torch.equal(net.images, torch.stack([plain[i]["input"] for i in picks]))  # no jitter, no flip
    scenes = {plain.index.sample[plain.index.sample_data[plain.items[i][0]]["sample_token"]]["scene_token"]
              for i in picks}
    assert len(scenes) == 2 and "calibrated on 4 un-augmented training frames" in capsys.readouterr().out
    save_checkpoint(tmp_path / "ckpt.pt", config=dict(head_log=net.head_log))
    args.resume, resumed = True, Recorder()
    train_teacher.calibrate_pretrained_head(resumed, args)
    assert resumed.head_log == net.head_log and not hasattr(resumed, "images")


def test_gpu_augment_trains_the_same_weights_as_the_default_path(tiny_world, tmp_path):
    """The workers only decode and the loop makes the same tensors on the device: the same run, bit for bit."""
    for name, extra in (("default", []), ("device", ["--gpu-augment"])):
        run(tiny_world, tmp_path / name, "--steps", "1", "--seed", "1", "--no-check-data", *extra)
    default, device = (torch.load(tmp_path / name / "ckpt.pt", weights_only=False) for name in ("default", "device"))
    assert all(torch.equal(default["model"][k], device["model"][k]) for k in default["model"])
    with open(tmp_path / "device" / "log.jsonl") as f:
        assert all(0 <= r["data_wait"] <= 1 for r in map(json.loads, f))


def test_gpu_augment_and_fast_jitter_exclude_each_other(tiny_world, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tiny_world, tmp_path, "--gpu-augment", "--fast-jitter")
    assert "--gpu-augment" in capsys.readouterr().err
