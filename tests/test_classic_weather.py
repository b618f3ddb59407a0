"""tools/classic_weather.py: the non-generative baseline, written in gdt.py's output layout."""
import hashlib

import numpy as np
import pytest
from PIL import Image

import classic_weather
import data
import gdt

SOURCES = {"a.png": ((48, 80), "RGB"), "sub/b.png": ((60, 60), "L"), "sub/c.jpg": ((50, 70), "RGB")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder dataset: RGB PNG, greyscale PNG and JPEG of different sizes."""
    root = tmp_path_factory.mktemp("classic")
    rng = np.random.default_rng(0)
    for key, ((h, w), mode) in SOURCES.items():
        (root / "data" / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).convert(mode).save(root / "data" / key)
    return root


def test_each_frame_is_drawn_from_gdts_seed_of_the_first_attempt(world, tmp_path):
    classic_weather.main(["--dataset", "folder", "--data-root", str(world / "data"), "--out", str(tmp_path), "--cond", "night", "rain"])
    for cond in ("night", "rain"):
        records = data.read_manifests(tmp_path / cond)
        assert set(records) == set(SOURCES)
        for key, r in records.items():  # sha256 of "<cond>/<key>", its first 8 bytes big-endian, halved
            expected = int.from_bytes(hashlib.sha256(f"{cond}/{key}".encode()).digest()[:8], "big") >> 1
            assert r["seed"] == expected == gdt.sample_seed(key, cond)


@pytest.mark.parametrize("cond", ["night", "rain", "fog", "snow"])
def test_classic_translation_is_deterministic_in_range_and_changes_the_image_as_its_condition(cond):
    day = np.random.default_rng(3).uniform(0.2, 0.8, (90, 160, 3)).astype(np.float32)
    out = classic_weather.classic_translate(day, cond, seed=7)
    assert out.shape == day.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(out, classic_weather.classic_translate(day, cond, seed=7))
    assert not np.array_equal(out, classic_weather.classic_translate(day, cond, seed=8))
    if cond == "night":
        assert out.mean() < 0.5 * day.mean()
    elif cond == "snow":
        assert out.mean() > day.mean()
    else:  # rain and fog wash out the contrast
        assert out.std() < 0.8 * day.std()


def test_classic_translation_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown condition 'dusk'"):
        classic_weather.classic_translate(np.zeros((4, 4, 3)), "dusk", 0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        classic_weather.classic_translate(np.zeros((4, 4)), "night", 0)


def test_classic_weather_translates_without_any_model_in_gdts_layout(world, tmp_path, capsys):
    classic_weather.main(["--dataset", "folder", "--data-root", str(world / "data"), "--out", str(tmp_path), "--cond", "fog"])
    for key, ((h, w), mode) in SOURCES.items():
        assert Image.open(tmp_path / "fog" / key).size == (w, h)
    for r in data.read_manifests(tmp_path / "fog").values():  # no model ids it never used, nothing to audit
        assert r["models"] == {} and r["settings"] == {"backend": "classic"} and r["status"] == "ok"
        assert "caption" not in r and "agreement" not in r
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    classic_weather.main(["--dataset", "folder", "--data-root", str(world / "data"), "--out", str(tmp_path), "--cond", "fog"])
    assert "0 images to translate" in capsys.readouterr().out  # a rerun skips finished outputs
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="image unreadable: .*broken.png"):
        classic_weather.main(["--dataset", "folder", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o")])


def test_empty_input_and_output_inside_the_dataset_are_refused(world, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .*images"):
        classic_weather.main(["--dataset", "folder", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="inside --data-root"):
        classic_weather.main(["--dataset", "folder", "--data-root", str(world / "data"), "--out", str(world / "data" / "gdt")])


def test_16_bit_png_is_read_at_its_depth_not_clipped_white(tmp_path):
    grey = np.random.default_rng(4).integers(20, 230, (24, 40)).astype(np.uint8)
    for bits, pixels in ((8, grey), (16, grey.astype(np.uint16) * 257)):
        (tmp_path / f"d{bits}").mkdir()
        Image.fromarray(pixels).save(tmp_path / f"d{bits}" / "f.png")
        classic_weather.main(["--dataset", "folder", "--data-root", str(tmp_path / f"d{bits}"), "--out", str(tmp_path / f"o{bits}"),
                              "--cond", "fog"])
    out8, out16 = (Image.open(tmp_path / f"o{bits}" / "fog" / "f.png") for bits in (8, 16))
    assert (out8.mode, out16.mode) == ("L", "I;16")
    np.testing.assert_array_equal(np.asarray(out16), np.asarray(out8).astype(np.uint16) * 257)
