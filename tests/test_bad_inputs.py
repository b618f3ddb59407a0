"""The README's promise about errors, command by command: a bad input ends in one line on stderr that names the
flag or file and the fix, a non-zero exit status, and an input tree left exactly as it was."""
import os
import shutil
import sys

import pytest

import classic_weather
import data
import evaluate
import export_onnx
import gdt
import learning_check
import synthetic
import tiny_models
import train_student
import train_teacher

NOWHERE = "/nonexistent/ssd-data"
SCRIPTS = {"train_teacher.py": train_teacher.main, "train_student.py": train_student.main, "evaluate.py": evaluate.main,
           "gdt.py": gdt.main, "classic_weather.py": classic_weather.main, "synthetic.py": synthetic.main,
           "tiny_models.py": tiny_models.main, "learning_check.py": learning_check.main,
           "export_onnx.py": export_onnx.main}


def teacher(*extra):
    return ["--tiny", "--data-root", "{world}", "--size", "56x96", "--workers", "0", "--no-val", "--out", "{out}", *extra]


def student(*extra):
    return teacher("--teacher", "{teacher}", *extra)


def evaluating(*extra):
    return ["--data-root", "{world}", "--workers", "0", "--out", "{out}", *extra]


def translating(*extra):
    return ["--data-root", "{world}", "--out", "{out}", "--no-ip-adapter", "--captioner", "none", *extra]


