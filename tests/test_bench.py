"""bench.py --tiny: every section runs on CPU and gives positive, finite figures; FLOP counts scale."""
import json
import math

import pytest
import torch

import bench


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    results = bench.main(["--tiny", "--out", str(out), "--gdt-images", "2", "--infer-batches", "1", "2"])
    return results, out


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_section_gives_positive_finite_figures(tiny_run):
    results, _ = tiny_run
    assert positive(results["matmul"]["tflops"])
    gdt = results["gdt"]
    for key in ("ours_images_per_s", "naive_images_per_s", "speedup", "tflop_per_image", "roofline_fraction"):
        assert positive(gdt[key]), key
    assert gdt["speedup"] == pytest.approx(gdt["ours_images_per_s"] / gdt["naive_images_per_s"])
    for kind in ("teacher", "student"):
        for key in ("images_per_s", "tflop_per_image", "mfu"):
            assert positive(results[kind][key]), (kind, key)
    assert positive(results["inference"]["batch1_frames_per_s"])
    assert positive(results["inference"]["batch2_frames_per_s"])


def test_json_holds_every_section_with_device_torch_and_date(tiny_run):
    results, out = tiny_run
    written = json.loads(out.read_text())
    assert set(written) == {"meta", "matmul", "gdt", "teacher", "student", "inference"}
    assert written["meta"]["tiny"] is True and written["meta"]["command"].startswith("python bench.py --tiny")
    for section in ("matmul", "gdt", "teacher", "student", "inference"):
        assert {"device", "torch", "date"} <= set(written[section]), section
        assert written[section]["torch"] == torch.__version__
    assert written["gdt"]["ours_peak_gib"] is None  # CPU: no GPU memory figure is invented
    assert not list(out.parent.glob(".bench-*"))  # the temp file of the atomic write is gone


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_training_flops_double_with_the_batch(kind):
    args = bench.parse_args(["--tiny"])
    torch.manual_seed(0)
    loss_module = bench.build_loss(kind, args)
    one, two = (bench.step_flops(loss_module, bench.synthetic_batch(kind, b, args, torch.device("cpu")))
                for b in (1, 2))
    assert one > 0
    assert two == pytest.approx(2 * one, rel=0.01)


def test_flop_count_includes_cpu_attention():
    q = torch.randn(2, 4, 64, 16)
    flops = bench.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 4 * 64 * 64 * 16) * 2  # QK^T and AV, 2 FLOPs per multiply-add
