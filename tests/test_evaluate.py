"""evaluate.py, the md4all evaluation stage (docs/method.md §5): checkpoints and prediction folders, tables, pictures,
errors, and the protocol's rules: the net's prediction, the metrics, their averages."""
import math

import numpy as np
import pytest
import torch

import evaluate
from evaluate import (compute_depth_metrics, condition_group, flip_post_process, metric_totals, predict_depths,
                      score_loader, summarize, upsample_depth)


def test_precomputed_maps_get_the_same_single_aligned_corner_upsampling(tmp_path):
    (tmp_path / "cam").mkdir()
    np.save(tmp_path / "cam" / "a.npy", np.array([[1.0, 3.0], [5.0, 7.0]], np.float32))
    pred = evaluate.load_prediction(str(tmp_path), "cam/a.jpg", (3, 3))
    assert torch.allclose(pred, torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [5.0, 6.0, 7.0]]))
    np.save(tmp_path / "cam" / "b.npy", np.ones((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"b\.npy.*\(H, W\)"):
        evaluate.load_prediction(str(tmp_path), "cam/b.jpg", (3, 3))
    (tmp_path / "cam" / "c.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"cannot read .*c\.npy"):
        evaluate.load_prediction(str(tmp_path), "cam/c.jpg", (3, 3))


def tiny_checkpoint(path, net_size=None, **extra):
    from model import DepthNet, save_checkpoint
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=net_size)
    save_checkpoint(str(path), model=net.state_dict(), config=net.config_dict(), **extra)
    return str(path)


def test_flip_pp_run_prints_and_writes_plain_and_flip_pp_results(tiny_world, tmp_path, capsys):
    import json
    import os
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    summary = evaluate.main(["--ckpt", ckpt, "--data-root", tiny_world, "--size", "56x96", "--workers", "0",
                             "--save-vis", "1", "--out", str(tmp_path / "eval"), "--flip-pp"])
    printed = capsys.readouterr().out
    assert "plain prediction" in printed and "flip post-processing" in printed
    with open(tmp_path / "eval" / "metrics.json") as f:
        saved = json.load(f)
    for mode in ("plain", "flip_pp"):
        for group in ("day-clear", "night", "day-rain", "all"):
            assert saved["summary"][mode][group]["count"] == (12 if group == "all" else 4)
    assert saved["summary"]["flip_pp"] == summary  # the command returns what it reports last
    assert saved["summary"]["plain"]["all"]["abs_rel"] != pytest.approx(summary["all"]["abs_rel"], abs=1e-7)
    assert len(saved["per_image"]) == 12 and set(saved["per_image"][0]) == {"path", "cond", "plain", "flip_pp"}
    with open(tmp_path / "eval" / "metrics.csv") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("mode,condition,count,abs_rel") and len(lines) == 1 + 2 * 4
    assert lines[1].startswith("plain,day-clear,4,") and lines[5].startswith("flip_pp,day-clear,4,")
    assert sorted(os.listdir(tmp_path / "eval" / "vis")) == ["day-clear_001.png", "day-rain_001.png", "night_001.png"]


def test_without_size_the_checkpoints_training_size_and_net_size_build_the_dataset(tiny_world, tmp_path,
                                                                                     monkeypatch, capsys):
    import data
    built = {}

    def spy(*args, **kwargs):  # record how the dataset is built, then stop the run
        built.update(kwargs, split=args[2])
        raise ValueError("built")
    monkeypatch.setattr(data, "NuScenesDepth", spy)
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", net_size=(28, 42), args={"size": (42, 70)})
    run_expecting_error(["--ckpt", ckpt, "--data-root", tiny_world, "--out", str(tmp_path / "eval")], capsys)
    assert built == {"size": (42, 70), "net_size": (28, 42), "split": "val"}
    ckpt = tiny_checkpoint(tmp_path / "plain.pt")  # no training args: the dataset's default size
    run_expecting_error(["--ckpt", ckpt, "--data-root", tiny_world, "--out", str(tmp_path / "eval")], capsys)
    assert built["size"] == (320, 576) and built["net_size"] is None
    run_expecting_error(["--ckpt", ckpt, "--data-root", tiny_world, "--size", "28x56", "--out", str(tmp_path)], capsys)
    assert built["size"] == (28, 56)


def test_precomputed_depth_maps_score_as_the_metric_core_averaged_per_image(tiny_world, tmp_path):
    import os
    import data
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
        per_group.setdefault(condition_group(item["cond"]), []).append(m)
        per_group.setdefault("all", []).append(m)
    summary = evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", tiny_world, "--size", "56x96",
                             "--workers", "0", "--out", str(tmp_path / "eval"), "--save-vis", "1"])
    assert len(os.listdir(tmp_path / "eval" / "vis")) == 3
    for group, metrics in per_group.items():
        expected = {k: np.mean([m[k] for m in metrics]) for k in ("abs_rel", "rmse", "a1")} | {"count": len(metrics)}
        for k in ("abs_rel", "rmse", "a1", "count"):
            assert summary[group][k] == pytest.approx(expected[k]), (group, k)


