"""GDT (gdt.py, docs/method.md §1) on random tiny models: 64x64 generation, 2 steps, 3 source images."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import data
import gdt
import model
from worlds import street_depth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # tools/ holds scripts, not a package
import gdt_report  # noqa: E402

SOURCES = {"a.png": ((48, 80), "RGB"), "sub/b.png": ((60, 60), "L"), "sub/c.jpg": ((50, 70), "RGB")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_gdt_models):
    """A folder dataset (RGB PNG, greyscale PNG, JPEG of different sizes), real-style reference
    folders per condition, and the tiny models written once to the folder gdt.py --models-dir reads."""
    root = tmp_path_factory.mktemp("gdt")
    rng = np.random.default_rng(0)
    for key, ((h, w), mode) in SOURCES.items():
        (root / "data" / key).parent.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).convert(mode).save(root / "data" / key)
    for cond in ("night", "rain"):
        (root / "styles" / cond).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((40, 40, 3)) * 255 * (i + 1) / 3).astype(np.uint8)).save(
                root / "styles" / cond / f"{i}.png")
    (root / "models").symlink_to(tiny_gdt_models)
    return root


def cli(world, out, *extra):
    return ["--models-dir", str(world / "models"), "--tiny", "--steps", "2", "--gen-size", "64x64", "--dataset",
            "folder", "--data-root", str(world / "data"), "--out", str(out), "--style-dir", str(world / "styles"),
            "--cond", "night", "rain", *extra]


def library_translator(world, **settings):
    """What cli() builds, through the library: Settings, gdt_model_paths and styles, no command line."""
    styles = {c: sorted(str(p) for p in (world / "styles" / c).iterdir()) for c in ("night", "rain")}
    return gdt.build_translator(gdt.Settings(steps=2, gen_size=(64, 64), tiny=True, **settings),
                                gdt.gdt_model_paths(world / "models"), styles)


def outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.suffix in (".png", ".jpg")}


@pytest.fixture(scope="module")
def first_run(world):
    gdt.main(cli(world, world / "out", "--batch-size", "3"))
    return world / "out"


@pytest.fixture(scope="module")
def translator(world):
    return library_translator(world)


@pytest.fixture(scope="module")
def lcm_translator(world):
    return library_translator(world, sampler="lcm")


def redraw_cli(world, first_run, out, *extra):
    """Night only, re-drawn while under the median first-draw delta1 of the plain run: some frames
    pass at once, the others are drawn again."""
    first = data.read_manifests(first_run / "night")
    threshold = float(np.median([r["agreement"]["delta1"] for r in first.values()]))
    return cli(world, out, "--cond", "night", "--min-agreement", str(threshold), "--keep-rejected", *extra)


@pytest.fixture(scope="module")
def redraw_run(world, first_run):
    gdt.main(redraw_cli(world, first_run, world / "redraw", "--batch-size", "3"))
    return world / "redraw"


def luminance_depth(image):
    """A stand-in depth model: inverse depth = brightness."""
    return np.asarray(gdt.as_rgb8(image).convert("L"), dtype=np.float64)


def street_scene(h=48, w=80):
    """Near = bright: a road nearing towards the bottom, a box in front of the road behind it."""
    inv = 20 + 200 * np.mgrid[:h, :w][0] / (h - 1)
    inv[8:24, 50:70] = 240
    return Image.fromarray(inv.astype(np.uint8)).convert("RGB")


def test_seed_is_a_stable_hash_of_key_condition_and_attempt():
    expected = int.from_bytes(hashlib.sha256(b"night/samples/CAM_FRONT/x.jpg").digest()[:8], "big") >> 1
    assert gdt.sample_seed("samples/CAM_FRONT/x.jpg", "night") == expected
    assert gdt.sample_seed("samples/CAM_FRONT/x.jpg", "night", attempt=0) == expected
    second = int.from_bytes(hashlib.sha256(b"night/samples/CAM_FRONT/x.jpg/1").digest()[:8], "big") >> 1
    assert gdt.sample_seed("samples/CAM_FRONT/x.jpg", "night", attempt=1) == second != expected
    assert gdt.sample_seed("samples/CAM_FRONT/x.jpg", "rain") != expected
    assert gdt.sample_seed("samples/CAM_FRONT/y.jpg", "night") != expected
    assert 0 <= expected < 2 ** 63


def test_prompt_is_condition_phrase_then_caption():
    assert gdt.condition_prompt("night", "a car on a road") == "At night, a car on a road"
    assert gdt.condition_prompt("rain", "a car") == "In a rainy day, a car"
    assert gdt.condition_prompt("snow", "a car") == "In a snowy day, a car"
    assert gdt.condition_prompt("fog", "") == "In a foggy day"
    with pytest.raises(ValueError, match="unknown condition 'dusk'.*night, rain, snow, fog"):
        gdt.condition_prompt("dusk", "a car")


def test_tiled_depth_is_seamless_when_each_tile_has_its_own_scale_and_shift():
    yy, xx = np.mgrid[:40, :100]
    image = Image.fromarray((2 * xx + yy).astype(np.uint8))
    rng = np.random.default_rng(2)

    def predict(crop):  # the true inverse depth of the crop, in an arbitrary scale and shift
        return rng.uniform(0.5, 3) * np.asarray(crop, dtype=np.float64) + rng.uniform(-5, 5)
    control = gdt.control_depth(predict, image, tiles=2)
    truth = 2 * xx + yy
    np.testing.assert_allclose(control[..., 1], (truth - truth.min()) / (truth.max() - truth.min()), atol=1e-9)


def test_control_image_is_three_channel_in_unit_range_with_near_bright():
    inv = np.ones((30, 40))
    inv[20:, :] = 5.0  # large inverse depth = near (the road in front of the car)
    control = gdt.control_depth(lambda image: inv, Image.new("RGB", (40, 30)))
    assert control.shape == (30, 40, 3) and control.dtype == np.float32
    assert control[25, 5].tolist() == [1.0, 1.0, 1.0] and control[5, 5].tolist() == [0.0, 0.0, 0.0]


def test_depth_model_control_map_has_the_source_size_whole_or_tiled(world, translator):
    image = Image.open(world / "data" / "a.png")
    for tiles in (1, 2):
        control = gdt.control_depth(translator.depth, image, tiles)
        assert control.shape == (48, 80, 3) and control.min() == 0 and control.max() == 1


def test_precomputed_control_maps_are_read_and_missing_ones_named(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.array([[0, 1000], [3000, 4000]], dtype=np.uint16)).save(tmp_path / "sub" / "f.png")
    control = gdt.load_control_map(tmp_path, "sub/f.jpg")
    np.testing.assert_allclose(control[..., 0], [[0, 0.25], [0.75, 1]], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="--control-dir: no depth map .*g.png for frame sub/g.jpg"):
        gdt.load_control_map(tmp_path, "sub/g.jpg")
    (tmp_path / "sub" / "h.png").write_bytes((tmp_path / "sub" / "f.png").read_bytes()[:40])  # cut short
    with pytest.raises(ValueError, match="image unreadable: .*h.png"):
        gdt.load_control_map(tmp_path, "sub/h.jpg")


def test_night_darkening_scales_the_mean_to_a_ratio_of_the_day_mean():
    day = Image.new("RGB", (10, 10), (100, 100, 100))
    out = gdt.darken_night(Image.new("RGB", (10, 10), (200, 200, 200)), day, 0.4)
    assert np.asarray(out).mean() == pytest.approx(40, abs=1)
    dark = Image.new("RGB", (10, 10), (20, 20, 20))
    assert np.asarray(gdt.darken_night(dark, day, 0.4)).mean() == 20  # never brightened


def test_every_source_and_condition_gets_an_output_of_the_source_size_mode_and_format(world, first_run):
    for cond in ("night", "rain"):
        for key, ((h, w), mode) in SOURCES.items():
            with Image.open(first_run / cond / key) as out:
                assert (out.size, out.mode) == ((w, h), mode)
                assert out.format == ("JPEG" if key.endswith(".jpg") else "PNG")
    assert not list(first_run.rglob(".*tmp*")), "temp files left behind"


def test_manifest_has_one_valid_record_per_output(world, first_run):
    for cond, phrase in (("night", "At night"), ("rain", "In a rainy day")):
        records = [json.loads(line) for line in (first_run / cond / "manifest.rank0.jsonl").read_text().splitlines()]
        assert sorted(r["key"] for r in records) == sorted(SOURCES)
        for r in records:
            assert r["output"] == r["key"] and r["source"] == str(world / "data" / r["key"])
            assert r["status"] == "ok" and set(r["agreement"]) == {"abs_rel", "delta1", "scored"}
            assert r["attempts"] == [dict(attempt=0, seed=r["seed"], agreement=r["agreement"])]
            assert "lcm_lora" not in r["models"]
            assert r["models"]["depth_model"] == str(world / "models" / "Depth-Anything-V2-Small-hf")
            assert r["prompt"] == f"{phrase}, {r['caption']}".rstrip(", ") and r["cond"] == cond
            assert r["seed"] == gdt.sample_seed(r["key"], cond)
            assert os.path.dirname(r["style"]) == str(world / "styles" / cond)
            assert r["settings"]["steps"] == 2 and set(r["models"]) >= {"sd_model", "controlnet", "ip_adapter"}


def test_rerun_skips_everything(world, first_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in first_run.rglob("*") if p.is_file()}
    gdt.main(cli(world, first_run))
    assert "0 images to translate" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in first_run.rglob("*") if p.is_file()} == before


def test_deleting_one_output_regenerates_exactly_that_one_byte_identical(world, first_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    (out / "night" / "sub" / "c.jpg").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".png", ".jpg")}
    gdt.main(cli(world, out, "--batch-size", "3"))
    assert outputs(out) == outputs(first_run)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".png", ".jpg")
            if p.name != "c.jpg" or p.parent.parent.name != "night"} == before
    new = (out / "night" / "manifest.rank0.jsonl").read_text().splitlines()[len(SOURCES):]
    assert [json.loads(line)["key"] for line in new] == ["sub/c.jpg"]


def test_redraws_are_the_same_with_batch_size_1_on_two_ranks(world, first_run, redraw_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        gdt.main(redraw_cli(world, first_run, out, "--batch-size", "1"))
    keys = [[json.loads(line)["key"] for line in (out / "night" / f"manifest.rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
    records = data.read_manifests(out / "night")
    assert records == data.read_manifests(redraw_run / "night") and sorted(records) == sorted(SOURCES)
    assert outputs(out) == outputs(redraw_run)
    first = data.read_manifests(first_run / "night")
    assert any(len(r["attempts"]) > 1 for r in records.values()), "no frame was drawn again"
    for key, r in records.items():
        seeds = [gdt.sample_seed(key, "night", n) for n in range(len(r["attempts"]))]
        assert [a["seed"] for a in r["attempts"]] == seeds
        assert r["attempts"][0]["agreement"] == first[key]["agreement"]  # the first draw is the plain run's
        passed = r["agreement"]["delta1"] >= r["settings"]["min_agreement"]
        assert r["status"] == ("ok" if passed else "rejected") and (passed or len(r["attempts"]) == 3)
        assert (out / "night" / key).exists() == passed and (out / "night" / "rejected" / key).exists() != passed
        if passed and r["attempt"] == 0:
            assert (out / "night" / key).read_bytes() == (first_run / "night" / key).read_bytes()


def test_each_sample_reaches_the_unet_with_its_own_style_embedding(world, translator, monkeypatch):
    styles = sorted(str(p) for p in (world / "styles" / "night").iterdir())
    embeds = gdt.style_embeds(translator, [styles[0], styles[1], styles[0]])
    assert embeds.shape[:2] == (6, 1) and not embeds[:3].any()  # zero negative half first
    assert torch.equal(embeds[3], embeds[5]) and not torch.equal(embeds[3], embeds[4])
    seen, unet, forward = [], translator.pipe.unet, translator.pipe.unet.forward
    monkeypatch.setattr(unet, "forward", lambda *a, **k: seen.append(k["added_cond_kwargs"]) or forward(*a, **k))
    monkeypatch.setattr(translator, "micro_batch", 3)  # the GPU path: one batched call
    keys = sorted(SOURCES)
    images = [Image.open(world / "data" / k) for k in keys]
    records = gdt.translate_batch(translator, images, keys, "night")[1]
    expected = gdt.style_embeds(translator, [r["style"] for r in records])
    assert len(seen) == 2 and all(torch.equal(s["image_embeds"][0], expected) for s in seen)


def test_batched_and_one_at_a_time_generation_agree(world, translator, monkeypatch):
    keys = sorted(SOURCES)
    images = [Image.open(world / "data" / k) for k in keys]
    monkeypatch.setattr(translator, "micro_batch", 3)
    batched = gdt.translate_batch(translator, images, keys, "rain")[0]
    monkeypatch.setattr(translator, "micro_batch", 1)
    alone = [gdt.translate_batch(translator, [im], [k], "rain")[0][0] for im, k in zip(images, keys)]
    for b, a in zip(batched, alone):  # batched kernels round differently in the last bits, nothing more
        assert np.abs(np.asarray(b, np.int16) - np.asarray(a, np.int16)).max() <= 1


def test_img2img_path_translates_every_frame_at_its_size(world, tmp_path):
    gdt.main(cli(world, tmp_path, "--batch-size", "2", "--strength", "0.5", "--cond", "night"))
    for key, ((h, w), _) in SOURCES.items():
        with Image.open(tmp_path / "night" / key) as im:
            assert im.size == (w, h)


def test_unknown_condition_is_refused(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gdt.parse_args(["--dataset", "folder", "--data-root", str(world / "data"), "--out", str(tmp_path), "--cond", "dusk"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown condition(s) 'dusk'" in err and "--cond/--conds" in err and "night, rain, snow, fog" in err


def test_conditions_are_space_or_comma_separated_under_either_flag_name_without_duplicates(capsys):
    base = ["--data-root", "d", "--out", "o"]
    for given in (["--cond", "night", "rain"], ["--cond", "night,rain"], ["--conds", "night, rain", "night"],
                  ["--conds", "night,", "rain,night"]):
        assert gdt.parse_args(base + given).cond == ["night", "rain"], given
    assert gdt.parse_args(base).cond == ["night", "rain"]
    assert gdt.parse_args(base + ["--conds", "fog,snow", "fog"]).cond == ["fog", "snow"]
    with pytest.raises(SystemExit) as exit_:
        gdt.parse_args(base + ["--conds", "night,dusk"])
    assert exit_.value.code == 2 and "--cond/--conds: unknown condition(s) 'dusk'" in capsys.readouterr().err


def test_models_dir_points_every_model_at_its_standard_folder_and_a_model_flag_wins(world):
    paths = gdt.gdt_model_paths("M", captioner="blip", depth_model="my/depth")
    assert paths == dict(sd_model=os.path.join("M", "stable-diffusion-v1-5"),
                         controlnet=os.path.join("M", "control_v11f1p_sd15_depth"), depth_model="my/depth",
                         lcm_lora=os.path.join("M", "lcm-lora-sdv1-5"), ip_adapter=os.path.join("M", "IP-Adapter"),
                         caption_model=os.path.join("M", "blip-image-captioning-base"),
                         ip_adapter_weight="models/ip-adapter_sd15.bin")
    assert gdt.gdt_model_paths()["sd_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert gdt.gdt_model_paths()["caption_model"] == "Salesforce/blip2-opt-2.7b"
    written = set(os.listdir(world / "models"))  # tiny_models.py fills exactly these folders
    for captioner in ("blip2", "blip"):
        assert {os.path.basename(p) for k, p in gdt.gdt_model_paths("M", captioner).items()
                if k != "ip_adapter_weight"} \
            <= written
    assert (world / "models" / "IP-Adapter" / "models" / "ip-adapter_sd15.bin").exists()


def test_settings_refuse_what_the_pipeline_would_fail_on_for_library_users_too():
    for given, message in ((dict(gen_size=(60, 64)), "--gen-size: give HxW, both multiples of 8"),
                           (dict(sampler="lcm", guidance=4.0), "--guidance must be 1-2"),
                           (dict(steps=4, strength=0.2), r"--strength must be in \(0, 1\]"),
                           (dict(min_agreement=0.5, audit=False), "needs the geometry audit"),
                           (dict(max_tries=0), "--max-tries must be at least 1"),
                           (dict(sampler="ddim"), "--sampler: choose from unipc, lcm")):
        with pytest.raises(ValueError, match=message):
            gdt.Settings(**given)
    assert (gdt.Settings(sampler="lcm").steps, gdt.Settings().guidance) == (4, 7.5)


def test_library_settings_translate_as_the_command_line_does(world, first_run, translator):
    key = "a.png"
    (out, record), = gdt.translate_audited(translator, [Image.open(world / "data" / key)], [key], "night")
    assert record["status"] == "ok" and record["seed"] == gdt.sample_seed(key, "night")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.open(first_run / "night" / key)))
    assert record["agreement"] == data.read_manifests(first_run / "night")[key]["agreement"]


def test_empty_input_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .*images"):
        gdt.main(["--dataset", "folder", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_ip_adapter_without_style_images_is_refused(world, tmp_path):
    with pytest.raises(ValueError, match="--style-dir night=DIR.*--no-ip-adapter"):
        gdt.main(["--models-dir", str(world / "models"), "--tiny", "--dataset", "folder", "--data-root", str(world / "data"),
                  "--out", str(tmp_path)])


def test_unreachable_model_id_fails_at_once_naming_it_and_the_alternatives(world, tmp_path):
    with pytest.raises(model.ModelUnavailable, match="nobody/no-such-depth-model.*--control-dir or --models-dir"):
        gdt.main(["--captioner", "none", "--depth-model", "nobody/no-such-depth-model", "--no-ip-adapter",
                  "--dataset", "folder", "--data-root", str(world / "data"), "--out", str(tmp_path)])


def test_output_inside_the_dataset_is_refused(world):
    with pytest.raises(ValueError, match="inside --data-root"):
        gdt.main(["--dataset", "folder", "--data-root", str(world / "data"), "--out", str(world / "data" / "gdt")])


def test_style_references_can_come_from_the_datasets_own_night_and_rain_training_scenes(tiny_world):
    args = gdt.parse_args(["--dataset", "nuscenes", "--data-root", tiny_world, "--out", "unused",
                           "--cond", "night", "rain", "--style-dir", "data"])
    styles = gdt.style_references(args.style_dir, args.cond, args.dataset, args.data_root, args.version)
    index = data.load_index(tiny_world)
    for cond in ("night", "rain"):
        scenes = {index.sample[index.sample_data[t]["sample_token"]]["scene_token"] for t in
                  (next(k for k, v in index.sample_data.items() if v["filename"] == os.path.relpath(p, tiny_world))
                   for p in styles[cond])}
        described = {s["token"]: s for s in index.scenes}
        assert len(styles[cond]) == 4  # the 4 key frames of the one training scene of that condition
        assert all(cond in described[s]["description"].lower() and described[s]["name"] not in
                   data.val_scene_names("v1.0-trainval") for s in scenes)
    with pytest.raises(ValueError, match="snow"):
        gdt.style_references(["data"], ["snow"], "nuscenes", tiny_world, "v1.0-trainval")


def test_translation_that_is_the_day_image_itself_has_perfect_agreement(world, translator):
    day = Image.open(world / "data" / "a.png")
    control = gdt.control_depth(translator.depth, gdt.as_rgb8(day))
    metrics, _ = gdt.geometry_agreement(gdt.control_depth(translator.depth, day), control)
    assert metrics["abs_rel"] < 1e-9 and metrics["delta1"] == 1.0


def test_upside_down_translation_fails_the_threshold_and_is_rejected_not_written(world, tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    for key in ("same.png", "flipped.png"):
        street_scene().save(tmp_path / "data" / key)

    def fake_translate(translator, images, keys, cond, captions=None, controls=None, attempt=0):
        outs = [im if k == "same.png" else im.transpose(Image.FLIP_TOP_BOTTOM) for im, k in zip(images, keys)]
        return outs, [dict(cond=cond, attempt=attempt, key=k, seed=gdt.sample_seed(k, cond, attempt),
                           **gdt.run_record(translator)) for k in keys]
    monkeypatch.setattr(gdt, "load_depth_model", lambda *args: luminance_depth)
    monkeypatch.setattr(gdt, "translate_batch", fake_translate)
    out = tmp_path / "out" / "night"
    run = ["--models-dir", str(world / "models"), "--tiny", "--captioner", "none", "--no-ip-adapter",
           "--cond", "night", "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
           "--min-agreement", "0.9"]
    gdt.main(run + ["--max-tries", "2"])
    records = data.read_manifests(out)
    assert records["same.png"]["status"] == "ok" and records["same.png"]["agreement"]["delta1"] == 1
    flipped = records["flipped.png"]
    assert flipped["status"] == "rejected" and flipped["agreement"]["delta1"] < 0.5
    assert [a["seed"] for a in flipped["attempts"]] == [gdt.sample_seed("flipped.png", "night", n) for n in (0, 1)]
    assert (out / "same.png").exists() and not (out / "flipped.png").exists() and not (out / "rejected").exists()
    capsys.readouterr()
    gdt.main(run + ["--max-tries", "2"])  # rejected under the same threshold: done
    assert "0 images to translate" in capsys.readouterr().out
    gdt.main(run + ["--max-tries", "3", "--keep-rejected"])  # a new threshold: drawn again
    assert "1 images to translate" in capsys.readouterr().out
    assert len(data.read_manifests(out)["flipped.png"]["attempts"]) == 3 and (out / "rejected" / "flipped.png").exists()


def test_report_summarises_counts_rejections_percentiles_and_the_worst_frames(world, redraw_run, tmp_path):
    summary = gdt_report.main([str(redraw_run), "--out", str(tmp_path), "--models-dir", str(world / "models")])
    assert summary == json.loads((tmp_path / "report.json").read_text())
    records = data.read_manifests(redraw_run / "night")
    night, delta1 = summary["night"], [r["agreement"]["delta1"] for r in records.values()]
    rejected = sum(r["status"] == "rejected" for r in records.values())
    assert (night["count"], night["rejected"], night["audited"]) == (3, rejected, 3)
    assert night["rejection_rate"] == rejected / 3
    assert night["delta1"]["p50"] == pytest.approx(np.median(delta1)) and night["delta1"]["min"] == min(delta1)
    assert Image.open(tmp_path / "night_agreement.png").size == (480, 260)
    worst = night["worst"]  # all 3 have an image: kept rejected or ok
    assert [w["output"] for w in worst] == sorted(records, key=lambda k: records[k]["agreement"]["delta1"])
    for w in worst:  # the sheet's depth maps are the audit's own
        assert w["delta1"] == pytest.approx(records[w["output"]]["agreement"]["delta1"], abs=1e-9)
    assert Image.open(tmp_path / "night_worst.png").height == 18 + 3 * (96 + 18)


def test_report_needs_a_gdt_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gdt_report.parse_args([])
    assert exit_.value.code == 2 and "required: gdt_root" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no manifest"):
        gdt_report.main([str(tmp_path), "--out", str(tmp_path / "r")])


def call_counts(pipe, monkeypatch):
    """Batch size of every UNet call of `pipe`."""
    calls, forward = [], pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))
    return calls


def test_lcm_sampler_runs_on_tiny_models_with_its_lora_folded_into_the_unet(world, translator, lcm_translator,
                                                                            monkeypatch):
    from diffusers import LCMScheduler
    pipe, plain = lcm_translator.pipe, translator.pipe
    assert isinstance(pipe.scheduler, LCMScheduler) and lcm_translator.settings.guidance == 1
    to_q = lambda p: p.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight  # noqa: E731
    assert type(to_q(pipe)) is type(to_q(plain)) and not torch.equal(to_q(pipe), to_q(plain))  # LoRA in the weights
    assert torch.equal(pipe.unet.conv_in.weight, plain.unet.conv_in.weight)  # a layer the LoRA leaves alone
    images = [Image.open(world / "data" / k) for k in sorted(SOURCES)[:2]]
    lcm_calls, plain_calls = call_counts(pipe, monkeypatch), call_counts(plain, monkeypatch)
    outs, records = gdt.translate_batch(lcm_translator, images, sorted(SOURCES)[:2], "night")
    gdt.translate_batch(translator, images[:1], sorted(SOURCES)[:1], "night")
    assert [o.size for o in outs] == [im.size for im in images] and records[0]["models"]["lcm_lora"]
    # one row per image (guidance 1: no negative pass), as many calls as the count says
    assert lcm_calls == [1] * 2 * gdt.denoiser_calls_per_image(lcm_translator.settings) == [1] * 4
    assert plain_calls == [2] * (gdt.denoiser_calls_per_image(translator.settings) // 2) == [2, 2]


def test_the_kohya_fp16_lora_fuses_alpha_over_rank_times_up_down_into_linear_and_convolution_layers(
        world, translator, lcm_translator):
    from safetensors.torch import load_file
    lora = load_file(gdt.lora_file(gdt.gdt_model_paths(world / "models")["lcm_lora"]))
    assert all(k.startswith("lora_unet_") and v.dtype == torch.float16 for k, v in lora.items())
    unet, plain = lcm_translator.pipe.unet, translator.pipe.unet
    layers = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",  # linear
              "down_blocks.0.resnets.0.conv1",  # 3x3 convolution
              "down_blocks.0.downsamplers.0.conv",  # a sampler's convolution
              "up_blocks.0.upsamplers.0.conv"]
    for name in layers:
        key = "lora_unet_" + name.replace(".", "_")
        down, up = lora[key + ".lora_down.weight"].float(), lora[key + ".lora_up.weight"].float()
        rank, alpha = down.shape[0], lora[key + ".alpha"].item()
        assert alpha != rank
        change = (alpha / rank) * (up.flatten(1) @ down.flatten(1)).view_as(plain.get_submodule(name).weight)
        fused = unet.get_submodule(name).weight - plain.get_submodule(name).weight
        torch.testing.assert_close(fused, change, rtol=1e-4, atol=1e-6)


def test_a_lora_with_a_module_the_unet_lacks_stops_before_the_fuse_naming_it(world, tmp_path, caplog):
    from safetensors.torch import load_file, save_file
    paths = gdt.gdt_model_paths(world / "models")
    lora = load_file(gdt.lora_file(paths["lcm_lora"]))
    bogus = "lora_unet_down_blocks_7_attentions_0_proj_in"  # no such block in the UNet
    lora.update({bogus + ".lora_down.weight": torch.zeros(8, 32, dtype=torch.float16),
                 bogus + ".lora_up.weight": torch.zeros(32, 8, dtype=torch.float16),
                 bogus + ".alpha": torch.tensor(4.0, dtype=torch.float16)})
    save_file(lora, tmp_path / gdt.LCM_LORA_WEIGHT)
    pipe = gdt.load_pipeline(paths["sd_model"], paths["controlnet"], False, torch.float32)
    before = pipe.unet.down_blocks[0].attentions[0].proj_in.weight.clone()
    with pytest.raises(ValueError, match=rf"1 of its {len(gdt.lora_modules(lora))} modules match no layer.*{bogus}"):
        gdt.fuse_lcm_lora(pipe, str(tmp_path))
    assert torch.equal(pipe.unet.down_blocks[0].attentions[0].proj_in.weight, before)  # nothing fused


def test_lcm_flops_per_image_are_at_most_an_eighth_of_the_default_at_the_same_size(translator, lcm_translator):
    def call_flops(pipe, h=64, w=112):  # one UNet + ControlNet call at batch 1
        latents, text = torch.zeros(1, 4, h // 8, w // 8), torch.zeros(1, 77, 32)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            down, mid = pipe.controlnet(latents, 10, encoder_hidden_states=text,
                                        controlnet_cond=torch.zeros(1, 3, h, w), return_dict=False)
            pipe.unet(latents, 10, encoder_hidden_states=text, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid, added_cond_kwargs={"image_embeds": [torch.zeros(1, 1, 32)]})
        return counter.get_total_flops()
    defaults = [gdt.settings_from_args(gdt.parse_args(["--data-root", "d", "--out", "o", "--sampler", s]))
                for s in ("unipc", "lcm")]
    assert [gdt.denoiser_calls_per_image(a) for a in defaults] == [60, 4]  # 30 steps x 2, 4 steps x 1
    per_call = call_flops(translator.pipe)
    assert per_call > 0 and call_flops(lcm_translator.pipe) == per_call  # the folded LoRA costs nothing
    default_flops, lcm_flops = (gdt.denoiser_calls_per_image(a) * per_call for a in defaults)
    assert lcm_flops <= default_flops / 8


def test_tiny_defaults_to_a_smoke_run_and_help_shows_examples_and_defaults(capsys):
    base = ["--data-root", "d", "--out", "o"]
    parsed = lambda *extra: gdt.settings_from_args(gdt.parse_args(base + list(extra)))  # noqa: E731
    assert (parsed("--tiny").gen_size, parsed("--tiny").steps) == ((64, 112), 2)
    assert (parsed().gen_size, parsed().steps, parsed().guidance) == ((576, 1024), 30, 7.5)
    assert (parsed("--sampler", "lcm").steps, parsed("--sampler", "lcm").guidance) == (4, 1.0)
    assert (parsed("--tiny", "--steps", "5", "--gen-size", "32x48").steps, parsed("--tiny", "--gen-size", "32x48").gen_size) == (
        5, (32, 48))
    assert (gdt.Settings(sampler="lcm").steps, gdt.Settings(sampler="lcm").guidance) == (4, 1.0)  # library: the same
    with pytest.raises(SystemExit) as exit_:
        gdt.parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("python gdt.py --tiny", "--sampler lcm", "tools/gdt_report.py", "(default: 0.6)",
                     "(default: unipc)",
                     "64x112", "24 GB"):
        assert expected in text, expected
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("argv, message", [(["--sampler", "lcm", "--guidance", "4"], "--guidance must be 1-2"),
                                           (["--min-agreement", "80"], r"in \[0, 1\]"),
                                           (["--no-audit", "--min-agreement", "0.8"], "geometry audit"),
                                           (["--keep-rejected"], "--min-agreement too"),
                                           (["--max-tries", "0"], "--max-tries must be at least 1")])
def test_bad_flags_are_refused_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        gdt.parse_args(["--data-root", "d", "--out", "o"] + argv)
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_leftovers_of_killed_runs_are_removed_at_the_next_start(world, first_run, tmp_path):
    shutil.copytree(first_run, tmp_path / "out")  # finished: the next start only cleans up
    dead = subprocess.Popen(["true"])
    dead.wait()
    long_ago = time.time() - 3600
    stale = tmp_path / "out" / "night" / "sub" / f".b.png.tmp{dead.pid}"
    alive = tmp_path / "out" / "night" / f".z.png.tmp{os.getpid()}"
    recent = tmp_path / "out" / "night" / f".y.png.tmp{dead.pid}"  # no such process, but just written
    for path in (stale, alive, recent):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
        os.utime(path, (long_ago, long_ago) if path != recent else None)
    gdt.main(cli(world, tmp_path / "out"))
    assert [p.exists() for p in (stale, alive, recent)] == [False, True, True]


def test_scale_shift_alignment_recovers_an_affine_map():
    pred = np.random.default_rng(1).random((7, 9))
    np.testing.assert_allclose(gdt.align_scale_shift(pred, 2.5 * pred - 0.7), 2.5 * pred - 0.7, atol=1e-12)


def test_agreement_matches_a_hand_computed_case_and_never_explains_a_swap_of_near_and_far():
    control = np.zeros((1, 3, 3), np.float32)
    control[0, 1], control[0, 2] = 0.1, 1  # sky (left out), depth 1 / (1/80 + 0.1 * 79/80) = 800/89, depth 1
    perfect, _ = gdt.geometry_agreement(np.array([[5.0, 2.0, 7.0]]), control)  # any scale and shift; sky ignored
    assert perfect == pytest.approx(dict(abs_rel=0, delta1=1, scored=2 / 3), abs=1e-12)
    # a flat prediction is fitted by the scored pixels' mean, control 0.55, depth 1 / (1/80 + 0.55 * 79/80):
    # 80/44.45 = 1.7998; abs_rel = ((800/89 - 1.7798) / (800/89) + (1.7998 - 1) / 1) / 2, both off by over 1.25
    flat, aligned = gdt.geometry_agreement(np.array([[3.0, 3.0, 3.0]]), control)
    d = 80 / 44.45
    assert flat == pytest.approx(dict(abs_rel=((800 / 89 - d) / (800 / 89) + d - 1) / 2, delta1=0.0, scored=2 / 3))
    np.testing.assert_allclose(aligned, [[0.55, 0.55, 0.55]])
    swapped, _ = gdt.geometry_agreement(np.array([[0.0, 7.0, 2.0]]), control)  # scale -1 would fit
    assert swapped == pytest.approx(flat)
    sky, _ = gdt.geometry_agreement(np.array([[1.0, 2.0, 3.0]]), np.full((1, 3), 0.01))  # nothing near: all scored
    assert sky["scored"] == 1


def test_audit_passes_kept_geometry_with_a_noisy_sky_and_fails_a_shift_a_mirror_and_a_blank_image():
    depth = street_depth()
    inverse = np.where(np.isfinite(depth), 1 / depth, 0.0)
    control = (inverse - inverse.min()) / (inverse.max() - inverse.min())  # as control_depth normalises
    sky, rng = np.isinf(depth), np.random.default_rng(0)
    relative = lambda inv: 3.0 * inv + 0.2  # what a depth model gives: inverse depth up to scale and shift
    noise = 0.01 * rng.standard_normal(control.shape)
    shifted = np.concatenate([np.repeat(control[:, :1], 8, 1), control[:, :-8]], 1)  # 5% of the width
    cases = dict(noisy=relative(control + noise),
                 noisy_sky=relative(np.where(sky, 0.02 + 0.01 * rng.random(control.shape), control) + noise),
                 shifted=relative(shifted), mirrored=relative(control[:, ::-1]),
                 blank=0.5 + 0.001 * rng.standard_normal(control.shape))
    delta1 = {name: gdt.geometry_agreement(pred, control)[0]["delta1"] for name, pred in cases.items()}
    assert delta1["noisy"] > 0.95 and delta1["noisy_sky"] > 0.95  # the sky's reading does not count
    assert max(delta1["shifted"], delta1["mirrored"], delta1["blank"]) < 0.9
    assert gdt.geometry_agreement(cases["noisy_sky"], control, far=0)[0]["delta1"] < 0.9  # scored everywhere


def test_tiny_models_never_replace_a_model_folder_they_did_not_write(tmp_path, capsys):
    import tiny_models
    real = tmp_path / "stable-diffusion-v1-5" / "unet"
    real.mkdir(parents=True)
    (real / "weights.safetensors").write_bytes(b"downloaded")
    with pytest.raises(SystemExit) as exit_:
        data.run_cli(lambda: tiny_models.main(["--out", str(tmp_path)]), "tiny_models.py")
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "stable-diffusion-v1-5" in err and "another --out" in err
    assert (real / "weights.safetensors").read_bytes() == b"downloaded" and sorted(os.listdir(tmp_path)) == [
        "stable-diffusion-v1-5"]


def test_tiny_models_mark_their_folder_and_keep_a_finished_one(tiny_gdt_models):
    import tiny_models
    assert (tiny_gdt_models / tiny_models.MARKER).exists()
    before = {p: p.stat().st_mtime_ns for p in tiny_gdt_models.rglob("*") if p.is_file()}
    tiny_models.write_models(str(tiny_gdt_models))  # a second run over its own finished folder
    assert {p: p.stat().st_mtime_ns for p in tiny_gdt_models.rglob("*") if p.is_file()} == before


def test_an_image_that_does_not_read_back_whole_is_never_given_its_name(tmp_path, monkeypatch):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    real_save = gdt.save_image

    def cut_short(image, file, suffix):  # what a full disk leaves: the first bytes only
        real_save(image, file, suffix)
        Path(file).write_bytes(Path(file).read_bytes()[:300])
    monkeypatch.setattr(gdt, "save_image", cut_short)
    with pytest.raises(ValueError, match="image unreadable"):
        gdt.save_atomic(image, tmp_path / "night" / "a.jpg")
    assert list((tmp_path / "night").iterdir()) == []  # no output, no temp file
    monkeypatch.setattr(gdt, "save_image", real_save)
    gdt.save_atomic(image, tmp_path / "night" / "a.jpg")
    assert Image.open(tmp_path / "night" / "a.jpg").size == (60, 40)


def test_a_record_after_a_torn_last_line_starts_on_a_line_of_its_own(tmp_path, capsys):
    folder = tmp_path / "night"
    gdt.append_record(folder, dict(output="a.png", status="ok"))
    with open(folder / "manifest.rank0.jsonl", "a") as f:
        f.write('{"output": "b.png", "sta')  # a run killed while writing b's record
    assert set(data.read_manifests(folder)) == {"a.png"}  # b is redone
    assert "manifest.rank0.jsonl: skipping its incomplete last line" in capsys.readouterr().err
    gdt.append_record(folder, dict(output="b.png", status="ok"))  # the rerun's record of b
    lines = (folder / "manifest.rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["output"] for line in lines] == ["a.png", "b.png"]
    assert set(data.read_manifests(folder)) == {"a.png", "b.png"}
    (folder / "manifest.rank0.jsonl").write_text(lines[0] + '\n{"output": "c.pn\n' + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"line 2 is not JSON: delete that line"):  # a broken line inside is named
        data.read_manifests(folder)


def test_a_dataset_root_is_never_translated_as_a_folder_of_images_and_nuscenes_is_the_default(tiny_world, tmp_path):
    with pytest.raises(ValueError, match="is a nuScenes root, not a folder of images: pass --dataset nuscenes"):
        gdt.translation_frames("folder", tiny_world, None, "train", str(tmp_path / "out"), ["night"])
    assert gdt.parse_args(["--data-root", tiny_world, "--out", "o"]).dataset == "nuscenes"


def test_report_labels_keep_their_spaces_and_long_names_fit_their_panel_by_their_tail():
    from PIL import ImageDraw, ImageFont
    pen, font = ImageDraw.Draw(Image.new("RGB", (10, 10))), ImageFont.load_default(size=12)
    name = "samples/CAM_FRONT/n008-2018-08-01-15-16-36-0400__CAM_FRONT__1533151603512404.jpg"
    short = gdt_report.fit(pen, name, font, 200)
    assert pen.textlength(short, font=font) <= 200 < pen.textlength(name, font=font)
    assert short.startswith("...") and name.endswith(short[3:]) and len(short) > 10
    assert gdt_report.fit(pen, "a.png", font, 200) == "a.png"
    # a TrueType font draws the space: "control depth" is wider than "controldepth" (the bitmap default is not)
    assert pen.textlength("control depth", font=font) > pen.textlength("controldepth", font=font)


def test_a_broken_source_frame_fails_before_any_model_loads_and_a_finished_one_is_not_read(world, tmp_path,
                                                                                          monkeypatch, capsys):
    shutil.copytree(world / "data", tmp_path / "data")
    broken = tmp_path / "data" / "sub" / "c.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # a cut download: the header reads, the pixels do not
    argv = cli(world, tmp_path / "out")
    argv[argv.index("--data-root") + 1] = str(tmp_path / "data")

    def no_model(*args, **kwargs):
        raise RuntimeError("a model was loaded")
    monkeypatch.setattr(gdt, "build_translator", no_model)
    broken_line = rf"^1 of 3 data files are broken: image unreadable: {re.escape(str(broken))} "
    with pytest.raises(ValueError, match=broken_line):
        gdt.main(argv)
    for cond in ("night", "rain"):  # its translations are done: the run never reads it again
        (tmp_path / "out" / cond / "sub").mkdir(parents=True)
        shutil.copy(world / "data" / "sub" / "c.jpg", tmp_path / "out" / cond / "sub" / "c.jpg")
    with pytest.raises(RuntimeError, match="a model was loaded"):
        gdt.main(argv)
    assert "rank 0: checked 2 files in" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="a model was loaded"):  # --no-check-data: not read ahead
        gdt.main([*argv, "--no-check-data"])


def test_loading_ip_adapter_silences_only_diffusers_empty_float32_notice(translator):
    import logging
    notices = logging.getLogger("diffusers.models.modeling_utils")
    assert gdt.no_empty_fp32_notice in notices.filters  # installed by add_ip_adapter (the translator has styles)
    record = lambda message: logging.LogRecord("diffusers", logging.WARNING, "", 0, message, None, None)  # noqa: E731
    assert not notices.filter(record("There are modules in UNet2DConditionModel that should be kept in float32: []."))
    assert notices.filter(record("There are modules in UNet2DConditionModel that should be kept in float32: ['norm']."))


def test_loading_the_lcm_lora_silences_only_the_text_encoder_notice_and_leaves_diffusers_verbosity(lcm_translator):
    import logging
    from diffusers.utils import logging as diffusers_logging
    assert diffusers_logging.get_verbosity() == logging.WARNING  # loading did not turn warnings down
    notices = logging.getLogger("diffusers.loaders.lora_base")
    assert gdt.no_text_encoder_lora_notice in notices.filters
    record = lambda message: logging.LogRecord("diffusers", logging.WARNING, "", 0, message, None, None)  # noqa: E731
    assert not notices.filter(record("No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'."))
    assert notices.filter(record("Loading adapter weights from state_dict led to unexpected keys"))


def test_the_expected_memory_counts_the_loaded_weights_and_doubles_the_batch_for_guidance(translator):
    pipe = translator.pipe
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder,
                                                          pipe.image_encoder) for p in m.parameters()) / 2 ** 30
    line = gdt.expected_memory(translator, 3)
    assert line.startswith(f"expected memory: weights {weights:.1f} GiB") and "6 latents" in line
    assert pipe.vae.use_slicing  # the batch is decoded one image at a time