# (script, argv, what the line must say); {world} is a nuScenes root, {out} a fresh folder beside it, {teacher} a
# teacher checkpoint, {junk} a file that is not a checkpoint, {empty} an empty folder, {models} a folder of real models
CASES = [
    ("train_teacher.py", teacher("--data-root", NOWHERE), "data root not found"),
    ("train_teacher.py", teacher("--version", "v9.9"), "version folder not found"),
    ("train_teacher.py", teacher("--lr-encoder", "-1"), "--lr-encoder -1"),
    ("train_teacher.py", teacher("--lr-decoder", "nan"), "--lr-decoder nan"),
    ("train_teacher.py", teacher("--lr-pose", "-0.1"), "--lr-pose"),
    ("train_teacher.py", teacher("--w-velocity", "-1"), "--w-velocity"),
    ("train_teacher.py", teacher("--batch-size", "0"), "--batch-size"),
    ("train_teacher.py", teacher("--steps", "0"), "--steps"),
    ("train_teacher.py", teacher("--size", "0x160"), "--size"),
    ("train_teacher.py", teacher("--size", "4x4"), "at least 14 pixels"),
    ("train_teacher.py", teacher("--min-depth", "10", "--max-depth", "1"), "0 < min < max"),
    ("train_teacher.py", teacher("--resume"), "no checkpoint"),
    ("train_teacher.py", teacher("--resume", "--overwrite"), "give one of them"),
    ("train_teacher.py", teacher("--ckpt-every", "0"), "--ckpt-every"),
    ("train_teacher.py", teacher("--log-every", "0"), "--log-every"),
    ("train_teacher.py", teacher("--net-size", "100x100"), "--tiny builds a net"),
    ("train_teacher.py", teacher("--init-motion", "0.7"), "--init-motion"),
    ("train_teacher.py", teacher("--robotcar-k", "geometric"), "--robotcar-k applies to --dataset robotcar only"),
    ("train_teacher.py", teacher("--rotation", "quaternion"), "--rotation"),
    ("train_teacher.py", teacher("--encoder", "huge"), "--encoder"),
    ("train_teacher.py", teacher("--dataset", "robotcar"), "filter_train_samples.txt"),
    ("train_teacher.py", teacher("--out", "{world}/run"), "inside --data-root"),
    ("train_student.py", teacher("--teacher", "{out}/missing.pt"), "does not exist"),
    ("train_student.py", teacher("--teacher", "{junk}"), "cannot be read"),
    ("train_student.py", student("--conds", "dusk"), "unknown condition(s) 'dusk'"),
    ("train_student.py", student("--conds", "night"), "needs --gdt-root"),
    ("train_student.py", student("--gdt-root", "{empty}", "--conds", "night"), "GDT folders missing"),
    ("train_student.py", student("--p-day", "1.5"), "--p-day 1.5"),
    ("train_student.py", student("--teacher-mask", "sometimes"), "--teacher-mask"),
    ("train_student.py", student("--w-sem", "-1"), "--w-sem -1"),
    ("evaluate.py", evaluating("--ckpt", "{out}/missing.pt"), "does not exist"),
    ("evaluate.py", evaluating("--ckpt", "{junk}"), "cannot be read"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--pred-dir", "{empty}"), "exactly one of"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--size", "7x7"), "at least 14 pixels"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--min-depth", "5", "--max-depth", "2"), "0 < min < max"),
    ("evaluate.py", evaluating("--pred-dir", "{empty}", "--flip-pp"), "--flip-pp needs --ckpt"),
    ("evaluate.py", evaluating("--pred-dir", "{empty}", "--dataset", "folder"), "is a nuScenes root"),
    ("evaluate.py", evaluating("--pred-dir", "{empty}"), "--pred-dir: no prediction"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--out", "{world}/eval"), "inside --data-root"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--batch-size", "0"), "--batch-size"),
    ("evaluate.py", evaluating("--pred-dir", "{empty}", "--weather", "foggy"), "add --dataset drivingstereo"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--corruptions", "rain"), "unknown corruption 'rain'"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--corruptions", "fog", "--severities", "0-2"), "from 1 to 5"),
    ("evaluate.py", evaluating("--pred-dir", "{empty}", "--corruptions", "fog"), "--corruptions needs --ckpt"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--baseline-metrics", "{junk}"), "add --corruptions"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--corruptions", "fog", "--baseline-metrics", "{junk}"),
     "is not a metrics.json of a --corruptions run"),
    ("evaluate.py", evaluating("--pred-dir", "{empty}", "--dataset", "drivingstereo"), "no DrivingStereo weather set"),
    ("evaluate.py", evaluating("--pred-dir", "{empty}", "--dataset", "drivingstereo", "--weather", "rainy"),
     "rainy/left-image-full-size; unpack rainy.zip"),
    ("gdt.py", translating("--cond", "dusk"), "unknown condition(s) 'dusk'"),
    ("gdt.py", translating("--data-root", NOWHERE), "nuScenes dataroot not found"),
    ("gdt.py", translating("--dataset", "folder"), "is a nuScenes root"),
    ("gdt.py", translating("--gen-size", "60x64"), "--gen-size"),
    ("gdt.py", translating("--out", "{world}/gdt"), "inside --data-root"),
    ("gdt.py", translating("--min-agreement", "2"), "--min-agreement"),
    ("gdt.py", translating("--keep-rejected"), "--keep-rejected"),
    ("gdt.py", translating("--sampler", "lcm", "--guidance", "5"), "--guidance must be 1-2"),
    ("gdt.py", translating("--strength", "0.1", "--steps", "2"), "--strength"),
    ("gdt.py", ["--data-root", "{world}", "--out", "{out}", "--style-dir", "{empty}"], "--style-dir night=DIR"),
    ("classic_weather.py", ["--dataset", "nuscenes", "--data-root", "{world}", "--out", "{out}", "--cond", "dusk"],
     "--cond"),
    ("classic_weather.py", ["--dataset", "folder", "--data-root", "{world}", "--out", "{out}"], "is a nuScenes root"),
    ("synthetic.py", ["--out", "{out}", "--train-day", "0", "--train-night", "0", "--train-rain", "0", "--val-day", "0",
                      "--val-night", "0", "--val-rain", "0"], "scene counts"),
    ("synthetic.py", ["--out", "{out}", "--size", "36x0"],
     "--size: image size '36x0': give HxW with both sides positive"),
    ("tiny_models.py", ["--out", "{models}"], "another --out"),
    ("learning_check.py", ["--out", "{out}", "--size", "0x160"], "--size"),
    ("learning_check.py", ["--out", "{out}", "--corruptions-only"], "--corruptions-only"),
    ("export_onnx.py", ["--ckpt", "{junk}", "--out", "{out}/net.onnx"], "cannot be read"),
    ("export_onnx.py", ["--ckpt", "{teacher}", "--out", "{out}/net.onnx", "--check-sizes", "0x70"], "image size"),
    # an --out that cannot be written (a file stands where its folder would be: root ignores permission bits)
    ("train_teacher.py", teacher("--out", "{junk}/run"), "junk.pt"),
    ("evaluate.py", evaluating("--ckpt", "{teacher}", "--out", "{junk}/eval"), "junk.pt"),
    ("gdt.py", translating("--out", "{junk}/gdt", "--dataset", "nuscenes"), "junk.pt"),
    ("classic_weather.py", ["--dataset", "nuscenes", "--data-root", "{world}", "--out", "{junk}/classic"], "junk.pt"),
    ("synthetic.py", ["--out", "{junk}/world", "--train-day", "1", "--train-night", "0", "--train-rain", "0",
                      "--val-day", "0", "--val-night", "0", "--val-rain", "0", "--keyframes", "2"], "junk.pt"),
    ("tiny_models.py", ["--out", "{junk}/models"], "junk.pt"),
]