def test_a_folder_of_images_with_npy_depth_is_scored_and_one_without_is_refused(tmp_path, capsys):
    from PIL import Image
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        np.save(tmp_path / "images" / f"{name}.npy", np.full((40, 60), 12.0, np.float32))
    args = ["--ckpt", ckpt, "--dataset", "folder", "--data-root", str(tmp_path / "images"), "--workers", "0"]
    assert evaluate.main(args + ["--out", str(tmp_path / "eval")])["all"]["count"] == 2
    (tmp_path / "images" / "a.npy").unlink()
    with pytest.raises(SystemExit) as stop:
        evaluate.main(args + ["--out", str(tmp_path / "eval2")])
    assert stop.value.code == 1 and "npy depth map next to each image" in capsys.readouterr().err


def run_expecting_error(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("evaluate.py: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", ["missing", "truncated", "not a checkpoint", "no data root"])
def test_bad_checkpoints_and_data_roots_are_one_line_errors_naming_the_file(case, tiny_world, tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    data_root = tiny_world
    if case == "truncated":
        tiny_checkpoint(ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    elif case == "not a checkpoint":
        torch.save({"weights": torch.zeros(2)}, ckpt)
    elif case == "no data root":
        tiny_checkpoint(ckpt)
        data_root = str(tmp_path / "nowhere")
    line = run_expecting_error(["--ckpt", str(ckpt), "--data-root", data_root, "--workers", "0",
                                "--out", str(tmp_path / "eval")], capsys)
    expected = {"missing": "does not exist", "truncated": "cannot be read",
                "not a checkpoint": "no 'model'", "no data root": "data root not found"}[case]
    assert expected in line and (str(ckpt) in line or data_root in line)


def test_bad_flags_are_one_line_errors(tiny_world, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    base = ["--data-root", tiny_world, "--workers", "0"]
    line = run_expecting_error(["--ckpt", ckpt] + base + ["--out", f"{tiny_world}/eval"], capsys)
    assert f"--out {tiny_world}/eval is inside --data-root {tiny_world}" in line
    line = run_expecting_error(["--ckpt", ckpt] + base + ["--out", tiny_world], capsys)
    assert "inside --data-root" in line
    assert "--batch-size" in run_expecting_error(["--ckpt", ckpt, "--batch-size", "0"] + base, capsys)
    assert "exactly one of" in run_expecting_error(base, capsys)
    line = run_expecting_error(["--pred-dir", str(tmp_path), "--flip-pp", "--out", str(tmp_path / "e")] + base, capsys)
    assert "--flip-pp needs --ckpt" in line
    out = ["--out", str(tmp_path / "e")]
    assert "--size 7x7: each side must be at least 14" in run_expecting_error(
        ["--ckpt", ckpt, "--size", "7x7"] + base + out, capsys)
    assert "need 0 < min < max" in run_expecting_error(
        ["--ckpt", ckpt, "--min-depth", "10", "--max-depth", "1"] + base + out, capsys)


def vis_inputs(pred_depth=10.0):
    h, w = 48, 64
    gt = np.zeros((h, w), np.float32)
    gt[20, 30] = 10.0
    return torch.full((3, 24, 32), 0.5), np.full((h, w), pred_depth, np.float32), gt


def test_visualisation_has_labelled_panels_and_a_colour_bar():
    image, pred, gt = vis_inputs()
    png = np.array(evaluate.render_visualisation(image, pred, gt, 0.1, 80.0))
    unlabelled = np.array(evaluate.render_visualisation(image, pred, gt, 0.1, 80.0, labels=("", "", "")))
    header = 16
    assert png.shape == (header + 48 + 40, 3 * 64, 3)
    for k in range(3):  # each panel's title strip holds text
        assert (png[:header, k * 64:(k + 1) * 64] != unlabelled[:header, k * 64:(k + 1) * 64]).any()
    bar = png[header + 48:, 64:]
    assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 20  # a colour ramp, not a blank strip


def test_prediction_and_ground_truth_share_one_depth_scale():
    image, pred, gt = vis_inputs(pred_depth=10.0)
    png = np.array(evaluate.render_visualisation(image, pred, gt, 0.1, 80.0))
    row = 16 + 20
    assert (png[row, 64 + 30] == png[row, 2 * 64 + 30]).all()  # 10 m is one colour in both panels
    off = np.array(evaluate.render_visualisation(image, pred * 2, gt, 0.1, 80.0))
    assert (off[row, 64 + 30] != off[row, 2 * 64 + 30]).any()  # a factor-2 prediction looks off
    assert (evaluate.colorize(np.array([0.0]), 1.0, 80.0) == 0).all()


def test_save_visualisation_writes_the_png_atomically(tmp_path):
    from PIL import Image
    image, pred, gt = vis_inputs()
    evaluate.save_visualisation(str(tmp_path / "v.png"), image, pred, gt, 0.1, 80.0)
    assert [p.name for p in tmp_path.iterdir()] == ["v.png"]
    with Image.open(tmp_path / "v.png") as im:
        assert im.size == (3 * 64, 16 + 48 + 40)


# The protocol's prediction: md4all's evaluator runs the net at its own resolution and upsamples its depth once.
class StandInNet(torch.nn.Module):
    """A depth net stand-in: `scaled_disp(images)` at its own resolution, recording what it was given."""

    def __init__(self, scaled_disp):
        super().__init__()
        self.scaled_disp, self.seen, self.autocast = scaled_disp, [], []

    def forward(self, images, out_size="input"):
        assert out_size == "network", "the evaluation must take the net's output at network resolution"
        self.seen.append(images.clone())
        self.autocast.append(torch.is_autocast_enabled(images.device.type))
        return {"scaled_disp": self.scaled_disp(images)}


def test_depth_at_network_resolution_is_upsampled_once_bilinearly_with_aligned_corners():
    depth = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    net = StandInNet(lambda images: (1.0 / depth).expand(len(images), 1, 2, 2))
    batch = {"input": torch.rand(1, 3, 28, 28), "color": torch.rand(1, 3, 8, 8), "gt": torch.zeros(1, 1, 3, 3)}
    pred = evaluate.net_predictor(net, torch.device("cpu"))(batch)
    # align_corners=True keeps the corners and puts the rest halfway (upsampling 1/depth would not give these)
    assert torch.allclose(pred[0], torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [5.0, 6.0, 7.0]]))
    assert torch.equal(net.seen[0], batch["input"])  # the net sees `input`, not `color`
    del batch["input"]
    evaluate.net_predictor(net, torch.device("cpu"))(batch)
    assert torch.equal(net.seen[1], batch["color"])


def test_flip_post_processing_blends_scaled_disparity_before_it_becomes_depth():
    ramp = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05])  # fixed in image coordinates: not flip-equivariant
    net = StandInNet(lambda images: images[:, :1] + ramp)
    image = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]).expand(1, 3, 1, 5)
    batch = {"input": image, "gt": torch.zeros(1, 1, 1, 5)}
    preds = evaluate.net_predictor(net, torch.device("cpu"), flip_pp=True, by_mode=True)(batch)
    # plain .11 .22 .33 .44 .55; mirror's, un-flipped .15 .24 .33 .42 .51
    assert torch.allclose(preds["plain"][0, 0], 1.0 / torch.tensor([0.11, 0.22, 0.33, 0.44, 0.55]))
    assert torch.allclose(preds["flip_pp"][0, 0], 1.0 / torch.tensor([0.15, 0.23, 0.33, 0.43, 0.55]))
    single = evaluate.net_predictor(net, torch.device("cpu"), flip_pp=True)(batch)
    assert torch.equal(single, preds["flip_pp"])


