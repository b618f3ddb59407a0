"""tools/export_onnx.py: a checkpoint becomes an ONNX graph that onnxruntime runs like torch, at any frame size."""
import os
import sys

import pytest
import torch

import export_onnx
from model import DepthNet, save_checkpoint



@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=(42, 70), init_depth=10.0)
    save_checkpoint(str(tmp_path / "ckpt.pt"), model=net.state_dict(), config=net.config_dict())
    return str(tmp_path / "ckpt.pt")


def test_a_checkpoint_exports_and_matches_torch_at_each_checked_size(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="optional: pip install onnx onnxruntime (requirements-extras.txt)")
    pytest.importorskip("onnx", reason="optional: pip install onnx onnxruntime (requirements-extras.txt)")
    differences = export_onnx.main(["--ckpt", checkpoint, "--out", str(tmp_path / "onnx" / "net.onnx"),
                                    "--check-sizes", "42x70", "30x57"])
    assert set(differences) == {"42x70", "30x57"} and max(differences.values()) < 1e-4
    assert os.path.isfile(tmp_path / "onnx" / "net.onnx")
    assert "30x57: largest relative depth difference" in capsys.readouterr().out


def test_without_the_onnx_package_the_error_is_one_line_with_the_pip_command(checkpoint, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed: `import onnx` raises ImportError
    with pytest.raises(SystemExit) as stop:
        export_onnx.main(["--ckpt", checkpoint, "--out", str(tmp_path / "net.onnx")])
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == ("export_onnx.py: error: ONNX export needs the onnx package: "
                                               "pip install onnx onnxruntime")
    assert not os.path.exists(tmp_path / "net.onnx")
