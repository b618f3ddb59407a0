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


def test_waiting_for_counts_only_the_time_batches_take_to_arrive(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])

    def slow_batches():  # each batch takes 2 s to arrive
        for i in range(3):
            clock[0] += 2.0
            yield i
    waited = [0.0]
    for _ in training.waiting_for(slow_batches(), waited):
        clock[0] += 5.0  # the step itself: not waiting
    assert waited == [6.0] and clock[0] == 21.0


def test_every_log_record_says_the_share_of_time_spent_waiting_for_data(tmp_path):
    run(loop_args(tmp_path))
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert len(records) == 4 and all(0 <= r["data_wait"] <= 1 for r in records)


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


class SignalAt(LineFit):
    """LineFit whose `at`-th forward pass gets `sig` (Ctrl-C's SIGINT, or a scheduler's SIGTERM) sent to this
    process."""

    def __init__(self, at, sig):
        super().__init__()
        self.calls, self.at, self.sig = 0, at, sig

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return super().forward(batch)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_finishes_the_step_saves_it_says_how_to_resume_and_the_resume_is_exact(tmp_path, capsys, sig):
    _, straight = run(loop_args(tmp_path / "straight"))
    capsys.readouterr()
    args = loop_args(tmp_path / "cut")
    torch.manual_seed(0)
    fit = SignalAt(at=17, sig=sig)
    groups = [dict(name="lr_line", params=list(fit.parameters()), lr=args.lr_line)]
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        data.run_cli(lambda: training.train(args, fit, groups, {"model": fit.line}, {"config": {}}, Points()),
                     "train_teacher.py")
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert e.value.code == 130 and last.startswith("train_teacher.py: interrupted at step 17;") and "--resume" in last
    assert torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=False)["step"] == 17  # saved on the way out
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back
    step, resumed = run(loop_args(tmp_path / "cut", resume=True))
    assert step == 48 and torch.equal(resumed.line.weight, straight.line.weight)


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


def test_learning_rates_decay_linearly_to_zero_over_the_run(tmp_path):
    run(loop_args(tmp_path))  # 48 steps from lr 0.2, a record every 12
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    # the rate after step s is 0.2 (1 - s / 48)
    assert [(r["step"], r["lr"]) for r in records] == [(12, pytest.approx(0.15)), (24, pytest.approx(0.1)),
                                                     (36, pytest.approx(0.05)), (48, pytest.approx(0.0, abs=1e-12))]


def test_command_line_defaults_are_the_papers_settings():
    """docs/method.md §2, §4: AdamW for 20 epochs at batch 4, encoder 5e-6, decoder 5e-5, 518x784 net input."""
    parser = training.add_common_args(argparse.ArgumentParser())
    args = parser.parse_args(["--data-root", "data", "--out", "run"])
    assert (args.epochs, args.batch_size, args.lr_encoder, args.lr_decoder) == (20, 4, 5e-6, 5e-5)
    assert args.net_size == (518, 784) and args.min_depth == 0.1
    args.workers = 0  # resolve_args would ask the machine
    nuscenes = training.resolve_args(args)
    assert (nuscenes.size, nuscenes.max_depth) == ((320, 576), 80.0)
    robotcar = training.resolve_args(parser.parse_args(["--dataset", "robotcar", "--data-root", "d", "--out", "r",
                                                        "--workers", "0"]))
    assert (robotcar.size, robotcar.max_depth) == ((320, 544), 50.0)
    assert (args.scene_ends, robotcar.robotcar_k, args.exact_decode) == ("md4all", "md4all", False)  # md4all's path


def test_md4alls_training_path_flags_reach_the_datasets(tmp_path):
    from worlds import make_nuscenes, make_robotcar
    nusc, rc = make_nuscenes(tmp_path / "nusc"), make_robotcar(tmp_path / "rc")
    parser = training.add_common_args(argparse.ArgumentParser())
    parse = lambda *flags: training.resolve_args(parser.parse_args([*flags, "--out", "o", "--workers", "0"]))
    default = training.make_dataset(parse("--data-root", nusc), "train")
    exact = training.make_dataset(parse("--data-root", nusc, "--exact-decode", "--scene-ends", "keep"), "train")
    assert default.fast_decode and not exact.fast_decode  # --exact-decode: every frame decoded in full, as md4all
    assert len({t for t, _ in default.items}) == 1 and len({t for t, _ in exact.items}) == 2
    geometric = training.make_dataset(parse("--dataset", "robotcar", "--data-root", rc, "--robotcar-k", "geometric"),
                                      "train")
    assert geometric.robotcar_k == "geometric" and training.make_dataset(
        parse("--dataset", "robotcar", "--data-root", rc), "train").robotcar_k == "md4all"


class ConstantDepth(torch.nn.Module):
    """A depth net predicting the same depth everywhere, at the head's 'network resolution'."""

    def __init__(self, depth):
        super().__init__()
        self.depth = depth

    def forward(self, images, out_size="input"):
        return {"scaled_disp": torch.full((len(images), 1, 14, 14), 1 / self.depth)}


def test_validation_clamps_predictions_at_the_runs_depth_cap(tmp_path):
    import data
    from worlds import make_robotcar
    dataset = data.RobotCarDepth(make_robotcar(tmp_path / "robotcar"), split="val", size=(24, 40))
    args = argparse.Namespace(batch_size=2, workers=0, min_depth=0.1, max_depth=50.0)
    metrics = training.validate(ConstantDepth(70.0), dataset, args, 0, 1, torch.device("cpu"))
    # each frame's ground truth holds 10 m and 5 m; 70 m is scored as the 50 m cap: (40/10 + 45/5) / 2
    assert metrics["all"]["count"] == 2 and metrics["night"]["abs_rel"] == pytest.approx(6.5)


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


FAILS_WITH_WORKERS_ALIVE = """
import sys
sys.path[:0] = [{root!r}]
import torch
import data, evaluate

class Frames(torch.utils.data.Dataset):  # the fourth frame is broken
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            raise ValueError("image unreadable: frame 3")
        return dict(gt=torch.full((1, 4, 4), 5.0), path=str(i), cond="night")

loader = torch.utils.data.DataLoader(Frames(), batch_size=1, num_workers=1)
data.run_cli(lambda: evaluate.score_loader(loader, lambda batch: torch.full((1, 1, 4, 4), 5.0)), "evaluate.py")
"""


def test_an_evaluation_that_fails_with_workers_alive_leaves_no_pymp_folder():
    """Workers still alive at an error would be killed at the interpreter's exit, before the clean-up that removes
    their /tmp/pymp-* socket folders; score_loader (evaluate.py, and training's validation) stops them first
    (data.stop_workers), as training.train does with its persistent workers."""
    import subprocess
    import sys
    import tempfile
    tmp = tempfile.mkdtemp(prefix="p")  # short: a worker's socket path must fit AF_UNIX's 108 characters
    script = FAILS_WITH_WORKERS_ALIVE.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, TMPDIR=tmp, OMP_NUM_THREADS="1"))
    assert result.returncode == 1 and result.stderr.strip() == "evaluate.py: error: image unreadable: frame 3"
    assert [name for name in os.listdir(tmp) if name.startswith("pymp-")] == []


def test_the_loop_says_at_start_the_memory_it_expects_and_how(tmp_path, capsys):
    run(loop_args(tmp_path, steps=1))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("expected memory"))
    assert "AdamW state 0.00 GiB (0.0 M trained" in line and "BENCHMARKS.md" in line