def test_the_net_runs_in_float32_unless_bf16_is_asked_for():
    net = StandInNet(lambda images: images[:, :1] + 0.1)
    batch = {"input": torch.rand(1, 3, 4, 4), "gt": torch.zeros(1, 1, 4, 4)}
    evaluate.net_predictor(net, torch.device("cpu"))(batch)
    evaluate.net_predictor(net, torch.device("cpu"), bf16=True)(batch)
    assert net.autocast == [False, True]


# The protocol's metrics (md4all's rules).
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
    avg = summarize(metric_totals([a, None, b], ["day-clear"] * 3))
    assert avg["all"]["count"] == 2 and avg["all"]["abs_rel"] == pytest.approx(0.1)
    assert summarize(metric_totals([None], ["day-clear"])) == {}


def test_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="upsample"):
        compute_depth_metrics(np.ones((4, 4)), np.ones((2, 2)))


def test_a_float32_ground_truth_of_exactly_the_minimum_is_not_valid():
    # md4all compares in the ground truth's float32: float32(0.1) > 0.1 is False there (in float64 it is True)
    gt = np.array([0.1, 10.0, 20.0], np.float32)
    pred = np.array([5.0, 12.0, 20.0], np.float32)
    m = compute_depth_metrics(gt, pred, 0.1, 80.0)
    assert m["abs_rel"] == pytest.approx(np.mean([0.2, 0.0]))
    assert m["rmse"] == pytest.approx(math.sqrt(2.0)) and m["a1"] == 1.0
    just_above = np.array([np.nextafter(np.float32(0.1), np.float32(1.0)), 10.0], np.float32)
    assert compute_depth_metrics(just_above, np.array([0.2, 10.0], np.float32), 0.1, 80.0)["a1"] == 0.5


