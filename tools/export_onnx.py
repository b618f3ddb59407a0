"""Write a trained depth net as an ONNX graph (model.export_onnx) and check it against torch with onnxruntime.

    pip install onnx onnxruntime                      # optional extras (requirements-extras.txt)
    python tools/export_onnx.py --ckpt runs/student/ckpt.pt --out student.onnx
    python tools/export_onnx.py --ckpt CKPT --out student.onnx --check-sizes 320x576 900x1600

The graph takes `images` (B,3,H,W) float32 RGB in [0,1] at any batch, height and width and returns `depth`
(B,1,H,W) in metres, exactly what `load_depth_net(CKPT)(images)["depth"]` gives (its resize to the net size
and back is inside the graph). The check runs one random frame per --check-sizes through both and prints
the largest relative depth difference; it fails above --tolerance.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/ is not a package
import data  # noqa: E402
from evaluate import load_checkpoint  # noqa: E402
from model import export_onnx  # noqa: E402


def parse_args(argv=None):
    p = data.ArgumentParser(prog="export_onnx.py", description=__doc__, formatter_class=data.HelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint (.pt) or exported folder of a depth net")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--check-sizes", nargs="*", type=data.parse_size, default=None,
                   help="frame sizes HxW compared with torch in onnxruntime (default: the net size and half of it; "
                        "none: skip the check)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative depth difference accepted")
    return p.parse_args(argv)


def relative_differences(net, path, sizes):
    """{size: max |onnx / torch - 1|} of the depth of one random frame per size."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the check needs onnxruntime: pip install onnx onnxruntime, or pass --check-sizes "
                          "with no size to skip it") from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    generator, out = torch.Generator().manual_seed(0), {}
    for h, w in sizes:
        images = torch.rand(1, 3, h, w, generator=generator)
        with torch.no_grad():
            expected = net(images)["depth"].numpy()
        (depth,) = session.run(["depth"], {"images": images.numpy()})
        out[f"{h}x{w}"] = float(np.abs(depth / expected - 1).max())
    return out


def main(argv=None):
    args = parse_args(argv)

    def run():
        net, _ = load_checkpoint(args.ckpt)
        net.eval()
        data.check_writable(os.path.dirname(os.path.abspath(args.out)), "--out")
        export_onnx(net, args.out)
        print(f"wrote {args.out}")
        h, w = net.net_size or (322, 574)
        sizes = [(h, w), (h // 2, w // 2)] if args.check_sizes is None else args.check_sizes
        differences = relative_differences(net, args.out, sizes) if sizes else {}
        for size, difference in differences.items():
            print(f"{size}: largest relative depth difference onnxruntime vs torch {difference:.2e}")
        worst = max(differences.values(), default=0.0)
        if worst > args.tolerance:
            raise ValueError(f"the ONNX graph differs from torch by {worst:.2e} > --tolerance {args.tolerance}; "
                             f"report the opset and torch version in an issue")
        return differences
    return data.run_cli(run, "export_onnx.py")


if __name__ == "__main__":
    main()
