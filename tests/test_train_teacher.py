"""train_teacher.py: both supervision modes learn, checkpoints resume exactly, DDP works, NaN stops."""
import json
import os
import subprocess
import sys

import pytest
import torch

import data
import train_teacher
from model import DepthNet, PoseNet, load_depth_net, load_pose_net

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


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_world, tmp_path, monkeypatch):
    run(tiny_world, tmp_path, "--steps", "2")
    good = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    forward = train_teacher.SelfSupervisedLoss.forward

    def poisoned(self, batch):
        loss, terms = forward(self, batch)
        return loss * float("nan"), terms
    monkeypatch.setattr(train_teacher.SelfSupervisedLoss, "forward", poisoned)
    with pytest.raises(SystemExit, match="NaN"):
        run(tiny_world, tmp_path, "--steps", "4", "--resume")
    kept = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert kept["step"] == 2 and all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])


def test_resume_without_a_checkpoint_names_the_file(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt.pt"):
        run(tiny_world, tmp_path, "--steps", "2", "--resume")


def test_two_process_torchrun_gives_a_checkpoint_plain_python_loads(tiny_world, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_teacher.py"), "--tiny", "--data-root", tiny_world, "--size", "56x96",
           "--batch-size", "1", "--workers", "0", "--out", str(tmp_path), "--steps", "2", "--val-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    net, pose = load_depth_net(str(tmp_path / "ckpt.pt")), load_pose_net(str(tmp_path / "ckpt.pt"))
    with torch.no_grad():
        x = torch.rand(1, 3, 56, 96)
        assert net(x)["depth"].shape == (1, 1, 56, 96) and pose(x, x).shape == (1, 4, 4)
    with open(tmp_path / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[-1]["val"]["all"]["count"] == 12  # both ranks' shards, reduced as sums and counts


def test_robotcar_self_supervised_run_trains_and_validates_day_and_night(tmp_path):
    from test_data import make_robotcar  # the fake md4all RobotCar tree of the data tests
    root = make_robotcar(tmp_path / "robotcar")
    train_teacher.main(["--tiny", "--dataset", "robotcar", "--data-root", root, "--size", "24x40",
                        "--batch-size", "1", "--workers", "0", "--out", str(tmp_path / "run"), "--steps", "2",
                        "--val-every", "2"])
    with open(tmp_path / "run" / "log.jsonl") as f:
        val = [r["val"] for r in map(json.loads, f) if "val" in r][0]
    assert val["day-clear"]["count"] == 1 and val["night"]["count"] == 1
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["config"]["max_depth"] == 50.0