def test_median_scaling_uses_the_lower_middle_value_of_an_even_count():
    # gt medians: lower 2 (numpy's mean of the middle two would be 2.5): pred scaled by 2/1
    m = compute_depth_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4), 0.1, 80.0, median_scaling=True)
    assert m["abs_rel"] == pytest.approx((1 / 1 + 0 / 2 + 1 / 3 + 2 / 4) / 4)
    # pred medians: lower 2 (not 2.5): scale 10/2 = 5 gives 5, 10, 15, 20
    m = compute_depth_metrics(np.full(4, 10.0), np.array([1.0, 2.0, 3.0, 4.0]), 0.1, 80.0, median_scaling=True)
    assert m["abs_rel"] == pytest.approx((0.5 + 0 + 0.5 + 1.0) / 4)


def test_flip_post_process_takes_the_mirror_at_the_left_edge_the_plain_at_the_right_the_mean_between():
    pred = torch.tensor([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])
    of_flipped = torch.tensor([[[[10.0, 20.0, 30.0, 40.0, 50.0]]]])  # un-flipped: 50, 40, 30, 20, 10
    # x = 0, .25, .5, .75, 1: mask = 1, 0, 0, 0, 0 and its mirror 0, 0, 0, 0, 1
    expected = torch.tensor([[[[50.0, 21.0, 16.5, 12.0, 5.0]]]])
    assert torch.allclose(flip_post_process(pred, of_flipped), expected)


def test_flip_post_process_ramps_linearly_over_the_outer_five_percent():
    pred, of_flipped = torch.ones(1, 1, 2, 81), torch.full((1, 1, 2, 81), 3.0)
    out = flip_post_process(pred, of_flipped)[0, 0, 0]
    # x = k / 80; at k = 5 (x = 0.0625) mask = 1 - 20 * 0.0125 = 0.75: 0.75 * 3 + 0.25 * mean(1, 3) = 2.75
    assert out[0].item() == pytest.approx(3.0) and out[-1].item() == pytest.approx(1.0)
    assert out[5].item() == pytest.approx(2.75) and out[75].item() == pytest.approx(1.25)
    assert out[40].item() == pytest.approx(2.0) and out[4].item() == pytest.approx(3.0)