def tree(folder):
    """Every file below `folder` with its size and modification time: what 'left as it was' compares."""
    return {os.path.join(d, n): (os.path.getsize(os.path.join(d, n)), os.stat(os.path.join(d, n)).st_mtime_ns)
            for d, _, names in os.walk(folder) for n in names}


@pytest.fixture(scope="module")
def inputs(tiny_world, tmp_path_factory):
    """The inputs the cases may read, none of which they may change."""
    root = tmp_path_factory.mktemp("inputs")
    from model import DepthNet, save_checkpoint
    net = DepthNet("tiny", init="none", net_size=None)
    save_checkpoint(str(root / "teacher.pt"), model=net.state_dict(), config=net.config_dict(), pose=None,
                    pose_config=None, args={"supervision": "lidar"})
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    (root / "empty").mkdir()
    (root / "models" / "stable-diffusion-v1-5").mkdir(parents=True)
    (root / "models" / "stable-diffusion-v1-5" / "model_index.json").write_text("{}")
    return dict(world=tiny_world, teacher=str(root / "teacher.pt"), junk=str(root / "junk.pt"),
                empty=str(root / "empty"), models=str(root / "models"))


@pytest.mark.parametrize("script,argv,says", CASES, ids=[f"{c[0]}:{' '.join(c[1][-2:])}" for c in CASES])
def test_a_bad_input_is_one_line_a_non_zero_exit_and_no_change_to_the_inputs(script, argv, says, inputs, tmp_path,
                                                                            capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script])  # as `python <script>` names itself
    places = dict(inputs, out=str(tmp_path / "out"))
    argv = [a.format(**places) for a in argv]
    before = {p: tree(p) for p in (inputs["world"], os.path.dirname(inputs["teacher"]))}
    with pytest.raises(SystemExit) as stop:
        data.run_cli(lambda: SCRIPTS[script](argv), script)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert stop.value.code not in (0, None) and len(err) == 1, err
    assert err[0].startswith(f"{script}: error: ") and says in err[0], err[0]
    assert {p: tree(p) for p in before} == before
    assert not os.path.exists(os.path.join(inputs["world"], "run")) and not os.path.exists(places["out"]) or \
        not os.listdir(places["out"]), "nothing written for a run that was refused"
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_the_table_covers_every_script_and_at_least_forty_cases():
    assert len(CASES) >= 40 and {c[0] for c in CASES} == set(SCRIPTS)
