"""The design's promise (README, "The files"): one stage, one file. A stage file with the shared files it names runs
in an empty folder, and the shared files import nothing of the project."""
import ast
import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import DepthNet, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STAGE_FILES = {f.stem for f in ROOT.glob("*.py")}


def project_imports(path):
    """The project's modules a file imports (top-level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & STAGE_FILES


def test_shared_files_import_nothing_of_the_project_and_stages_only_what_they_name():
    for shared in ("model", "losses", "data"):
        assert project_imports(ROOT / f"{shared}.py") == set(), shared
    assert project_imports(ROOT / "gdt.py") == {"data", "model"}
    assert project_imports(ROOT / "evaluate.py") == {"data", "model"}
    assert project_imports(ROOT / "training.py") == {"data", "evaluate", "model"}


def run_copied(tmp_path, stages, monkeypatch):
    """Copy each stage's files into an empty folder of its own and run the stage there as `python <stage>.py ...`
    would, in this interpreter (torch, transformers and diffusers are loaded already): the project's modules are
    forgotten for the run and the repository is off the path, so a stage finds only the files copied with it."""
    off_path = {str(ROOT), str(ROOT / "tools"), str(ROOT / "tests")}
    for i, (files, argv) in enumerate(stages):
        folder = tmp_path / f"copy{i}"
        folder.mkdir()
        for name in files:
            shutil.copy(ROOT / name, folder / name)
        saved = {name: sys.modules.pop(name) for name in STAGE_FILES if name in sys.modules}
        try:
            with monkeypatch.context() as m:
                m.chdir(folder)
                kept = [p for p in sys.path if p and os.path.abspath(p) not in off_path]
                m.setattr(sys, "path", [str(folder), *kept])
                m.setattr(sys, "argv", [files[0], *argv])
                try:
                    runpy.run_path(files[0], run_name="__main__")
                except SystemExit as stop:
                    assert stop.code in (0, None), f"{files[0]} exited with {stop.code}"
            copied = {name: sys.modules[name] for name in STAGE_FILES if name in sys.modules}
            assert all(os.path.dirname(module.__file__) == str(folder) for module in copied.values()), copied
        finally:
            for name in STAGE_FILES:
                sys.modules.pop(name, None)
            sys.modules.update(saved)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two day images, each with a .npy depth map beside it (what --dataset folder reads)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((48, 80, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
        np.save(root / f"{name}.npy", rng.uniform(2, 40, (48, 80)).astype(np.float32))
    return root


def test_gdt_and_evaluate_each_run_from_a_folder_holding_only_their_stage_and_the_shared_files(
        images, tiny_gdt_models, tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=None)
    save_checkpoint(str(tmp_path / "ckpt.pt"), model=net.state_dict(), config=net.config_dict())
    gdt = (["gdt.py", "data.py", "model.py"],
           ["--tiny", "--models-dir", str(tiny_gdt_models), "--dataset", "folder", "--data-root", str(images),
            "--out", str(tmp_path / "out"), "--cond", "night", "--no-ip-adapter", "--captioner", "none",
            "--gen-size", "64x64"])
    evaluate = (["evaluate.py", "model.py", "data.py"],
                ["--ckpt", str(tmp_path / "ckpt.pt"), "--dataset", "folder", "--data-root", str(images),
                 "--workers", "0", "--out", str(tmp_path / "eval")])
    run_copied(tmp_path, [gdt, evaluate], monkeypatch)
    assert sorted(p.name for p in (tmp_path / "out" / "night").glob("*.png")) == ["a.png", "b.png"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]["plain"]["all"]["count"] == 2
