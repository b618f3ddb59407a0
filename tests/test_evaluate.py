"""Metric core of the md4all protocol (SPEC §5) against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from evaluate import average_metrics, compute_depth_metrics, flip_post_process


def test_metrics_equal_hand_values_and_ignore_gt_zeros_and_gt_beyond_cap():
    gt = np.array([[10.0, 0.0, 20.0], [90.0, 5.0, 0.05]])  # 0, 90 (> cap) and 0.05 (< min) are not valid
    pred = np.array([[12.0, 3.0, 20.0], [10.0, 4.0, 1.0]])
    m = compute_depth_metrics(gt, pred, 0.1, 80.0)
    g, p = np.array([10.0, 20.0, 5.0]), np.array([12.0, 20.0, 4.0])
    assert m["abs_rel"] == pytest.approx(np.mean([2 / 10, 0, 1 / 5]))
    assert m["sq_rel"] == pytest.approx(np.mean([4 / 10, 0, 1 / 5]))
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 0 + 1) / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)))
    # ratios 1.2, 1.0, 1.25: the last is not < 1.25
    assert m["a1"] == pytest.approx(2 / 3)
    assert m["a2"] == pytest.approx(1.0) and m["a3"] == pytest.approx(1.0)


def test_predictions_beyond_the_caps_are_clamped():
    gt = np.array([50.0, 0.5])
    m = compute_depth_metrics(gt, np.array([500.0, 0.001]), 0.1, 80.0)
    assert m["abs_rel"] == pytest.approx(np.mean([30 / 50, 0.4 / 0.5]))
    assert m["a1"] == 0.0


def test_median_scaling_makes_a_scaled_prediction_exact():
    gt = np.array([[2.0, 4.0], [8.0, 16.0]])
    m = compute_depth_metrics(gt, gt / 7.0, 0.1, 80.0, median_scaling=True)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12) and m["a1"] == 1.0
    unscaled = compute_depth_metrics(gt, gt / 7.0, 0.1, 80.0)
    assert unscaled["abs_rel"] == pytest.approx(6 / 7)


def test_median_scaling_happens_before_clamping():
    gt = np.array([10.0, 20.0, 30.0])
    pred = np.array([0.01, 0.02, 0.03])  # all below min: clamping first would make them equal
    m = compute_depth_metrics(gt, pred, 0.1, 80.0, median_scaling=True)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-9)


def test_metrics_accept_tensors_with_channel_dims():
    gt = torch.tensor([[[10.0, 20.0]]])
    m = compute_depth_metrics(gt, torch.tensor([[[11.0, 20.0]]]), 0.1, 80.0)
    assert m["abs_rel"] == pytest.approx(0.05)


def test_no_valid_pixel_gives_none_and_is_skipped_in_the_average():
    assert compute_depth_metrics(np.zeros((3, 3)), np.ones((3, 3))) is None
    a = compute_depth_metrics(np.array([10.0]), np.array([12.0]))
    b = compute_depth_metrics(np.array([10.0]), np.array([10.0]))
    avg = average_metrics([a, None, b])
    assert avg["count"] == 2 and avg["abs_rel"] == pytest.approx(0.1)
    assert average_metrics([])["count"] == 0


def test_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="upsample"):
        compute_depth_metrics(np.ones((4, 4)), np.ones((2, 2)))


def test_flip_post_process_averages_with_the_mirrored_prediction():
    pred = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    of_flipped = torch.tensor([[[[30.0, 20.0, 10.0]]]])  # the flipped image's prediction, mirrored
    assert torch.equal(flip_post_process(pred, of_flipped), torch.tensor([[[[5.5, 11.0, 16.5]]]]))


def test_evaluate_command_writes_table_json_csv_and_pngs(tiny_world, tmp_path, capsys):
    import json
    import os
    import evaluate
    from model import DepthNet, save_checkpoint
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=None)
    save_checkpoint(str(tmp_path / "ckpt.pt"), model=net.state_dict(), config=net.config_dict())
    summary = evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--data-root", tiny_world, "--size", "56x96",
                             "--workers", "0", "--save-vis", "2", "--out", str(tmp_path / "eval"), "--flip-pp"])
    printed = capsys.readouterr().out
    for group in ("day-clear", "night", "day-rain", "all"):
        assert group in printed and summary[group]["count"] == (12 if group == "all" else 4)
    with open(tmp_path / "eval" / "metrics.json") as f:
        saved = json.load(f)
    assert saved["summary"]["night"]["abs_rel"] == pytest.approx(summary["night"]["abs_rel"])
    assert len(saved["per_image"]) == 12
    with open(tmp_path / "eval" / "metrics.csv") as f:
        assert f.readline().startswith("condition,count,abs_rel")
    pngs = sorted(os.listdir(tmp_path / "eval" / "vis"))
    assert pngs == ["day-clear_001.png", "day-clear_002.png", "day-rain_001.png", "day-rain_002.png",
                    "night_001.png", "night_002.png"]


def test_precomputed_depth_maps_score_as_the_metric_core_averaged_per_image(tiny_world, tmp_path):
    import os
    import data
    import evaluate
    rng = np.random.default_rng(0)
    dataset = data.NuScenesDepth(tiny_world, split="val", size=None)
    per_group = {}
    for i in range(len(dataset)):
        item = dataset[i]
        gt = item["gt"][0].numpy()
        pred = np.full(gt.shape, 10.0, np.float32) * rng.uniform(0.5, 2.0)
        path = tmp_path / "pred" / (os.path.splitext(item["path"])[0] + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, pred)
        m = compute_depth_metrics(gt, pred, 0.1, 80.0)
        per_group.setdefault(evaluate.condition_group(item["cond"]), []).append(m)
        per_group.setdefault("all", []).append(m)
    summary = evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", tiny_world, "--size", "56x96",
                             "--workers", "0", "--out", str(tmp_path / "eval")])
    for group, metrics in per_group.items():
        expected = average_metrics(metrics)
        for k in ("abs_rel", "rmse", "a1", "count"):
            assert summary[group][k] == pytest.approx(expected[k]), (group, k)


def test_evaluate_needs_exactly_one_source(tiny_world):
    import evaluate
    with pytest.raises(SystemExit):
        evaluate.main(["--data-root", tiny_world])


def test_a_folder_of_images_with_npy_depth_is_scored_and_one_without_is_refused(tmp_path):
    import evaluate
    from PIL import Image
    from model import DepthNet, save_checkpoint
    net = DepthNet("tiny", init="none", net_size=None)
    save_checkpoint(str(tmp_path / "ckpt.pt"), model=net.state_dict(), config=net.config_dict())
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        np.save(tmp_path / "images" / f"{name}.npy", np.full((40, 60), 12.0, np.float32))
    summary = evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--dataset", "folder", "--data-root",
                             str(tmp_path / "images"), "--workers", "0", "--out", str(tmp_path / "eval")])
    assert summary["all"]["count"] == 2
    (tmp_path / "images" / "a.npy").unlink()
    with pytest.raises(ValueError, match="npy"):
        evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--dataset", "folder", "--data-root",
                       str(tmp_path / "images"), "--workers", "0", "--out", str(tmp_path / "eval2")])