def test_score_loader_scores_each_mode_and_groups_night_rain_as_night():
    batch = {"gt": torch.tensor([[[[10.0, 20.0]]], [[[10.0, 0.0]]]]), "path": ["a", "b"],
             "cond": ["day-clear", "night-rain"]}
    plain = torch.tensor([[[12.0, 20.0]], [[10.0, 5.0]]])
    totals, rows = score_loader([batch], lambda b: {"plain": plain, "flip_pp": plain * 2})
    assert totals["plain"]["day-clear"]["abs_rel"] == pytest.approx(0.1)
    assert totals["flip_pp"]["night"]["count"] == 1 and totals["flip_pp"]["night"]["abs_rel"] == pytest.approx(1.0)
    assert totals["plain"]["all"]["count"] == 2 and rows[1]["flip_pp"]["abs_rel"] == pytest.approx(1.0)
    legacy, rows = score_loader([batch], lambda b: plain)  # what the trainers' validation reads
    assert legacy["night"]["abs_rel"] == pytest.approx(0.0) and rows[0]["abs_rel"] == pytest.approx(0.1)


# The protocol's rules, by hand values.

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ground_truth_exactly_at_the_cap_or_at_the_minimum_is_not_scored(dtype):
    """md4all scores min < gt < max: strict at both ends (nuScenes 80 m, RobotCar 50 m)."""
    gt = np.array([10.0, 80.0, 0.1, 20.0], dtype)
    pred = np.array([12.0, 40.0, 5.0, 20.0], dtype)
    m = compute_depth_metrics(gt, pred, 0.1, 80.0)
    # only 10 and 20 m count: abs_rel (0.2 + 0) / 2; with 80 m it would be 0.7 / 3, with 0.1 m about 16
    assert m["abs_rel"] == pytest.approx(0.1, rel=1e-6) and m["rmse"] == pytest.approx(np.sqrt(2.0), rel=1e-6)
    robotcar = compute_depth_metrics(np.array([10.0, 50.0, 20.0], dtype), np.array([12.0, 25.0, 20.0], dtype),
                                     0.1, 50.0)
    assert robotcar["abs_rel"] == pytest.approx(0.1, rel=1e-6) and robotcar["a1"] == 1.0


def test_depth_is_upsampled_bilinearly_with_aligned_corners_by_hand_values():
    # [1, 3] to width 4: aligned corners put the samples at 0, 1/3, 2/3, 1 of the way: 1, 5/3, 7/3, 3
    # (half-pixel centres would give 1, 1.5, 2.5, 3)
    row = torch.tensor([[[[1.0, 3.0]]]])
    assert torch.allclose(upsample_depth(row, (1, 4))[0, 0, 0], torch.tensor([1.0, 5 / 3, 7 / 3, 3.0]))
    square = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    expected = torch.tensor([[1.0, 5 / 3, 7 / 3, 3.0], [3.0, 11 / 3, 13 / 3, 5.0], [5.0, 17 / 3, 19 / 3, 7.0]])
    assert torch.allclose(upsample_depth(square, (3, 4))[0, 0], expected)
    assert upsample_depth(square, (2, 2)) is square  # already at the ground-truth size: untouched


class DisparityStandIn(torch.nn.Module):
    """A depth net that returns a fixed scaled disparity at its 'network resolution'."""

    def __init__(self, scaled_disp):
        super().__init__()
        self.scaled_disp = scaled_disp

    def forward(self, images, out_size="input"):
        return {"scaled_disp": self.scaled_disp.expand(len(images), -1, -1, -1)}


def test_the_net_and_a_prediction_folder_are_both_upsampled_with_aligned_corners(tmp_path):
    net = DisparityStandIn(torch.tensor([[[[1.0, 1 / 3]]]]))  # depth 1 m and 3 m
    depths = predict_depths(net, torch.rand(1, 3, 14, 28), (1, 4))
    aligned = torch.tensor([1.0, 5 / 3, 7 / 3, 3.0])
    assert torch.allclose(depths["plain"][0, 0, 0], aligned)
    (tmp_path / "cam").mkdir()
    np.save(tmp_path / "cam" / "a.npy", np.array([[1.0, 3.0]], np.float32))
    assert torch.allclose(evaluate.load_prediction(str(tmp_path), "cam/a.jpg", (1, 4))[0], aligned)


def test_delta_thresholds_are_powers_of_1_25():
    gt = np.full(6, 10.0)
    # ratios max(gt/pred, pred/gt): 1.2, 1.3, 1.6, 1.9, 2.0 and 1/0.52 = 1.923 (from below)
    pred = np.array([12.0, 13.0, 16.0, 19.0, 20.0, 5.2])
    m = compute_depth_metrics(gt, pred, 0.1, 80.0)
    # 1.25 = 1.25, 1.25^2 = 1.5625, 1.25^3 = 1.953 (1.25 * 2 = 2.5 or * 3 = 3.75 would count every ratio)
    assert (m["a1"], m["a2"], m["a3"]) == pytest.approx((1 / 6, 2 / 6, 5 / 6))
    exactly = compute_depth_metrics(np.full(2, 10.0), np.array([15.625, 10.0]), 0.1, 80.0)
    assert exactly["a2"] == 0.5  # a ratio of exactly 1.25^2 is not below it


