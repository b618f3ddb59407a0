"""training.py: the loop's contract holds for any loss module, not only the trainers' own."""
import argparse
import json

import pytest
import torch

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


def test_depth_param_groups_give_the_encoder_its_rate_and_the_dpt_decoder_its_own():
    from model import DepthNet
    net = DepthNet("tiny", init="none", net_size=None)
    encoder, decoder = training.depth_param_groups(net, lr_encoder=5e-6, lr_decoder=5e-5)
    assert (encoder["name"], encoder["lr"]) == ("lr_encoder", 5e-6)  # the pretrained DINOv2 moves 10x slower
    assert (decoder["name"], decoder["lr"]) == ("lr_decoder", 5e-5)
    name_of = {id(p): n for n, p in net.named_parameters()}
    names = lambda group: [name_of[id(p)] for p in group["params"]]  # noqa: E731
    part = lambda n: n.split(".")[1]  # noqa: E731  model.<backbone|neck|head>.…
    assert {part(n) for n in names(encoder)} == {"backbone"}
    assert {part(n) for n in names(decoder)} == {"neck", "head"}
    grouped = names(encoder) + names(decoder)
    assert len(grouped) == len(set(grouped))  # AdamW refuses a parameter in two groups
    assert {n for n, p in net.named_parameters() if p.requires_grad} <= set(grouped)  # none left untrained
