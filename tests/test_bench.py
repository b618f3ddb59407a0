"""bench.py: every section runs (--tiny on CPU) and gives positive, finite figures, saved after each one;
every full-size section builds and runs at full size on fake tensors; FLOP counts scale and agree."""
import json
import math

import pytest
import torch

import bench

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_gdt_models):
    out = tmp_path_factory.mktemp("bench") / "bench.json"  # --models-dir: the session's tiny models, written once
    results = bench.main(["--tiny", "--out", str(out), "--models-dir", str(tiny_gdt_models), "--gdt-batch", "1",
                          "--gdt-images", "1", "--infer-batches", "1", "2", "--only", "gdt", "teacher", "student",
                          "inference", "data", "--data-workers", "1", "--data-samples", "1", "--gpu-tflops", "100"])
    return results, out


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_section_gives_positive_finite_figures(tiny_run):
    results, _ = tiny_run
    assert positive(results["matmul"]["tflops"])
    gdt = results["gdt"]
    for key in ("ours_images_per_s", "naive_images_per_s", "speedup", "ours_tflop_per_image", "ours_roofline_fraction",
                "lcm_images_per_s", "lcm_tflop_per_image", "lcm_speedup"):
        assert positive(gdt[key]), key
    assert gdt["speedup"] == pytest.approx(gdt["ours_images_per_s"] / gdt["naive_images_per_s"])
    for kind in ("teacher", "student"):
        for key in ("images_per_s", "tflop_per_image", "mfu"):
            assert positive(results[kind][key]), (kind, key)
    assert positive(results["inference"]["batch1_frames_per_s"])
    assert positive(results["inference"]["batch2_frames_per_s"])


def test_data_section_times_every_trainer_item_on_every_path_and_the_bare_decode_and_sizes_the_workers(tiny_run):
    figures = tiny_run[0]["data"]
    assert figures["frame_format"] == "JPEG" and figures["gpu_tflops"] == 100
    for kind in ("teacher", "student", "lidar_teacher"):
        item = figures[kind]
        for path in ("reference", "default", "gpu_augment", "fast"):
            for key in ("cpu_ms_per_item", "items_per_s_one_process"):
                assert positive(item[path][key]), (kind, path, key)
            cores = item["gpu_images_per_s"] * item[path]["cpu_ms_per_item"] / 1e3  # CPU s per GPU s
            assert item[path]["workers_per_gpu"] == math.ceil(cores) >= 1
        assert positive(item["default"]["items_per_s_1_workers"])  # the trainers' path through a DataLoader
        assert item["gpu_images_per_s"] == pytest.approx(100 / item["tflop_per_image"])
        for path in ("default", "gpu_augment", "fast"):
            assert item[f"{path}_speedup"] == pytest.approx(item["reference"]["cpu_ms_per_item"]
                                                            / item[path]["cpu_ms_per_item"])
        assert item["gpu_augment_over_bare_decode"] == pytest.approx(item["gpu_augment"]["cpu_ms_per_item"]
                                                                      / item["bare_decode_cpu_ms"])
    stages = figures["teacher_default_stages_ms"]["per_item"]
    assert all(positive(v) for v in stages.values()) and stages["sum"] == pytest.approx(
        sum(v for k, v in stages.items() if k not in ("sum", "hue_torchvision")))


def test_json_holds_every_section_with_device_torch_and_date(tiny_run):
    results, out = tiny_run
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(results))
    assert set(written) == {"meta", "matmul", "gdt", "teacher", "student", "inference", "data"}
    assert written["meta"]["tiny"] is True and written["meta"]["command"].startswith("python tools/bench.py --tiny")
    for section in ("matmul", "gdt", "teacher", "student", "inference", "data"):
        assert {"device", "torch", "date"} <= set(written[section]), section
        assert written[section]["torch"] == torch.__version__
    assert written["gdt"]["ours_peak_gib"] is None  # CPU: no GPU memory figure is invented
    assert not list(out.parent.glob(".bench-*"))  # the temp file of the atomic write is gone


