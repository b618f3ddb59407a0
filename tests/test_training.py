"""training.py: the loop's contract holds for any loss module, not only the trainers' own."""
import argparse
import json
import os
import signal

import pytest
import torch

import data
import training


class Points(torch.utils.data.Dataset):
    """y = 3x - 1 at 16 fixed points."""

    def __init__(self):
        self.x = torch.linspace(-1, 1, 16)[:, None]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, pair):
        _, i = pair  # the loop fetches (epoch, index): an item may draw its epoch's augmentation
        return dict(x=self.x[i], y=3 * self.x[i] - 1)


class LineFit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.line = torch.nn.Linear(1, 1)

    def forward(self, batch):
        error = ((self.line(batch["x"]) - batch["y"]) ** 2).mean()
        return error, {"error": error}


def loop_args(out, **changes):
    args = dict(out=str(out), batch_size=4, epochs=1, steps=48, seed=0, workers=0, dtype="fp32", compile=False,
                log_every=12, ckpt_every=24, val_every=None, no_val=True, resume=False, stop_at=None,
                min_depth=0.1, max_depth=80.0, weight_decay=0.0, lr_line=0.2, given=[])
    return argparse.Namespace(**{**args, **changes})


def run(args):
    torch.manual_seed(0)
    fit = LineFit()
    groups = [dict(name="lr_line", params=list(fit.parameters()), lr=args.lr_line)]
    step = training.train(args, fit, groups, {"model": fit.line}, {"config": {"kind": "line"}}, Points())
    return step, fit


def test_the_loop_trains_checkpoints_and_resumes_any_loss_module(tmp_path):
    step, straight = run(loop_args(tmp_path / "straight"))
    assert step == 48 and straight.line.weight.item() == pytest.approx(3, abs=0.3)  # it learnt the line
    ckpt = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    assert ckpt["config"] == {"kind": "line"} and ckpt["step"] == 48 and set(ckpt["model"]) == {"weight", "bias"}
    assert [g["name"] for g in ckpt["optimizer"]["param_groups"]] == ["lr_line"]

    run(loop_args(tmp_path / "split", stop_at=20))  # interrupted after step 20, saved there
    step, resumed = run(loop_args(tmp_path / "split", resume=True))
    assert step == 48 and torch.equal(resumed.line.weight, straight.line.weight)  # exactly the same run
    records = [json.loads(line) for line in open(tmp_path / "split" / "log.jsonl")]
    assert [r["step"] for r in records if "loss" in r] == [12, 20, 24, 36, 48]


def test_a_learning_rate_flag_given_on_resume_replaces_its_group_by_name(tmp_path, capsys):
    run(loop_args(tmp_path, stop_at=24))
    run(loop_args(tmp_path, resume=True, lr_line=0.01, given=["lr_line"]))
    assert "--lr-line 0.2 -> 0.01" in capsys.readouterr().out
    group = torch.load(tmp_path / "ckpt.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == pytest.approx(0.01) and group["lr"] == pytest.approx(0.0)  # decayed to the end


def test_a_checkpoint_whose_groups_have_no_names_still_resumes(tmp_path):
    run(loop_args(tmp_path, stop_at=24))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    for group in ckpt["optimizer"]["param_groups"]:
        del group["name"]  # as written before the groups carried their flag's name
    torch.save(ckpt, tmp_path / "ckpt.pt")
    step, _ = run(loop_args(tmp_path, resume=True, lr_line=0.01, given=["lr_line"]))
    group = torch.load(tmp_path / "ckpt.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert step == 48 and group["name"] == "lr_line" and group["initial_lr"] == pytest.approx(0.01)


class CtrlCAt(LineFit):
    """LineFit whose `at`-th forward pass is interrupted by Ctrl-C (SIGINT to this process)."""

    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(batch)


def test_ctrl_c_finishes_the_step_saves_it_says_how_to_resume_and_the_resume_is_exact(tmp_path, capsys):
    _, straight = run(loop_args(tmp_path / "straight"))
    capsys.readouterr()
    args = loop_args(tmp_path / "cut")
    torch.manual_seed(0)
    fit = CtrlCAt(at=17)
    groups = [dict(name="lr_line", params=list(fit.parameters()), lr=args.lr_line)]
    with pytest.raises(SystemExit) as e:
        data.run_cli(lambda: training.train(args, fit, groups, {"model": fit.line}, {"config": {}}, Points()),
                     "train_teacher.py")
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert e.value.code == 130 and last.startswith("train_teacher.py: interrupted at step 17;") and "--resume" in last
    assert torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=False)["step"] == 17  # saved on the way out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    step, resumed = run(loop_args(tmp_path / "cut", resume=True))
    assert step == 48 and torch.equal(resumed.line.weight, straight.line.weight)


class Files:
    """A dataset as the data check sees it: only its files()."""

    def __init__(self, *paths):
        self.paths = list(paths)

    def files(self):
        return self.paths


def test_each_torchrun_rank_checks_a_strided_share_of_the_train_and_val_files_once(monkeypatch, capsys):
    checked = {}
    monkeypatch.setattr(data, "require_intact", lambda paths, **kw: checked.setdefault(rank, paths) and "checked")
    train, val = Files("a", "c", "e", "b"), Files("d", "c")  # c is read by both: checked once
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        training.check_data(argparse.Namespace(no_check_data=False), train, None, val)
    assert checked == {0: ["a", "c", "e"], 1: ["b", "d"]}
    out = capsys.readouterr().out
    assert out.count("checked") == 1 and "rank 0's share of 5" in out  # only rank 0 prints
    checked.clear()
    training.check_data(argparse.Namespace(no_check_data=True), train, val)
    assert checked == {}