def test_robotcar_is_scored_on_its_test_split_up_to_50_m_and_median_scaled_on_request(tmp_path):
    import json
    from worlds import DAY, NIGHT, make_robotcar
    root = make_robotcar(tmp_path / "robotcar")
    (tmp_path / "robotcar" / "splits" / f"{DAY}_val_stride_1.txt").write_text("200 300 400\n")  # val != test
    for sequence, stamps in ((DAY, (100, 200, 300, 400)), (NIGHT, (900, 1000, 1100))):
        for t in stamps:
            path = tmp_path / "pred" / sequence / "stereo" / "left" / f"{t}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.full((4, 4), 70.0, np.float32))
    base = ["--pred-dir", str(tmp_path / "pred"), "--dataset", "robotcar", "--data-root", root, "--workers", "0",
            "--size", "24x40"]
    assert evaluate.parse_args(base)[1].min_depth == 0.1
    summary = evaluate.main(base + ["--out", str(tmp_path / "eval")])
    # each frame's ground truth holds 10 m and 5 m; 70 m is scored as the 50 m cap: (40/10 + 45/5) / 2
    assert summary["all"]["count"] == 2 and summary["all"]["abs_rel"] == pytest.approx(6.5)
    with open(tmp_path / "eval" / "metrics.json") as f:
        paths = [row["path"] for row in json.load(f)["per_image"]]
    assert paths == [f"{DAY}/stereo/left/200.png", f"{NIGHT}/stereo/left/1000.png"]  # md4all's test lines
    scaled = evaluate.main(base + ["--out", str(tmp_path / "scaled"), "--median-scaling"])
    # 70 m scaled to the lower median of {5, 10} m: 5 m everywhere, (5/10 + 0/5) / 2
    assert scaled["all"]["abs_rel"] == pytest.approx(0.25)


def test_check_data_finds_a_cut_lidar_scan_before_inference_and_is_off_by_default(tiny_world, tmp_path, monkeypatch,
                                                                                 capsys):
    import os
    import re
    import shutil

    import data
    shutil.copytree(tiny_world, tmp_path / "world")
    data.load_index.cache_clear()
    val = data.NuScenesDepth(str(tmp_path / "world"), split="val")
    broken = os.path.join(val.root, val.index.lidar_record(val.items[-1][0])["filename"])  # the last one scored
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) - 7)
    argv = ["--ckpt", tiny_checkpoint(tmp_path / "ckpt.pt"), "--data-root", val.root, "--size", "56x96",
            "--workers", "0", "--out", str(tmp_path / "eval")]
    predictions = []
    predict_depths = evaluate.predict_depths
    monkeypatch.setattr(evaluate, "predict_depths", lambda *a, **k: predictions.append(1) or predict_depths(*a, **k))
    line = run_expecting_error(argv + ["--check-data"], capsys)
    assert re.search(rf"1 of \d+ data files are broken: LiDAR file {re.escape(broken)} has \d+ bytes", line)
    assert line.endswith("or drop --check-data to skip this check")
    assert predictions == []  # failed before the first image was predicted
    monkeypatch.setattr(data, "check_files", lambda *a, **k: pytest.fail("checked without --check-data"))
    line = run_expecting_error(argv, capsys)  # as before the check existed: after the images before it
    assert broken in line and "data files are broken" not in line and len(predictions) > 0


# DrivingStereo's weather sets (docs/method.md §5): WeatherDepth's rule, every gt > 0 scored, none capped

def drivingstereo_predictions(root, folder, depth_of):
    """A constant .npy prediction of depth_of[weather] metres for every frame of the fake tree, at 8x18."""
    import os

    from worlds import DS_FRAMES
    for weather, names in DS_FRAMES.items():
        os.makedirs(folder / weather / "left-image-full-size", exist_ok=True)
        for name in names:
            np.save(folder / weather / "left-image-full-size" / f"{name}.npy",
                    np.full((8, 18), depth_of[weather], np.float32))