def test_figures_are_saved_as_measured_and_a_failing_section_keeps_the_others(tmp_path, monkeypatch):
    snapshots, write = [], bench.write_json
    monkeypatch.setattr(bench, "write_json", lambda results, path: (snapshots.append(json.loads(json.dumps(results))),
                                                                   write(results, path)))

    def broken(args, device, results):
        results.add("gdt", size="64x64")
        raise RuntimeError("out of luck")

    def two_figures(args, device, results):
        results.add("teacher", tflop_per_image=1.0)
        results.add("teacher", images_per_s=2.0)

    monkeypatch.setitem(bench.BENCHES, "gdt", broken)
    monkeypatch.setitem(bench.BENCHES, "teacher", two_figures)
    out = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match=r"section\(s\) gdt failed"):
        bench.main(["--tiny", "--out", str(out), "--only", "gdt", "teacher"])
    written = json.loads(out.read_text())
    assert written["gdt"]["size"] == "64x64" and written["gdt"]["error"] == "RuntimeError: out of luck"
    assert written["teacher"]["images_per_s"] == 2.0  # the section after the failure still ran
    # each figure reached the file as it came: a run killed between the two keeps the first
    first = next(x["teacher"] for x in snapshots if "teacher" in x)
    assert first["tflop_per_image"] == 1.0 and "images_per_s" not in first


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_training_flops_double_with_the_batch_and_fake_tensors_count_them_alike(kind):
    args = bench.parse_args(["--tiny"])
    torch.manual_seed(0)
    loss_module = bench.build_loss(kind, args)
    one, two = (bench.step_flops(loss_module, bench.synthetic_batch(kind, b, args, CPU)) for b in (1, 2))
    assert one > 0
    assert two == pytest.approx(2 * one, rel=0.01)
    if kind == "teacher":  # what the full-size counts rest on
        with bench.shapes_only(lambda: bench.build_loss(kind, args)) as fake:
            assert bench.step_flops(fake, bench.synthetic_batch(kind, 1, args, CPU)) == pytest.approx(one, rel=1e-6)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_full_size_training_step_builds_and_runs(kind):
    """ViT-B depth nets, ResNet-18 pose nets, the student's DINOv2, at 518x784 and 320x576: shapes only."""
    full = bench.parse_args([])
    with bench.shapes_only(lambda: bench.build_loss(kind, full)) as loss_module, torch.no_grad():
        loss, _ = loss_module(bench.synthetic_batch(kind, 1, full, CPU))
    assert loss.shape == ()


def test_full_size_depth_net_runs_for_the_lidar_teacher_and_inference():
    full = bench.parse_args([])
    with bench.shapes_only(lambda: bench.build_loss("lidar_teacher", full)) as loss_module, torch.no_grad():
        batch = bench.synthetic_batch("lidar_teacher", 1, full, CPU)
        out = loss_module.net(batch["input"], out_size=batch["lidar"].shape[-2:])
        assert out["depth"].shape == batch["lidar"].shape
        assert out["tokens"].shape == (1, 37 * 56, 768)  # ViT-B/14 patch tokens at 518x784


def test_full_size_gdt_flops_and_lcm_at_most_an_eighth():
    figures = bench.gdt_flops((576, 1024), 30)
    assert figures["default_tflop_per_image"] == pytest.approx(
        2 * figures["text_encoder_tflop"] + 60 * figures["denoiser_call_tflop"] + figures["vae_decode_tflop"])
    assert figures["lcm_tflop_per_image"] == pytest.approx(
        figures["text_encoder_tflop"] + 4 * figures["denoiser_call_tflop"] + figures["vae_decode_tflop"])
    assert figures["lcm_cost_ratio"] <= 1 / 8


def test_flop_count_includes_cpu_attention():
    q = torch.randn(2, 4, 64, 16)
    flops = bench.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 4 * 64 * 64 * 16) * 2  # QK^T and AV, 2 FLOPs per multiply-add


def test_help_prints_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--help"])
    assert e.value.code == 0 and "default: 40% of the measured bf16 matmul rate" in " ".join(capsys.readouterr().out.split())


def test_onnx_section_times_torch_and_onnxruntime_on_the_same_net(tmp_path):
    pytest.importorskip("onnxruntime", reason="optional: pip install onnx onnxruntime (requirements-extras.txt)")
    pytest.importorskip("onnx", reason="optional: pip install onnx onnxruntime (requirements-extras.txt)")
    args = bench.parse_args(["--tiny", "--only", "onnx", "--out", str(tmp_path / "bench.json")])
    results = bench.Results(args.out, dict(device="cpu", torch=torch.__version__, date="today"))
    bench.bench_onnx(args, CPU, results)
    onnx = results["onnx"]
    for key in ("torch_cpu_frames_per_s", "onnxruntime_cpu_frames_per_s", "onnx_speedup"):
        assert positive(onnx[key]), key
    assert onnx["max_relative_depth_difference"] < 1e-4
    assert json.loads((tmp_path / "bench.json").read_text())["onnx"]["threads"] == onnx["threads"]


@pytest.mark.parametrize("kind", ["lidar_teacher", "teacher"])
def test_a_memory_cell_separates_the_kept_state_from_the_steps_activations(kind):
    """One step of tiny modules: the same code as the full-size cells, which run in fresh processes."""
    figures = bench.memory_cell(f"{kind},2,fp32,-", bench.parse_args(["--tiny"]))
    assert figures["trained_params"] > 0 and figures["state_formula_gib"] > 0
    assert figures["peak_gib"] >= figures["activation_gib"] >= 0 and figures["state_gib"] >= 0


def test_memory_cells_cover_every_trainer_batch_precision_and_checkpointing_and_gdts_samplers():
    cells = set(bench.MEMORY_CELLS)
    assert {f"{k},{b},{d},{c}" for k in ("teacher", "student", "lidar_teacher") for b in (1, 2, 4)
            for d in ("fp32", "bf16") for c in ("-", "ckpt")} < cells
    assert {f"gdt,8,{d},{s}" for d in ("fp16", "fp32") for s in ("unipc", "lcm")} < cells
