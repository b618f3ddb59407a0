"""GDT (gdt.py, SPEC §1) on random tiny models: 64x64 generation, 2 steps, 3 source images."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import gdt
import tiny_models

SOURCES = {"a.png": ((48, 80), "RGB"), "sub/b.png": ((60, 60), "L"), "sub/c.jpg": ((50, 70), "RGB")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder dataset (RGB PNG, greyscale PNG, JPEG of different sizes), real-style reference
    folders per condition, and the tiny models written once."""
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
    tiny_models.save_tiny_models(str(root / "tiny"))
    return root


def cli(world, out, *extra):
    return ["--tiny", str(world / "tiny"), "--steps", "2", "--size", "64x64", "--data-root", str(world / "data"),
            "--out", str(out), "--style-dir", str(world / "styles"), "--cond", "night", "rain", *extra]


def outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.suffix in (".png", ".jpg")}


@pytest.fixture(scope="module")
def first_run(world):
    gdt.main(cli(world, world / "out", "--batch-size", "3"))
    return world / "out"


@pytest.fixture(scope="module")
def translator(world):
    return gdt.build_translator(gdt.parse_args(cli(world, world / "unused")))


def test_seed_is_a_stable_hash_of_key_and_condition():
    expected = int.from_bytes(hashlib.sha256(b"night/samples/CAM_FRONT/x.jpg").digest()[:8], "big") >> 1
    assert gdt.sample_seed("samples/CAM_FRONT/x.jpg", "night") == expected
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


def test_scale_shift_alignment_recovers_an_affine_map():
    pred = np.random.default_rng(1).random((7, 9))
    np.testing.assert_allclose(gdt.align_scale_shift(pred, 2.5 * pred - 0.7), 2.5 * pred - 0.7, atol=1e-12)


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
    with pytest.raises(ValueError, match="cannot read image .*g.png"):
        gdt.load_control_map(tmp_path, "sub/g.jpg")


@pytest.mark.parametrize("cond", ["night", "rain", "fog", "snow"])
def test_classic_translation_is_deterministic_in_range_and_changes_the_image_as_its_condition(cond):
    day = np.random.default_rng(3).uniform(0.2, 0.8, (90, 160, 3)).astype(np.float32)
    out = gdt.classic_translate(day, cond, seed=7)
    assert out.shape == day.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(out, gdt.classic_translate(day, cond, seed=7))
    assert not np.array_equal(out, gdt.classic_translate(day, cond, seed=8))
    if cond == "night":
        assert out.mean() < 0.5 * day.mean()
    elif cond == "snow":
        assert out.mean() > day.mean()
    else:  # rain and fog wash out the contrast
        assert out.std() < 0.8 * day.std()


def test_classic_translation_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown condition 'dusk'"):
        gdt.classic_translate(np.zeros((4, 4, 3)), "dusk", 0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        gdt.classic_translate(np.zeros((4, 4)), "night", 0)


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
            assert r["output"] == str(first_run / cond / r["key"]) and os.path.exists(r["source"])
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


def test_two_ranks_with_batch_size_1_write_the_union_once_and_the_same_images(world, first_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        gdt.main(cli(world, out, "--batch-size", "1", "--cond", "night"))
    keys = [[json.loads(line)["key"] for line in (out / "night" / f"manifest.rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(SOURCES)
    assert outputs(out) == {k: v for k, v in outputs(first_run).items() if k.startswith("night/")}


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


def test_classic_backend_translates_without_any_model(world, tmp_path):
    gdt.main(["--backend", "classic", "--data-root", str(world / "data"), "--out", str(tmp_path), "--cond", "fog"])
    for key, ((h, w), mode) in SOURCES.items():
        assert Image.open(tmp_path / "fog" / key).size == (w, h)


def test_unknown_condition_is_refused(world, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gdt.parse_args(["--data-root", str(world / "data"), "--out", str(tmp_path), "--cond", "dusk"])
    assert "invalid choice: 'dusk'" in capsys.readouterr().err


def test_empty_input_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .*images"):
        gdt.main(["--backend", "classic", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        gdt.main(["--backend", "classic", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o")])


def test_ip_adapter_without_style_images_is_refused(world, tmp_path):
    with pytest.raises(ValueError, match="--style-dir night=DIR.*--no-ip-adapter"):
        gdt.main(["--tiny", str(world / "tiny"), "--data-root", str(world / "data"), "--out", str(tmp_path)])


def test_unreachable_model_id_fails_at_once_naming_it_and_the_alternatives(world, tmp_path):
    with pytest.raises(RuntimeError, match="nobody/no-such-depth-model.*--control-dir or --tiny"):
        gdt.main(["--captioner", "none", "--depth-model", "nobody/no-such-depth-model", "--no-ip-adapter",
                  "--data-root", str(world / "data"), "--out", str(tmp_path)])


def test_output_inside_the_dataset_is_refused(world):
    with pytest.raises(ValueError, match="inside --data-root"):
        gdt.main(["--backend", "classic", "--data-root", str(world / "data"), "--out", str(world / "data" / "gdt")])


def test_style_references_can_come_from_the_datasets_own_night_and_rain_training_scenes(tiny_world):
    import data
    args = gdt.parse_args(["--dataset", "nuscenes", "--data-root", tiny_world, "--out", "unused",
                           "--cond", "night", "rain", "--style-dir", "data"])
    styles = gdt.style_folders(args)
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
        gdt.style_folders(gdt.parse_args(["--dataset", "nuscenes", "--data-root", tiny_world, "--out", "unused",
                                          "--cond", "snow", "--style-dir", "data"]))