def test_drivingstereo_scores_each_weather_on_every_positive_gt_with_hand_values(tmp_path, capsys):
    import json

    from worlds import make_drivingstereo
    root = make_drivingstereo(tmp_path / "ds")
    drivingstereo_predictions(root, tmp_path / "pred", {"foggy": 10.0, "rainy": 20.0})
    summary = evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--dataset", "drivingstereo", "--data-root", root,
                             "--weather", "foggy", "rainy", "--workers", "0", "--save-vis", "1",
                             "--out", str(tmp_path / "eval")])
    # bands of 10, 20 and 100 m (the 100 m band scored: no cap on the ground truth), each a third of the pixels
    foggy = dict(abs_rel=(0 + 0.5 + 0.9) / 3, sq_rel=(0 + 100 / 20 + 90 ** 2 / 100) / 3,
                 rmse=math.sqrt((0 + 100 + 90 ** 2) / 3), a1=1 / 3, a3=1 / 3)  # ratios 1, 2, 10
    rainy = dict(abs_rel=(1 + 0 + 0.8) / 3, rmse=math.sqrt((100 + 0 + 80 ** 2) / 3), a1=1 / 3)  # ratios 2, 1, 5
    for group, hand in (("foggy", foggy), ("rainy", rainy)):
        for k, v in hand.items():
            assert summary[group][k] == pytest.approx(v, rel=1e-6), (group, k)
    assert summary["foggy"]["count"] == 2 and summary["rainy"]["count"] == 1
    assert summary["all"]["abs_rel"] == pytest.approx((2 * foggy["abs_rel"] + rainy["abs_rel"]) / 3)
    table = capsys.readouterr().out
    assert table.index("foggy") < table.index("rainy") < table.index("all")
    csv = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in csv[1:]] == ["foggy", "rainy", "all"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["args"]["weather"] == ["foggy", "rainy"]
    assert sorted(p.name for p in (tmp_path / "eval" / "vis").iterdir()) == ["foggy_001.png", "rainy_001.png"]


def test_drivingstereo_with_the_md4all_cap_would_drop_the_far_band():
    from worlds import drivingstereo_depth
    gt, pred = drivingstereo_depth(), np.full((16, 36), 10.0, np.float32)
    assert compute_depth_metrics(gt, pred, cap_gt=False)["abs_rel"] == pytest.approx(1.4 / 3)
    assert compute_depth_metrics(gt, pred)["abs_rel"] == pytest.approx(0.25)  # only 10 and 20 m below 80


def test_drivingstereo_net_run_reads_frames_at_the_net_size_and_gt_at_full_size(tmp_path):
    from worlds import make_drivingstereo
    root = make_drivingstereo(tmp_path / "ds")
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    summary = evaluate.main(["--ckpt", ckpt, "--dataset", "drivingstereo", "--data-root", root, "--size", "14x28",
                             "--workers", "0", "--out", str(tmp_path / "eval")])
    assert set(summary) == {"foggy", "rainy", "all"} and summary["all"]["count"] == 3


# Common corruptions (docs/method.md §5): RoboDepth's protocol on any dataset

def needs_imagecorruptions():
    pytest.importorskip("imagecorruptions", reason=f"optional: {evaluate.CORRUPTIONS_INSTALL}")


def test_robodepth_scores_equal_hand_values():
    clean = {"all": {"abs_rel": 0.1, "a1": 0.9}}  # DEE = (0.1 - 0.9 + 1) / 2 = 0.1
    ours = {"fog": {1: {"all": {"abs_rel": 0.2, "a1": 0.8}}, 3: {"all": {"abs_rel": 0.4, "a1": 0.6}}}}  # DEE .2, .4
    base_clean = {"all": {"abs_rel": 0.2, "a1": 0.8}}  # DEE 0.2
    base = {"fog": {1: {"all": {"abs_rel": 0.4, "a1": 0.6}}, 3: {"all": {"abs_rel": 0.6, "a1": 0.4}}}}  # DEE .4, .6
    scores = evaluate.robustness(clean, ours, base_clean, base)
    fog = scores["per_corruption"]["fog"]
    assert scores["dee_clean"] == pytest.approx(0.1) and fog["dee"] == pytest.approx(0.3)
    assert fog["ce"] == pytest.approx(100 * (0.2 + 0.4) / (0.4 + 0.6))  # 60 %
    assert fog["rce"] == pytest.approx(100 * (0.1 + 0.3) / (0.2 + 0.4))  # 66.7 %
    assert fog["rr"] == pytest.approx(100 * (0.8 + 0.6) / (2 * 0.9))  # 77.8 %
    assert scores["mce"] == pytest.approx(fog["ce"]) and "mce" not in evaluate.robustness(clean, ours)


def test_a_corrupted_frame_is_seeded_by_frame_and_corruption_and_leaves_the_ground_truth_alone(tiny_world):
    needs_imagecorruptions()
    import data
    dataset = data.NuScenesDepth(tiny_world, split="val", size=(36, 64))
    noisy = evaluate.CorruptedFrames(dataset, "gaussian_noise", 3)
    a, b, clean = noisy[0], noisy[0], dataset[0]
    assert torch.equal(a["input"], b["input"]) and not torch.equal(a["input"], clean["input"])
    assert torch.equal(a["gt"], clean["gt"]) and "color" not in a
    assert not torch.equal(noisy[1]["input"] - dataset[1]["input"], a["input"] - clean["input"])  # per-frame noise
    for severity in (1, 5):  # one draw, scaled: the same noise pattern at every severity
        assert evaluate.corruption_seed(a["path"], "gaussian_noise") == evaluate.corruption_seed(a["path"],
                                                                                                  "gaussian_noise")
    milder = evaluate.CorruptedFrames(dataset, "gaussian_noise", 1)[0]["input"]
    assert (milder - clean["input"]).abs().mean() < (a["input"] - clean["input"]).abs().mean()


def test_corruption_run_writes_tables_csv_plot_and_a_baseline_gives_ce_of_100_against_itself(tiny_world, tmp_path,
                                                                                               capsys):
    needs_imagecorruptions()
    import json
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "eval"
    evaluate.main(["--ckpt", ckpt, "--data-root", tiny_world, "--size", "36x64", "--workers", "0",
                   "--corruptions", "gaussian_noise", "contrast", "--severities", "1", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "corruptions, plain prediction" in printed and "abs_rel 3" in printed and "RR %" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["corruptions"]) == {"gaussian_noise", "contrast"}
    noise = report["corruptions"]["gaussian_noise"]
    assert set(noise) == {"1", "3", "mean"}
    assert noise["mean"]["plain"]["all"]["abs_rel"] == pytest.approx(
        (noise["1"]["plain"]["all"]["abs_rel"] + noise["3"]["plain"]["all"]["abs_rel"]) / 2)
    csv = (out / "corruptions.csv").read_text().splitlines()
    assert csv[0].startswith("corruption,severity,mode,condition,count,abs_rel")
    assert any(line.startswith("contrast,mean,plain,all,") for line in csv)
    assert (out / "corruptions.png").read_bytes()[:4] == b"\x89PNG"
    by_mode = {n: {s: report["corruptions"][n][str(s)]["plain"] for s in (1, 3)} for n in report["corruptions"]}
    base_clean, base, label = evaluate.read_baseline(str(out / "metrics.json"), list(by_mode), [1, 3], "plain")
    assert label == "baseline"  # the run had no --label
    scores = evaluate.robustness(report["summary"]["plain"], by_mode, base_clean, base)
    assert scores["mce"] == pytest.approx(100) and scores["mrce"] == pytest.approx(100)
    with pytest.raises(ValueError, match="lacks fog 1: run the baseline with the same --corruptions"):
        evaluate.read_baseline(str(out / "metrics.json"), ["fog"], [1], "plain")


def test_without_the_corruption_package_the_error_is_one_line_with_the_pip_command(tiny_world, tmp_path, capsys,
                                                                                  monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)
    with pytest.raises(SystemExit):
        evaluate.main(["--ckpt", tiny_checkpoint(tmp_path / "ckpt.pt"), "--data-root", tiny_world, "--workers", "0",
                       "--corruptions", "fog", "--out", str(tmp_path / "eval")])
    assert capsys.readouterr().err.strip() == ("evaluate.py: error: --corruptions needs the imagecorruptions package: "
                                               "pip install imagecorruptions-imaug (requirements-extras.txt)")
    assert not (tmp_path / "eval").exists()
