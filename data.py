"""Datasets of the md4all protocol (docs/method.md §4, §5, §7): nuScenes, Oxford RobotCar, an image folder.

    val = NuScenesDepth('/data/nuscenes', split='val')  # CAM_FRONT key frames of the 150 val scenes
    train = NuScenesDepth('/data/nuscenes', frames=(-1, 0, 1), net_size=(518, 784), color_jitter=True, flip=True,
                          gdt_root='/data/gdt', gdt_conds=('night', 'rain'))
    check_dataset(train)  # read every file an epoch can read, now: a broken one is a ValueError naming it
    train.set_epoch(epoch)  # before each epoch's DataLoader iterator (or EpochSampler, persistent workers)
    loader = DataLoader(train, batch_size=4, num_workers=default_workers())

Items are dicts of tensors: `color`, `prev`, `next` (un-jittered, photometric loss) and their
jittered `*_aug` twins (pose net) at the loss size `size`; `input` (what the depth net sees: GDT
swap, jitter) at `net_size`, resized once from the full frame. Every random choice of an item (GDT
swap, condition, flip, jitter) is seeded by (seed, epoch, index): DDP ranks, workers and resumes agree.
Pixel (i, j) covers [i, i+1) x [j, j+1), so intrinsics scale by W'/W, a flip maps cx to W - cx and a
nuScenes LiDAR point at u lands on floor(u) (as the devkit's int cast); the warp reads K as md4all's
does, half a pixel from this (losses.py says how). RobotCar's ground truth rounds u instead: md4all's
protocol, kept for parity.
nuScenes is read from its JSON tables (the devkit pins numpy < 2). The GDT translation files (what
gdt.py writes and the GDT input swap reads: images in the source's format and mode, manifests) end the file,
after the data check (files(), check_files) that reads every input of a run before it starts.
"""
import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageStat
from tqdm import tqdm

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
LUMA = np.array([0.299, 0.587, 0.114])  # PIL's 'L' weights (ITU-R 601), what Contrast and Color blend to

# The per-dataset defaults of md4all's protocol, in one place: the loss size (H, W) items come at,
# the depth cap of training and evaluation (docs/method.md §5) and the share of rows kept from the top.
DATASET_DEFAULTS = {
    'nuscenes': dict(size=(320, 576), max_depth=80.0, crop=1.0),
    'robotcar': dict(size=(320, 544), max_depth=50.0, crop=768 / 960),  # the top 768 of 960 rows: no bonnet
    'folder': dict(size=None, max_depth=80.0, crop=1.0),  # size None: each image at its own size
    # 800x1762 frames; 320x704 keeps their aspect. Scored as WeatherDepth's public evaluator does (docs/method.md
    # §5): every gt > 0 counts, none is capped (cap_gt False), only the prediction is clamped to max_depth.
    'drivingstereo': dict(size=(320, 704), max_depth=80.0, crop=1.0, cap_gt=False),
}
DRIVINGSTEREO_WEATHERS = ('sunny', 'cloudy', 'foggy', 'rainy')  # the four 500-frame weather sets


def parse_size(text):
    """'HxW' (a command-line image size) -> (H, W) positive ints."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:  # argparse prints an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(f"image size {text!r}: give HxW, e.g. 320x576") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"image size {text!r}: both sides must be positive, e.g. 320x576")
    return h, w


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help of gdt.py and evaluate.py: the docstring's runbook as written, and each flag's default (when it
    has one worth showing)."""
    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)

class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, `<prog>: error: <what> (--help lists the flags)`, exit
    status 2, as every other error of the scripts is one line (run_cli); --help shows the docstring as written."""

    def __init__(self, *args, formatter_class=None, **kwargs):
        super().__init__(*args, formatter_class=formatter_class or argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def at_least(minimum):
    """argparse type: an integer >= minimum."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def run_cli(main, prog, on_interrupt="rerun the same command to continue: finished outputs are kept"):
    """Run a script's `main()`, turning the errors a user can cause (missing or unreadable files, bad flags,
    data or checkpoints, models that cannot be loaded: OSError and ValueError; an optional package that is not
    installed: ImportError, whose message gives the pip command) into one line
    `<prog>: error: ...` and exit status 1 (argparse's usage errors exit with 2); bugs keep their traceback.
    Ctrl-C: one line, the interruption's own message (the trainers say the step) or `on_interrupt`, exit 130."""
    try:
        return main()
    except KeyboardInterrupt as e:
        print(f"{prog}: {e if e.args else 'interrupted; ' + on_interrupt}", file=sys.stderr)
        raise SystemExit(130) from None
    except (OSError, ValueError, ImportError) as e:
        message = str(e).strip() or type(e).__name__
        if "Original Traceback" in message:  # raised in a DataLoader worker: its traceback's last line says it
            message = message.splitlines()[-1].removeprefix(f"{type(e).__name__}: ")
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def check_writable(folder, flag='--out'):
    """Refuse, before any long work, an output folder that cannot be made or written: the nearest existing
    part of its path must be a writable folder (nothing is created here)."""
    part = os.path.abspath(folder)
    while not os.path.exists(part):
        part = os.path.dirname(part)
    if not os.path.isdir(part):
        raise ValueError(f"{flag} {folder}: {part} is a file, not a folder: choose another {flag}")
    if not os.access(part, os.W_OK):
        raise ValueError(f"{flag} {folder}: {part} is not writable: choose another {flag}")


def write_atomic(path, write):
    """Write a file whole or not at all: `write(tmp)` fills a temp file `.<name>.tmp<pid>` beside `path`, which
    then replaces `path` (created by open(), so with the umask's permissions); on an error the temp file is
    removed. A killed run leaves at most a temp file, never a half-written output that a resume would skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def read_text(path, fix):
    """Contents of a small text file the protocol needs; a missing one names itself and the fix."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing: {fix}")
    with open(path) as f:
        return f.read()


def scale_intrinsics(K, from_hw, to_hw):
    """Intrinsics of an image resized from from_hw to to_hw (H, W): u' = u W'/W (pixel corners, as md4all)."""
    return np.array(K, dtype=np.float64) * [[to_hw[1] / from_hw[1]], [to_hw[0] / from_hw[0]], [1]]


def scatter_depth(u, v, z, hw, nearest=False):
    """(H, W) float32 map with depth z at integer pixels (u, v), 0 elsewhere; last point or nearest wins."""
    depth, flat = np.zeros(hw, dtype=np.float32), v * hw[1] + u
    if nearest:  # far points first, so the nearest is the last one written
        order = np.argsort(-z, kind='stable')
        flat, z = flat[order], z[order]
    # numpy does not promise which repeated fancy-index write survives: pick the last one explicitly
    _, first_from_end = np.unique(flat[::-1], return_index=True)
    last = len(flat) - 1 - first_from_end
    depth.flat[flat[last]] = z[last]
    return depth


def to_tensor(image):
    """(3, H, W) float32 in [0, 1] of a PIL RGB image."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def png_complete(path):
    """Whether a PNG file ends with its IEND chunk (a file cut short does not)."""
    with open(path, 'rb') as f:
        f.seek(max(os.path.getsize(path) - 12, 0))
        return f.read() == b'\x00\x00\x00\x00IEND\xaeB`\x82'


def open_image(path):
    """The PIL image at `path`, header read (pixels decode later); a missing or unreadable file names itself."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image missing: {path}; check that the data root holds the dataset "
                                "files (nuScenes: samples/ and sweeps/ blobs)")
    try:
        return Image.open(path)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"image unreadable: {path} ({e}); replace the file from the dataset download") from e


def load_pixels(im, path):
    """Decode every pixel of an opened image; a truncated or corrupt file names itself and the fix. A PNG
    must also end with its IEND chunk: PIL accepts a file cut after the last pixel row."""
    try:
        im.load()
        if im.format == 'PNG' and not png_complete(path):
            raise OSError("no IEND chunk at the end")
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image unreadable: {path} ({e}); the file is truncated or corrupt: "
                         "replace it from the dataset download") from e
    return im


def read_depth_map(path):
    """(H, W) float32 depth map of a .npy file (a folder's ground truth); an unreadable or non-2-D one names itself."""
    try:
        depth = np.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"depth map missing: {path}") from None
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty or cut file
        raise ValueError(f"depth map unreadable: {path} ({e}); write it again with numpy.save") from e
    if depth.ndim != 2:
        raise ValueError(f"depth map {path} has shape {depth.shape}, not (H, W): write one 2-D map per image")
    return depth.astype(np.float32)


def color_jitter(image, brightness, contrast, saturation, hue, shift_hue=None):
    """torchvision's ColorJitter with given factors on a PIL RGB image, in md4all's fixed order.

    md4all jitters the resized PIL frames before ToTensor, so this is torchvision's PIL path:
    brightness, contrast (towards the mean grey) and saturation (towards each pixel's grey) are
    uint8 blends; hue adds int(hue * 255) to the 8-bit HSV hue, wrapping round the colour circle.
    md4all applies the four in this order every time (not ColorJitter's random order).
    `shift_hue` makes the hue step: hue_shift (default, table lookups) or torchvision_hue_shift (the
    reference, PIL's HSV images): the same bytes.
    """
    image = ImageEnhance.Brightness(image).enhance(brightness)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    image = ImageEnhance.Color(image).enhance(saturation)
    # torchvision truncates towards zero, and round-trips through HSV even for a shift of 0 (|hue| < 1/255),
    # which moves colours by up to 2/255: md4all's frames went through it, so ours do too
    return (shift_hue or hue_shift)(image, int(hue * 255))


def torchvision_hue_shift(image, shift):
    """The hue step as torchvision's adjust_hue writes it for PIL: RGB -> HSV, `shift` added to the 8-bit
    hue (uint8 wrap-around), HSV -> RGB. The reference of hue_shift (about 7x slower)."""
    h, s, v = image.convert('HSV').split()
    h = Image.fromarray(np.asarray(h) + np.uint8(shift % 256))
    return Image.merge('HSV', (h, s, v)).convert('RGB')


@lru_cache(maxsize=None)
def hsv_tables():
    """PIL's 8-bit RGB -> HSV and HSV -> RGB conversions tabulated over all 2^24 colours, made by PIL itself
    (so exact by construction, 1-2 s and 128 MB once per process; workers forked after it share them:
    AugmentedDataset.share_tables).
    Colours are packed as uint32 c0 | c1 << 8 | c2 << 16 in the mode's channel order (RGB or HSV)."""
    codes = np.arange(1 << 24, dtype='<u4')  # little-endian whatever the machine: byte 0 is c0
    every = Image.frombuffer('RGBX', (4096, 4096), codes, 'raw', 'RGBX', 0, 1).convert('RGB')
    packed = lambda im: np.frombuffer(im.tobytes('raw', 'RGBX'), '<u4') & 0xFFFFFF  # noqa: E731 (X is 255)
    to_hsv = packed(Image.merge('RGB', every.convert('HSV').split()))
    to_rgb = packed(Image.merge('HSV', every.split()).convert('RGB'))
    return to_hsv, to_rgb


def hue_shift(image, shift):
    """torchvision_hue_shift's bytes by two table lookups (hsv_tables): PIL's HSV -> RGB conversion, the
    costliest step of the exact jitter, computes floats per pixel."""
    to_hsv, to_rgb = hsv_tables()
    hsv = to_hsv.take(np.frombuffer(image.tobytes('raw', 'RGBX'), '<u4') & 0xFFFFFF)
    hsv.view(np.uint8)[0::4] += np.uint8(shift % 256)  # byte 0 is the hue; uint8 addition wraps round the circle
    return Image.frombytes('RGB', image.size, to_rgb.take(hsv), 'raw', 'RGBX')


def as_uint8(image):
    """(3, H, W) uint8 tensor of a PIL RGB image (what a device_augment worker hands over)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


# md4all's augmentation as batched tensor ops (--gpu-augment): each reproduces its PIL counterpart's integer
# arithmetic, so a batch comes out as the default path's items, bit for bit (tests/test_data.py).

def lanczos_filter(x):
    """PIL's Lanczos kernel (Resample.c): sinc(x) sinc(x / 3) on [-3, 3)."""
    sinc = lambda t: 1.0 if t == 0.0 else math.sin(t * math.pi) / (t * math.pi)  # noqa: E731
    return sinc(x) * sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


@lru_cache(maxsize=32)
def lanczos_weights(in_size, out_size, device):
    """(out_size, in_size) float64 matrix of PIL's Lanczos weights for one axis, in its 22-bit fixed point
    (Resample.c: precompute_coeffs, normalize_coeffs_8bpc). Integers times 8-bit pixels stay below 2^53, so a
    float64 matrix product sums them exactly, as PIL's int32 loop does."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, ss = 3.0 * filterscale, 1.0 / filterscale
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        first, last = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        k = [lanczos_filter((x - center + 0.5) * ss) for x in range(first, last)]
        total = sum(k)
        k = [v / total if total != 0.0 else v for v in k]
        weights[out, first:last] = [int(v * (1 << 22) + (-0.5 if v < 0 else 0.5)) for v in k]
    return torch.from_numpy(weights).to(device)


def resize_lanczos(frames, hw):
    """PIL's resize(LANCZOS) of 8-bit frames (B, C, H, W) to hw: the horizontal pass, then the vertical one,
    each rounded back to 8 bits as PIL does ((sum + 2^21) >> 22, clipped). Returns float32 integers."""
    frames = frames.double()
    round_8bit = lambda x: torch.floor((x + (1 << 21)) / (1 << 22)).clamp_(0, 255)  # noqa: E731
    if frames.shape[-1] != hw[1]:
        frames = round_8bit(frames @ lanczos_weights(frames.shape[-1], hw[1], frames.device).T)
    if frames.shape[-2] != hw[0]:
        frames = round_8bit(lanczos_weights(frames.shape[-2], hw[0], frames.device) @ frames)
    return frames.float()


def blend(degenerate, image, alpha):
    """PIL's Image.blend of 8-bit images (what ImageEnhance does): degenerate + alpha (image - degenerate) in
    float32, clipped, truncated."""
    return (degenerate + alpha * (image - degenerate)).clamp_(0, 255).floor_()


def pil_luma(images):
    """PIL's RGB -> L of 8-bit values (B, 3, H, W) (Convert.c): (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    r, g, b = images.long().unbind(1)
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16)[:, None].float()


@lru_cache(maxsize=4)
def device_hsv_tables(device):
    """hsv_tables on `device` as int32 tensors (128 MB)."""
    return tuple(torch.from_numpy(t.view('<i4')).to(device) for t in hsv_tables())


def jitter_batch(images, factors):
    """color_jitter on a batch (B, 3, H, W) of float32 8-bit values, factors (B, 4) float64 (brightness,
    contrast, saturation, hue) per image: ImageEnhance's blends, then the hue step through hsv_tables."""
    alpha = lambda i: factors[:, i].float()[:, None, None, None]  # noqa: E731  (PIL takes the factor as a C float)
    images = blend(torch.zeros_like(images), images, alpha(0))
    mean = torch.floor(pil_luma(images).double().mean((1, 2, 3), keepdim=True) + 0.5).float()  # as ImageStat
    images = blend(mean, images, alpha(1))
    images = blend(pil_luma(images), images, alpha(2))
    to_hsv, to_rgb = device_hsv_tables(images.device)
    r, g, b = images.long().unbind(1)
    hsv = to_hsv[r | g << 8 | b << 16].long()
    shift = (factors[:, 3] * 255).trunc().long()[:, None, None]  # torchvision: int(hue * 255)
    rgb = to_rgb[(hsv & ~255) | (hsv + shift) & 255].long()
    return torch.stack([rgb & 255, rgb >> 8 & 255, rgb >> 16], 1).float()


def affine_jitter(image, brightness, contrast, saturation, hue):
    """color_jitter's four steps as one affine colour map, applied in a single PIL pass (about 7x faster).

    Brightness scales, contrast blends towards the mean grey, saturation towards each pixel's grey:
    all three are affine in RGB, so they compose exactly. Hue is the one approximation: HSV's hue is
    the angle round the grey axis (1, 1, 1) on a hexagon, so a shift by `hue` of the colour circle
    becomes a rotation by hue * 360 degrees about that axis. Clipping to [0, 255] happens once at the
    end instead of after each step. tests/test_data.py measures the distance to color_jitter on the
    nuScenes fixture frame over md4all's ranges.
    """
    mean = float(LUMA @ ImageStat.Stat(image).mean) * brightness  # grey mean after the brightness step
    A, t = np.eye(3) * brightness, np.zeros(3)
    A, t = contrast * A, contrast * t + (1 - contrast) * mean
    S = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), LUMA)
    A, t = S @ A, S @ t
    angle, axis = 2 * math.pi * hue, np.ones(3) / math.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross  # Rodrigues' formula
    A, t = R @ A, R @ t
    return image.convert('RGB', tuple(np.concatenate([A, t[:, None]], axis=1).ravel().tolist()))


class ItemDraws(NamedTuple):
    """The seven uniform numbers in [0, 1) behind an item's random choices, drawn in this order from numpy's
    generator seeded by (seed, epoch, index): ranks, workers and resumes draw the same (reordering them
    changes every item)."""
    swap: float        # GDT swap: the depth net sees a translation when swap >= p_day
    condition: float   # which one: gdt_conds[int(condition * len(gdt_conds))]
    flip: float        # horizontal flip when flip < 0.5
    brightness: float  # colour jitter factors 0.8 + 0.4 x: md4all's [0.8, 1.2]
    contrast: float
    saturation: float
    hue: float         # hue shift 0.1 (x - 0.5): md4all's [-0.05, 0.05]

    @classmethod
    def draw(cls, seed, epoch, index):
        return cls(*np.random.default_rng([seed, epoch, index]).random(len(cls._fields)))


class Augmentation(NamedTuple):
    """What an item's draws decide: the depth net's input condition, the flip, the jitter factors."""
    cond: str         # 'day' or one of gdt_conds
    flip: bool
    jitter: tuple | None  # (brightness, contrast, saturation, hue) for color_jitter; None: no jitter


class AugmentedDataset(torch.utils.data.Dataset):
    """Shared item machinery: lazy image reads, GDT input swap, colour jitter, flip, seeded per item.

    The options every Dataset below takes by keyword:
    - size: (H, W) of the loss frames (`color`, `prev`, `next`, `lidar`); None keeps the image's size.
    - net_size: (H, W) of `input`, what the depth net sees, resized once from the full frame (None: size).
    - color_jitter, flip: md4all's augmentations, drawn per item (ItemDraws).
    - gdt_root, gdt_conds, p_day: GDT input swap (docs/method.md §4): with probability 1 - p_day the
      depth net sees `<gdt_root>/<cond>/<relative path>` for a cond drawn from gdt_conds (gdt.py's output).
    - seed: with (epoch, index), the seed of every random choice of an item.
    - fast_decode: decode a JPEG once per DCT scale its sizes allow (PIL draft: 1/2, 1/4, 1/8 where a
      size is at most that share of the frame), then Lanczos to the size; False decodes the full frame
      for every tensor (the reference). The two differ by a few levels of 255 on JPEGs at the loss size
      (docs/results.md); PNGs and sizes above half the frame are bit-identical.
    - exact_jitter: True jitters with color_jitter (torchvision's PIL ops, as md4all); False with the
      cheaper affine_jitter (an approximation of the hue step).
    - hue_tables: color_jitter's hue step by table lookups (hue_shift); False by PIL's HSV images, as
      torchvision writes it (torchvision_hue_shift: the same bytes, slower; the bench's reference).
    - day_input: also return `day_input`, the clean day frame at net_size (the student's frozen teacher
      and DINOv2 see it).
    - device_augment: the workers only decode (uint8 `raw_*` frames, the jitter factors and the flip);
      augment_batch then makes the images on the training device, batched, equal to this default path's
      (--gpu-augment). Needs a fixed size.
    """
    crop = 1.0  # share of image rows kept from the top
    dataset, version = 'folder', None  # gdt.py's --dataset (and nuScenes --version) for this reader

    def __init__(self, root, size=None, *, net_size=None, color_jitter=False, flip=False, gdt_root=None,
                 gdt_conds=(), p_day=2 / 3, seed=0, fast_decode=True, exact_jitter=True, hue_tables=True,
                 day_input=False, device_augment=False):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data root not found: {root}; pass the dataset folder")
        self.root, self.size, self.jitter, self.flip = root, tuple(size) if size else None, color_jitter, flip
        self.net_size = tuple(net_size) if net_size else None
        self.gdt_root, self.gdt_conds, self.p_day = gdt_root, tuple(gdt_conds), p_day
        self.seed, self.epoch, self.fast_decode, self.day_input = seed, 0, fast_decode, day_input
        self.exact_jitter, self.hue_tables, self.device_augment = exact_jitter, hue_tables, device_augment
        if device_augment and (not self.size or not exact_jitter):
            raise ValueError("device_augment (--gpu-augment) needs a fixed loss size (--size) and md4all's exact "
                             "jitter (drop --fast-jitter)")
        self.gdt_rejected, self.gdt_fallbacks = {}, {}
        if self.gdt_conds and not gdt_root:
            raise ValueError(f"GDT conditions {self.gdt_conds} given without a GDT folder: pass gdt_root "
                             "(--gdt-root), or no conditions to train on day images only")
        missing = [c for c in self.gdt_conds if not os.path.isdir(os.path.join(gdt_root or '', c))]
        if gdt_root and (missing or not self.gdt_conds):
            raise FileNotFoundError(f"GDT folders missing under {gdt_root}: {missing or 'no gdt_conds given'}; "
                                    "run gdt.py for these conditions or pass the ones it produced")

    def __len__(self):
        return len(self.items)

    def share_tables(self):
        """Build the exact hue step's tables (hsv_tables: 1-2 s, 128 MB) in this process now: DataLoader workers
        forked after it share one copy, where otherwise each builds its own at its first item."""
        if self.jitter and self.exact_jitter and self.hue_tables:
            hsv_tables()

    def set_epoch(self, epoch):
        """Choose the epoch whose random draws the items use. Call it before each epoch's iterator:
        workers copy the dataset when it starts (persistent workers need EpochSampler instead)."""
        self.epoch = epoch

    def _epoch_files(self, targets, others=()):
        """Sorted absolute paths of the target frames and the other files (relative to the root) and of the GDT
        translations the items may draw: those gdt.py recorded as rejected are never read (the day frame stands
        in), and with p_day >= 1 no translation is (the swap needs a draw >= p_day, and draws are < 1)."""
        paths = {os.path.join(self.root, p) for p in (*targets, *others)}
        if self.gdt_root and self.p_day < 1:
            paths |= {os.path.join(self.gdt_root, cond, p) for cond in self.gdt_conds for p in targets
                      if p not in self.gdt_rejected.get(cond, ())}
        return sorted(paths)

    def _check_gdt(self, paths):
        """Every translation the items may draw exists or is recorded as rejected (then the day image
        stands in, counted in gdt_fallbacks); anything else fails now, not hours into training."""
        if not self.gdt_root:
            return
        missing = []
        for cond in self.gdt_conds:
            folder = os.path.join(self.gdt_root, cond)
            rejected = {p for p, r in read_manifests(folder).items() if r.get('status') == 'rejected'}
            absent = [p for p in paths if not os.path.isfile(os.path.join(folder, p))]
            self.gdt_rejected[cond] = {p for p in absent if os.path.normpath(p) in rejected}
            self.gdt_fallbacks[cond] = len(self.gdt_rejected[cond])
            missing += [os.path.join(folder, p) for p in absent if p not in self.gdt_rejected[cond]]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} GDT translations missing under {self.gdt_root}, e.g. {', '.join(missing[:3])}; "
                f"make them with: python gdt.py --dataset {self.dataset} --data-root {self.root} "
                f"{'' if self.version in (None, 'v1.0-trainval') else f'--version {self.version} '}"
                f"--out {self.gdt_root} --cond {' '.join(self.gdt_conds)} (it skips finished images)")

    def _decode(self, path, sizes):
        """PIL RGB images of `path` top-cropped and Lanczos-resized to each (H, W) in sizes (None: no
        resize), and the frame's full (H, W). The fast path decodes a JPEG once per DCT scale its
        sizes allow (a 320x576 loss image from 900x1600 at 1/2, a 518x784 input at 1/1): cheaper than
        a Lanczos pass over the full frame, and every loss-size frame of an item comes out alike.
        The reference path (fast_decode=False) decodes the full frame for every output."""
        frames, resized = {}, {}
        for size in sizes:
            if self.fast_decode and size in resized:
                continue
            with open_image(path) as im:  # reading the header is cheap: the pixels decode in _load_rgb
                full = (im.height, im.width)
                if self.fast_decode and size is not None:  # PIL takes the smallest scale covering size
                    im.draft('RGB', (size[1], math.ceil(size[0] / self.crop)))
                if not self.fast_decode or im.size not in frames:
                    frames[im.size] = self._load_rgb(im, path)
                frame = frames[im.size]
            keep = size is None or frame.size == size[::-1] or self.device_augment  # augment_batch resizes
            resized[size] = frame if keep else frame.resize(size[::-1], Image.LANCZOS)
        return [resized[s] for s in sizes], full

    def _load_rgb(self, im, path):
        """The decoded, top-cropped RGB frame; a truncated or corrupt file names itself."""
        load_pixels(im, path)
        frame = im.convert('RGB') if im.mode != 'RGB' else im.copy()
        keep = round(frame.height * self.crop)
        return frame if keep == frame.height else frame.crop((0, 0, frame.width, keep))

    def _intrinsics(self, K, full_hw, hw):
        """K of the full image, for the top-cropped image resized to hw, as float32."""
        crop_hw = (round(full_hw[0] * self.crop), full_hw[1])  # a top crop keeps cx, cy
        return torch.tensor(scale_intrinsics(K, crop_hw, hw), dtype=torch.float32)

    def _draws(self, index):
        """(index, Augmentation) of an item from its ItemDraws. `index` is an int (the epoch of
        set_epoch) or an (epoch, index) pair from EpochSampler."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        u = ItemDraws.draw(self.seed, epoch, index)
        swap = self.gdt_root and u.swap >= self.p_day
        cond = self.gdt_conds[int(u.condition * len(self.gdt_conds))] if swap else 'day'
        jitter = (0.8 + 0.4 * u.brightness, 0.8 + 0.4 * u.contrast, 0.8 + 0.4 * u.saturation,
                  0.1 * (u.hue - 0.5)) if self.jitter else None
        return index, Augmentation(cond, bool(self.flip and u.flip < 0.5), jitter)

    def _target(self, path, relative, draws):
        """color, color_aug, input, input_cond of the target frame and its full (H, W).

        `input` is resized once from the full frame (or its GDT translation) to net_size (size when
        None); the jitter of color_aug and input uses the item's factors (md4all: pose and depth nets
        see jittered frames, the photometric loss the plain ones).
        """
        net = self.net_size or self.size
        cond = draws.cond
        if cond != 'day' and relative in self.gdt_rejected.get(cond, ()):
            cond = 'day'  # gdt.py rejected this translation: the day frame stands in
        day_sizes = [self.size, net] if cond == 'day' or self.day_input else [self.size]
        (color, *day), full = self._decode(path, day_sizes)
        if cond == 'day':
            image = day[0]
        else:
            gdt_path = os.path.join(self.gdt_root, cond, relative)
            if not os.path.isfile(gdt_path):
                raise FileNotFoundError(f"GDT translation missing: {gdt_path} ({cond} version of {relative}); "
                                        "run or resume gdt.py on this dataset (it skips finished images)")
            (image,), _ = self._decode(gdt_path, [net])
        if self.device_augment:  # the frames the default path resizes, for augment_batch
            item = dict(raw_color=as_uint8(color), raw_input=as_uint8(image), input_cond=cond)
            if self.day_input:
                item['raw_day_input'] = as_uint8(day[0])
            return item, full
        item = dict(color=to_tensor(color), input_cond=cond)
        item['color_aug'] = self._jittered(color, draws, item['color'])
        item['input'] = item['color_aug'] if image is color else self._jittered(image, draws, None)
        if self.day_input:  # what the frozen teacher and DINOv2 of the student see: the clean day frame
            item['day_input'] = item['color'] if day[0] is color else to_tensor(day[0])
        return item, full

    def _source(self, path, draws, name):
        """{name: plain, name_aug: jittered}: a neighbouring frame at the loss size, for the photometric loss and
        the pose net ({raw_name: the decoded frame} with device_augment)."""
        (frame,), _ = self._decode(path, [self.size])
        if self.device_augment:
            return {'raw_' + name: as_uint8(frame)}
        plain = to_tensor(frame)
        return {name: plain, name + '_aug': self._jittered(frame, draws, plain)}

    def _jittered(self, image, draws, plain):
        """Tensor of the PIL image with the item's jitter; `plain` (or a fresh tensor) without jitter."""
        if draws.jitter is None:
            return plain if plain is not None else to_tensor(image)
        if not self.exact_jitter:
            return to_tensor(affine_jitter(image, *draws.jitter))
        shift_hue = hue_shift if self.hue_tables else torchvision_hue_shift
        return to_tensor(color_jitter(image, *draws.jitter, shift_hue=shift_hue))

    def _loss_hw(self, item):
        """(H, W) of the item's loss-size frames (with device_augment, what augment_batch will make)."""
        return tuple(self.size) if self.device_augment else tuple(item['color'].shape[-2:])

    def _flip(self, item, draws):
        """Mirror the item's images and maps and its principal point (pixel corners: u -> W - u). With
        device_augment the images are mirrored by augment_batch, which the item tells its jitter and flip."""
        if self.device_augment:
            item['flip'] = torch.tensor(draws.flip)
            if draws.jitter is not None:
                item['jitter'] = torch.tensor(draws.jitter, dtype=torch.float64)
        if draws.flip:
            for key in ('color', 'color_aug', 'input', 'day_input', 'prev', 'prev_aug', 'next', 'next_aug',
                        'lidar', 'gt'):
                if key in item:
                    item[key] = item[key].flip(-1)
            if 'K' in item:
                item['K'][0, 2] = self._loss_hw(item)[1] - item['K'][0, 2]
        return item

    def augment_batch(self, batch):
        """The images of a collated batch of device_augment items, made where the batch is (the training device):
        PIL's Lanczos resizes and torchvision's jitter as batched tensor ops of the same integer arithmetic (so
        the default path's tensors), then the flips. Other entries pass through."""
        batch, net = dict(batch), self.net_size or self.size
        jitter, flip = batch.pop('jitter', None), batch.pop('flip')
        for name, hw in (('color', self.size), ('prev', self.size), ('next', self.size), ('input', net),
                         ('day_input', net)):
            if 'raw_' + name in batch:
                batch[name] = resize_lanczos(batch.pop('raw_' + name), hw)
        for name, out in (('color', 'color_aug'), ('prev', 'prev_aug'), ('next', 'next_aug'), ('input', 'input')):
            if name in batch:
                batch[out] = batch[name] if jitter is None else jitter_batch(batch[name], jitter)
        for name in ('color', 'color_aug', 'prev', 'prev_aug', 'next', 'next_aug', 'input', 'day_input'):
            if name in batch:
                image = batch[name] / 255  # as to_tensor
                batch[name] = torch.where(flip[:, None, None, None], image.flip(-1), image)
        return batch


class EpochSampler(torch.utils.data.Sampler):
    """(epoch, index) pairs of a sampler's indices: items draw their epoch's augmentation even in
    persistent workers, which keep the dataset copy they started with. The DataLoader iterates this
    sampler in the main process, so before each epoch's iter(loader) call set_epoch(epoch), and pass
    `sampler` there to swap the index order (a resume that skips the finished part of an epoch)."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch, sampler=None):
        self.epoch, self.sampler = epoch, sampler or self.sampler
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


def stop_workers(iterator):
    """Stop a DataLoader iterator's worker processes now, as the loader does when it is done: they exit through
    their own clean-up, which removes the /tmp/pymp-* folder each one shared tensors through. Call it when a
    loop over the iterator ends in an error: left to the interpreter's exit, live workers are killed before
    that clean-up. Harmless on a finished iterator, or on None."""
    shutdown = getattr(iterator, '_shutdown_workers', None)
    if shutdown is not None:
        shutdown()


def default_workers(ranks_per_node=1):
    """DataLoader workers for one training process: the CPUs this process may use, shared among the
    ranks on the node, less one for the process itself. No cap: a ViT-B teacher step consumes items
    faster than about 30 cores decode them (BENCHMARKS.md), so every core helps."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return max(0, cpus // max(ranks_per_node, 1) - 1)


# nuScenes (docs/method.md §4, §5): its JSON tables, the LiDAR ground truth, the Dataset.

CAMERA = 'CAM_FRONT'
NUSCENES_TABLES = ('scene', 'sample', 'sample_data', 'calibrated_sensor', 'ego_pose', 'sensor')
SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'splits')
MIN_SPEED = 0.5  # m/s; md4all drops slower training frames (a static ego gives no parallax)


def condition_of(description):
    """Condition label of a nuScenes scene from its description (md4all, docs/method.md §5)."""
    text = description.lower()
    return ('night' if 'night' in text else 'day') + ('-rain' if 'rain' in text else '-clear')


def quaternion_to_rotation(q):
    """3x3 rotation matrix of a unit quaternion given as (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def rigid_transform(record):
    """4x4 matrix of a nuScenes calibrated_sensor / ego_pose record: sensor -> ego, or ego -> global."""
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = quaternion_to_rotation(record['rotation']), record['translation']
    return T


def read_nuscenes_points(path):
    """(3, N) float64 x, y, z of a nuScenes LiDAR .pcd.bin (N rows of 5 float32: x y z intensity ring).

    A file cut inside a point fails here; one cut at a point boundary reads as a shorter, valid scan
    (the format has no point count), which only the dataset's published file sizes can reveal.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LiDAR file missing: {path}; download the nuScenes LIDAR_TOP sample blobs "
                                "into the dataroot")
    size = os.path.getsize(path)
    if size % 20:
        raise ValueError(f"LiDAR file {path} has {size} bytes, not a whole number of 20-byte points "
                         "(5 float32): it is truncated; extract it again from the nuScenes download")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 5)[:, :3].T.astype(np.float64)


def project_to_depth_map(points, K, hw, min_depth=1.0):
    """nuScenes ground truth (docs/method.md §5): camera points (3, N) -> map; z > 1 m, 1 px border, last wins."""
    points = points[:, points[2] > min_depth]
    uvw = K @ points
    u, v = uvw[0] / uvw[2], uvw[1] / uvw[2]
    inside = (u > 1) & (u < hw[1] - 1) & (v > 1) & (v < hw[0] - 1)
    return scatter_depth(u[inside].astype(np.int64), v[inside].astype(np.int64), points[2, inside], hw)


def val_scene_names(version):
    """The official validation scene names (the md4all / SSD test scenes) of a nuScenes version."""
    mini = '_mini' if 'mini' in version else ''
    with open(os.path.join(SPLITS_DIR, f'nuscenes{mini}_val.txt')) as f:
        return set(f.read().split())


class NuScenesIndex:
    """The six nuScenes tables of `<dataroot>/<version>/`, read once and indexed by token.

    `key_frames[sample_token][channel]` is the per-channel key-frame index the sample table lacks.
    Only key frames (all channels) and CAM_FRONT sweeps are kept: no other sweep is ever read.
    """

    def __init__(self, dataroot, version='v1.0-trainval'):
        if not os.path.isdir(dataroot):
            raise FileNotFoundError(f"nuScenes dataroot not found: {dataroot}; pass the folder that holds "
                                    f"samples/, sweeps/ and {version}/")
        self.dataroot, self.version, self.folder = dataroot, version, os.path.join(dataroot, version)
        if not os.path.isdir(self.folder):
            present = sorted(d for d in os.listdir(dataroot)
                             if os.path.isfile(os.path.join(dataroot, d, 'sample_data.json')))
            raise FileNotFoundError(f"nuScenes version folder not found: {self.folder}; version folders in "
                                    f"{dataroot}: {present or 'none'}. Pass one of them as the version.")
        tables = {}
        for name in NUSCENES_TABLES:
            path = os.path.join(self.folder, name + '.json')
            if not os.path.isfile(path):
                raise FileNotFoundError(f"nuScenes table missing: {path}; a version folder needs "
                                        f"{', '.join(t + '.json' for t in NUSCENES_TABLES)}")
            with open(path) as f:
                tables[name] = json.load(f)
        self.scenes = tables['scene']
        self.sample = {r['token']: r for r in tables['sample']}
        self.calibrated_sensor = {r['token']: r for r in tables['calibrated_sensor']}
        channel = {r['token']: r['channel'] for r in tables['sensor']}
        self.channel = {c['token']: channel[c['sensor_token']] for c in tables['calibrated_sensor']}
        self.key_frames, self.sample_data = defaultdict(dict), {}
        for sd in tables['sample_data']:
            ch = self.channel[sd['calibrated_sensor_token']]
            if sd['is_key_frame']:
                self.key_frames[sd['sample_token']][ch] = sd['token']
            if sd['is_key_frame'] or ch == CAMERA:
                self.sample_data[sd['token']] = sd
        needed = {sd['ego_pose_token'] for sd in self.sample_data.values()}
        self.ego_pose = {r['token']: r for r in tables['ego_pose'] if r['token'] in needed}

    def scene_key_frames(self, scene, channel=CAMERA):
        """Key-frame sample_data tokens of one channel in a scene, in time order."""
        tokens, sample_token = [], scene['first_sample_token']
        while sample_token:
            if channel in self.key_frames[sample_token]:
                tokens.append(self.key_frames[sample_token][channel])
            sample_token = self.sample[sample_token]['next']
        return tokens

    def neighbour(self, token, step):
        """The previous (step -1) or next (step +1) sample_data record of the same sensor, or None."""
        other = self.sample_data[token]['prev' if step < 0 else 'next']
        return self.sample_data.get(other) if other else None

    def is_moving(self, token):
        """md4all static-frame filter: mean ego speed to prev and next frame >= 0.5 m/s; needs both."""
        sd, neighbours = self.sample_data[token], (self.neighbour(token, -1), self.neighbour(token, 1))
        if None in neighbours:
            return False
        here = np.array(self.ego_pose[sd['ego_pose_token']]['translation'])
        speeds = [np.linalg.norm(here - self.ego_pose[n['ego_pose_token']]['translation'])
                  / (abs(n['timestamp'] - sd['timestamp']) * 1e-6) for n in neighbours]
        return float(np.mean(speeds)) >= MIN_SPEED

    def camera_centre(self, token):
        """Global position of the sensor of a sample_data record."""
        sd = self.sample_data[token]
        offset = self.calibrated_sensor[sd['calibrated_sensor_token']]['translation']
        return (rigid_transform(self.ego_pose[sd['ego_pose_token']]) @ np.r_[offset, 1])[:3]

    def split(self, split, scenes=None):
        """[(CAM_FRONT key-frame token, condition)] of 'val' (every frame) or 'train' (day-clear, moving).

        Val scenes are those in splits/nuscenes_val.txt (splits/nuscenes_mini_val.txt for v1.0-mini).
        """
        if split not in ('train', 'val'):
            raise ValueError(f"nuScenes split must be 'train' or 'val', got {split!r}")
        names = {s['name'] for s in self.scenes}
        unknown = sorted(set(scenes or ()) - names)
        if unknown:
            raise ValueError(f"unknown nuScenes scene(s) {unknown} in {self.folder}; "
                             f"known e.g. {sorted(names)[:5]}")
        val = val_scene_names(self.version)
        chosen = [s for s in self.scenes if (s['name'] in val) == (split == 'val')
                  and (scenes is None or s['name'] in scenes)]
        frames = [(t, condition_of(s['description'])) for s in chosen for t in self.scene_key_frames(s)]
        if split == 'train':
            frames = [(t, c) for t, c in frames if c == 'day-clear' and self.is_moving(t)]
        if not frames:
            raise ValueError(f"empty nuScenes {split} split in {self.folder} ({len(chosen)} scenes chosen; "
                             f"train keeps day-clear frames moving >= {MIN_SPEED} m/s with a prev and next "
                             f"frame; val scenes are listed in {SPLITS_DIR})")
        return frames

    def lidar_record(self, cam_token):
        """The LIDAR_TOP sample_data record of a camera key frame's sample (its ground truth)."""
        return self.sample_data[self.key_frames[self.sample_data[cam_token]['sample_token']]['LIDAR_TOP']]

    def lidar_points_in_camera(self, cam_token):
        """(3, N) key-frame LIDAR_TOP points in the camera frame: lidar -> ego -> global -> ego -> camera."""
        cam, lidar = self.sample_data[cam_token], self.lidar_record(cam_token)
        points = read_nuscenes_points(os.path.join(self.dataroot, lidar['filename']))
        pose = lambda sd: rigid_transform(self.ego_pose[sd['ego_pose_token']])
        calib = lambda sd: rigid_transform(self.calibrated_sensor[sd['calibrated_sensor_token']])
        # read right to left: lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera
        lidar_to_cam = np.linalg.inv(calib(cam)) @ np.linalg.inv(pose(cam)) @ pose(lidar) @ calib(lidar)
        return lidar_to_cam[:3, :3] @ points + lidar_to_cam[:3, 3:]

    def lidar_depth_map(self, cam_token, size=None):
        """LiDAR depth at the camera's full resolution, or at `size` (H, W) with scaled intrinsics."""
        sd = self.sample_data[cam_token]
        K = self.calibrated_sensor[sd['calibrated_sensor_token']]['camera_intrinsic']
        full = (sd['height'], sd['width'])
        hw = tuple(size) if size else full
        return project_to_depth_map(self.lidar_points_in_camera(cam_token), scale_intrinsics(K, full, hw), hw)


@lru_cache(maxsize=2)
def load_index(dataroot, version='v1.0-trainval'):
    """NuScenesIndex, built once per (dataroot, version) and process."""
    return NuScenesIndex(dataroot, version)


def lidar_depth_map(dataroot, version, cam_sample_data_token, size=None):
    """(H, W) float32 LiDAR depth of a camera key frame (docs/method.md §5), 0 where no point."""
    return load_index(dataroot, version).lidar_depth_map(cam_sample_data_token, size)


SCENE_ENDS = ('md4all', 'keep')


def replace_scene_ends(index, items):
    """md4all's rule for training items (its `correct_index`): the item of a scene's first key frame (a sample
    with no previous sample) becomes a copy of the next item of that scene, the last key frame's a copy of the
    previous one, so the training set holds those neighbours twice (docs/method.md §4). md4all steps to the
    next entry of its filtered sample table, which is the next kept frame of the scene; a scene with a single
    kept frame keeps it here."""
    scene = lambda token: index.sample[index.sample_data[token]['sample_token']]['scene_token']
    out = list(items)
    for i, (token, _) in enumerate(items):
        sample = index.sample[index.sample_data[token]['sample_token']]
        j = i + 1 if not sample['prev'] else i - 1 if not sample['next'] else i
        if j != i and 0 <= j < len(items) and scene(items[j][0]) == scene(token):
            out[i] = items[j]
    return out


class NuScenesDepth(AugmentedDataset):
    """nuScenes CAM_FRONT key frames of md4all's 'train' or 'val' split (docs/method.md §4, §5).

    frames=(-1, 0, 1) adds the adjacent CAM_FRONT frames (sweeps) and how far the camera moved to
    them (dist_prev, dist_next: camera centres from ego_pose and calibration, like md4all's pose).
    Val items carry `gt`, the full-resolution LiDAR map; with_lidar adds `lidar` at the loss size;
    `scenes` (names) keeps only those scenes; scene_ends 'md4all' replaces a train scene's first and last key
    frame by its neighbour (replace_scene_ends), 'keep' keeps them. The keyword options are AugmentedDataset's.
    """
    dataset, crop = 'nuscenes', DATASET_DEFAULTS['nuscenes']['crop']

    def __init__(self, data_root, version='v1.0-trainval', split='train', size=DATASET_DEFAULTS['nuscenes']['size'],
                 frames=(0,), with_lidar=False, scenes=None, scene_ends='md4all', **options):
        super().__init__(data_root, size, **options)
        if split == 'val' and tuple(frames) != (0,):
            raise ValueError("nuScenes val items have no source frames at scene ends; use frames=(0,)")
        if scene_ends not in SCENE_ENDS:
            raise ValueError(f"--scene-ends {scene_ends!r} is unknown; choose one of {SCENE_ENDS}")
        self.split, self.frames, self.with_lidar, self.version = split, frames, with_lidar, version
        self.index = load_index(data_root, version)
        self.items = self.index.split(split, scenes)
        if split == 'train' and scene_ends == 'md4all':
            self.items = replace_scene_ends(self.index, self.items)
        self._check_gdt([self.index.sample_data[token]['filename'] for token, _ in self.items])

    def files(self):
        """Every file an epoch can read (check_files reads them before a run): the CAM_FRONT key frames, the
        neighbours `frames` asks for, the key frame's LIDAR_TOP scan when items carry `lidar` or `gt`, and the
        GDT translations."""
        targets, others = [], []
        for token, _ in self.items:
            targets.append(self.index.sample_data[token]['filename'])
            others += [self.index.neighbour(token, step)['filename'] for step in (-1, 1) if step in self.frames]
            if self.with_lidar or self.split == 'val':
                others.append(self.index.lidar_record(token)['filename'])
        return self._epoch_files(targets, others)

    def __getitem__(self, i):
        i, draws = self._draws(i)
        token, cond = self.items[i]
        sd = self.index.sample_data[token]
        item, full = self._target(os.path.join(self.root, sd['filename']), sd['filename'], draws)
        K = self.index.calibrated_sensor[sd['calibrated_sensor_token']]['camera_intrinsic']
        hw = self._loss_hw(item)
        item.update(K=self._intrinsics(K, full, hw), cond=cond, key=token, path=sd['filename'])
        for step, name in ((-1, 'prev'), (1, 'next')):
            if step in self.frames:
                other = self.index.neighbour(token, step)
                item.update(self._source(os.path.join(self.root, other['filename']), draws, name))
                moved = self.index.camera_centre(token) - self.index.camera_centre(other['token'])
                item['dist_' + name] = torch.tensor(np.linalg.norm(moved), dtype=torch.float32)
        if self.with_lidar:
            item['lidar'] = torch.from_numpy(self.index.lidar_depth_map(token, hw))[None]
        if self.split == 'val':
            item['gt'] = torch.from_numpy(self.index.lidar_depth_map(token))[None]
        return self._flip(item, draws)


# Oxford RobotCar as md4all prepares it (docs/method.md §7): split files, ground truth, the Dataset.
# The training K: md4all scales fy and cy by the loss height over the full 960 rows, although the frame
# is cropped to 768 rows first ('md4all', what its and SSD's published RobotCar models learnt with);
# 'geometric' scales by 320/768, the K of the pixels the net sees.
ROBOTCAR_K = ('md4all', 'geometric')

# md4all's two RobotCar sequences; the night one is only ever evaluated.
ROBOTCAR_SEQUENCES = {'2014-12-09-13-21-02': 'day-clear', '2014-12-16-18-44-24': 'night-clear'}
ROBOTCAR_GT_DIR = 'lms_front_synchronized/vo/time_margin=+-4.0e+06'  # md4all precompute_depth_gt.py
# md4all's split files, <sequence><suffix>; a *_train_stride_2.txt beside them is never read
ROBOTCAR_SPLIT_FILES = {'train': '_train_stride_1.txt', 'val': '_val_stride_1.txt', 'test': '_test.txt'}


def euler_to_rotation(roll, pitch, yaw):
    """3x3 rotation Rz(yaw) Ry(pitch) Rx(roll), the RobotCar SDK's euler_to_so3."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def read_robotcar_intrinsics(path):
    """K (3x3) and G_camera_image (4x4) of a RobotCar camera model file (first line: fx fy cx cy)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RobotCar camera model missing: {path}; copy the SDK's models/ folder there")
    with open(path) as f:
        rows = [[float(x) for x in line.split()] for line in f if line.strip()]
    (fx, fy, cx, cy), G = rows[0], np.array(rows[1:5]) if len(rows) >= 5 else np.eye(4)
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), G


def read_robotcar_points(path, split='test'):
    """(3, N) float64 camera-frame points of an md4all RobotCar ground-truth file (float32, 3 rows of N)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RobotCar ground-truth points missing: {path}; produce them with "
                                f"md4all's data/robotcar/precompute_depth_gt.py (mode {split})")
    size = os.path.getsize(path)
    if size % 12:
        raise ValueError(f"RobotCar ground-truth file {path} has {size} bytes, not 3 rows of N float32 values "
                         "(a multiple of 12 bytes): it is truncated; produce it again with md4all's "
                         "precompute_depth_gt.py")
    return np.fromfile(path, dtype=np.float32).reshape(3, -1).astype(np.float64)


def robotcar_depth_map(points, K, G_camera_image, hw, max_depth=DATASET_DEFAULTS['robotcar']['max_depth']):
    """md4all RobotCar ground truth: camera-frame points (3, N) -> (H, W) map, rounded pixel, nearest wins.

    md4all stores points in RobotCar's camera frame (x forward); G_camera_image maps the image frame
    (z forward) to it, so its inverse comes first, as in the SDK's CameraModel.project. The SDK's
    bounds 0.5 <= u <= W-1, 0.5 <= v <= H-1 and md4all's rounding (not the floor used for nuScenes)
    are kept for the protocol.
    """
    xyz = np.linalg.solve(G_camera_image, np.vstack([points, np.ones((1, points.shape[1]))]))[:3]
    xyz = xyz[:, xyz[2] > 0]
    uvw = K @ xyz
    u, v = uvw[0] / uvw[2], uvw[1] / uvw[2]
    inside = (u >= 0.5) & (u <= hw[1] - 1) & (v >= 0.5) & (v <= hw[0] - 1)
    depth = scatter_depth(np.round(u[inside]).astype(np.int64), np.round(v[inside]).astype(np.int64),
                          xyz[2, inside], hw, nearest=True)
    depth[depth > max_depth] = 0  # docs/method.md §5: RobotCar is evaluated up to 50 m
    return depth


def read_vo_positions(path):
    """(timestamps, (N, 3) positions) by chaining RobotCar VO rows, as the SDK's interpolate_vo_poses.

    Columns: source_timestamp, destination_timestamp, x, y, z, roll, pitch, yaw; a row moves points
    of the source (later) frame into the destination (earlier) frame.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RobotCar visual odometry missing: {path}; it ships with each sequence")
    with open(path) as f:
        rows = sorted([int(r[0]), int(r[1])] + [float(x) for x in r[2:8]] for r in list(csv.reader(f))[1:])
    pose, stamps, positions = np.eye(4), [rows[0][1]], [np.zeros(3)]
    for source, _, x, y, z, roll, pitch, yaw in rows:
        step = np.eye(4)
        step[:3, :3], step[:3, 3] = euler_to_rotation(roll, pitch, yaw), (x, y, z)
        pose = pose @ step
        stamps.append(source)
        positions.append(pose[:3, 3].copy())
    return np.array(stamps), np.array(positions)


def robotcar_image_path(sequence, timestamp):
    """Path of a RobotCar frame relative to the data root."""
    return f'{sequence}/stereo/left/{timestamp}.png'


def robotcar_gt_path(sequence, timestamp):
    """Path of a RobotCar frame's md4all ground-truth points relative to the data root."""
    return f'{sequence}/{ROBOTCAR_GT_DIR}/{timestamp}.pcd.bin'


def read_robotcar_split(data_root, split, sequences=None):
    """Frames of md4all's RobotCar split files `<data_root>/splits/<sequence>_<file>` (docs/method.md §7).

    'train': `_train_stride_1.txt` of the day sequence, minus the over-exposed frames listed in
    `<data_root>/filter/filter_train_samples.txt` (md4all's LOAD.FILTER_FILES_PATH); 'val':
    `_val_stride_1.txt` and 'test': `_test.txt` of both sequences. Train and val lines are
    `prev target next`; md4all takes the first field of a test line (a second one may follow).
    Other files beside them (`_train_stride_2.txt`) are never read.
    Returns [{'sequence', 'cond', 'target', 'prev', 'next'}] (prev/next None for test lines).
    """
    if split not in ROBOTCAR_SPLIT_FILES:
        raise ValueError(f"RobotCar split must be one of {sorted(ROBOTCAR_SPLIT_FILES)}, got {split!r}")
    sequences, frames, drop = sequences or ROBOTCAR_SEQUENCES, [], set()
    if split == 'train':
        drop = set(read_text(os.path.join(data_root, 'filter', 'filter_train_samples.txt'),
                             "the filter of over-exposed training frames; it comes with md4all's split files "
                             "(or make it with md4all's data/robotcar/filter_overexposed_static_images.py "
                             f"--out_dir {os.path.join(data_root, 'filter')})").split())
    for sequence, cond in sequences.items():
        if split == 'train' and not cond.startswith('day'):
            continue  # md4all trains on day-clear only
        path = os.path.join(data_root, 'splits', sequence + ROBOTCAR_SPLIT_FILES[split])
        fix = f"copy md4all's RobotCar split files (its README, step 2) into {os.path.join(data_root, 'splits')}"
        lines = [line.split() for line in read_text(path, fix).splitlines()]
        for n, stamps in enumerate(lines, 1):
            if split == 'test' and len(stamps) in (1, 2):
                prev, target, nxt = None, stamps[0], None
            elif split != 'test' and len(stamps) == 3:
                prev, target, nxt = stamps
            elif stamps:
                expected = "'target' (a second field may follow)" if split == 'test' else "'prev target next'"
                raise ValueError(f"{path}:{n}: expected {expected}, got {stamps}")
            if stamps and target not in drop:
                frames.append(dict(sequence=sequence, cond=cond, target=target, prev=prev, next=nxt))
    if not frames:
        raise ValueError(f"empty RobotCar {split} split: no lines in {data_root}/splits/<sequence>"
                         f"{ROBOTCAR_SPLIT_FILES[split]} for sequences {sorted(sequences)}")
    return frames


class RobotCarDepth(AugmentedDataset):
    """Oxford RobotCar as md4all prepares it (docs/method.md §7); images and gt keep the top 768 of 960 rows.

    Layout: `<root>/<sequence>/stereo/left/<timestamp>.png`, `<root>/<sequence>/vo/vo.csv`,
    `<root>/<sequence>/{ROBOTCAR_GT_DIR}/<timestamp>.pcd.bin` (float32, 3 x N, camera frame),
    `<root>/models/stereo_wide_left.txt`, split and filter files as in read_robotcar_split.
    `sequences` ({name: condition}) replaces md4all's two; max_depth caps `gt` and `lidar`; robotcar_k is the
    training K's rule (ROBOTCAR_K above: md4all's by default, 'geometric' for the cropped frame's). The
    keyword options are AugmentedDataset's.
    """
    dataset, crop = 'robotcar', DATASET_DEFAULTS['robotcar']['crop']

    def __init__(self, data_root, split='train', size=DATASET_DEFAULTS['robotcar']['size'], frames=(0,),
                 with_lidar=False, sequences=None, max_depth=DATASET_DEFAULTS['robotcar']['max_depth'],
                 robotcar_k='md4all', **options):
        super().__init__(data_root, size, **options)
        if robotcar_k not in ROBOTCAR_K:
            raise ValueError(f"--robotcar-k {robotcar_k!r} is unknown; choose one of {ROBOTCAR_K}")
        self.split, self.frames, self.with_lidar, self.max_depth = split, frames, with_lidar, max_depth
        self.robotcar_k = robotcar_k
        self.vo = {}
        self.items = read_robotcar_split(data_root, split, sequences)
        if set(frames) - {0} and any(f['prev'] is None for f in self.items):
            raise ValueError(f"RobotCar {split} split has one-timestamp lines; frames={tuple(frames)} needs "
                             "'prev target next' lines (md4all's *_train_stride_1.txt)")
        self.K, self.G = read_robotcar_intrinsics(os.path.join(data_root, 'models', 'stereo_wide_left.txt'))
        self._check_gdt([robotcar_image_path(f['sequence'], f['target']) for f in self.items])

    def files(self):
        """Every file an epoch can read (check_files reads them before a run): the target frames, the
        neighbours `frames` asks for, md4all's ground-truth points when items carry `lidar` or `gt`, and the
        GDT translations."""
        targets, others = [], []
        for f in self.items:
            targets.append(robotcar_image_path(f['sequence'], f['target']))
            others += [robotcar_image_path(f['sequence'], f[name]) for step, name in ((-1, 'prev'), (1, 'next'))
                       if step in self.frames]
            if self.with_lidar or self.split in ('val', 'test'):
                others.append(robotcar_gt_path(f['sequence'], f['target']))
        return self._epoch_files(targets, others)

    def _distance(self, sequence, a, b):
        """Distance (m) the camera moved between two timestamps, from the sequence's VO."""
        if sequence not in self.vo:
            self.vo[sequence] = read_vo_positions(os.path.join(self.root, sequence, 'vo', 'vo.csv'))
        stamps, positions = self.vo[sequence]
        at = lambda t: np.array([np.interp(int(t), stamps, axis) for axis in positions.T])
        return torch.tensor(np.linalg.norm(at(a) - at(b)), dtype=torch.float32)

    def __getitem__(self, i):
        i, draws = self._draws(i)
        frame = self.items[i]
        sequence, path = frame['sequence'], robotcar_image_path(frame['sequence'], frame['target'])
        item, full = self._target(os.path.join(self.root, path), path, draws)
        hw = self._loss_hw(item)
        K = self._intrinsics(self.K, full, hw)  # the cropped frame's: what the LiDAR map is projected with
        item.update(K=K if self.robotcar_k == 'geometric' else torch.tensor(scale_intrinsics(self.K, full, hw),
                                                                            dtype=torch.float32),
                    cond=frame['cond'], key=f"{sequence}/{frame['target']}", path=path)
        for step, name in ((-1, 'prev'), (1, 'next')):
            if step in self.frames:
                source = os.path.join(self.root, robotcar_image_path(sequence, frame[name]))
                item.update(self._source(source, draws, name))
                item['dist_' + name] = self._distance(sequence, frame['target'], frame[name])
        if self.with_lidar or self.split in ('val', 'test'):
            points = read_robotcar_points(os.path.join(self.root, robotcar_gt_path(sequence, frame['target'])),
                                          self.split)
        if self.with_lidar:  # at the loss size, with the cropped frame's K whatever robotcar_k gives the warp
            lidar = robotcar_depth_map(points, K.double().numpy(), self.G, hw, self.max_depth)
            item['lidar'] = torch.from_numpy(lidar)[None]
        if self.split in ('val', 'test'):
            gt = robotcar_depth_map(points, self.K, self.G, full, self.max_depth)[:round(full[0] * self.crop)]
            item['gt'] = torch.from_numpy(gt)[None]
        return self._flip(item, draws)


# An image folder, and the image lists gdt.py translates.


class FolderDepth(AugmentedDataset):
    """Every .jpg/.jpeg/.png under a folder (recursive); a same-stem .npy depth map becomes `gt`.
    The keyword options are AugmentedDataset's."""
    dataset, crop = 'folder', DATASET_DEFAULTS['folder']['crop']

    def __init__(self, root, size=DATASET_DEFAULTS['folder']['size'], **options):
        super().__init__(root, size, **options)
        self.items = list_images('folder', root)
        self._check_gdt(self.items)

    def files(self):
        """Every file an epoch can read (check_files reads them before a run): the images, the .npy depth
        maps beside them (where there is one) and the GDT translations."""
        depth_maps = [p for p in (os.path.splitext(p)[0] + '.npy' for p in self.items)
                      if os.path.isfile(os.path.join(self.root, p))]
        return self._epoch_files(self.items, depth_maps)

    def __getitem__(self, i):
        i, draws = self._draws(i)
        path = self.items[i]
        item, _ = self._target(os.path.join(self.root, path), path, draws)
        item.update(key=path, path=path)
        depth_path = os.path.splitext(os.path.join(self.root, path))[0] + '.npy'
        if os.path.isfile(depth_path):
            item['gt'] = torch.from_numpy(read_depth_map(depth_path))[None]
        return self._flip(item, draws)


class DrivingStereoDepth(AugmentedDataset):
    """DrivingStereo's weather sets (docs/method.md §5): `<root>/<weather>/left-image-full-size/<name>.jpg|.png`
    and its ground truth `<root>/<weather>/depth-map-full-size/<name>.png`, a 16-bit PNG of depth x 256 (0: no
    depth), 800x1762 like the frame. `cond` is the weather; weathers None: every set found under the root.
    The keyword options are AugmentedDataset's."""
    dataset, crop = 'drivingstereo', DATASET_DEFAULTS['drivingstereo']['crop']

    def __init__(self, root, weathers=None, size=DATASET_DEFAULTS['drivingstereo']['size'], **options):
        super().__init__(root, size, **options)
        if weathers is None:
            weathers = [w for w in DRIVINGSTEREO_WEATHERS if os.path.isdir(os.path.join(root, w))]
            if not weathers:
                raise FileNotFoundError(f"no DrivingStereo weather set under {root}: it should hold "
                                        f"{', '.join(DRIVINGSTEREO_WEATHERS)} folders, each with left-image-full-size/ "
                                        f"and depth-map-full-size/ (unpacked from the dataset's weather zips)")
        unknown = [w for w in weathers if w not in DRIVINGSTEREO_WEATHERS]
        if unknown:
            raise ValueError(f"--weather {' '.join(unknown)}: DrivingStereo's weather sets are "
                             f"{', '.join(DRIVINGSTEREO_WEATHERS)}")
        self.items = []
        for weather in weathers:
            folder = os.path.join(root, weather, 'left-image-full-size')
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"DrivingStereo weather set missing: {folder}; unpack {weather}.zip's "
                                        f"left-image-full-size/ and depth-map-full-size/ there, or pass --weather "
                                        f"with the sets you have")
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            if not names:
                raise ValueError(f"no .jpg/.png frames in {folder}")
            self.items += [(weather, f'{weather}/left-image-full-size/{n}') for n in names]

    @staticmethod
    def gt_path(image_path):
        """The depth map of a frame (paths relative to the root): same name, .png, in depth-map-full-size/."""
        weather, _, name = image_path.split('/')
        return f'{weather}/depth-map-full-size/{os.path.splitext(name)[0]}.png'

    def files(self):
        """Every file an epoch reads (check_files reads them before a run): the frames and their depth maps."""
        return self._epoch_files([p for _, p in self.items], [self.gt_path(p) for _, p in self.items])

    def __getitem__(self, i):
        i, draws = self._draws(i)
        weather, path = self.items[i]
        item, _ = self._target(os.path.join(self.root, path), path, draws)
        item.update(cond=weather, key=path, path=path)
        item['gt'] = torch.from_numpy(read_drivingstereo_depth(os.path.join(self.root, self.gt_path(path))))[None]
        return self._flip(item, draws)


def read_drivingstereo_depth(path):
    """(H, W) float32 metres of a DrivingStereo depth PNG: uint16 value / 256, 0 where there is no depth."""
    with open_image(path) as image:
        load_pixels(image, path)
        if image.mode not in ('I;16', 'I;16B', 'I'):
            raise ValueError(f"depth map {path} is a {image.mode} PNG, not DrivingStereo's 16-bit depth x 256: "
                             "take it from the depth-map-full-size folder of the download")
        return np.asarray(image, dtype=np.float32) / 256


def dataset_root_kind(root):
    """'nuScenes' or 'RobotCar' when `root` is laid out as that dataset's root (docs/method.md §7), else None."""
    if any(os.path.isfile(os.path.join(root, d, 'sample_data.json')) for d in os.listdir(root)) or \
            all(os.path.isdir(os.path.join(root, d)) for d in ('samples', 'sweeps')):
        return 'nuScenes'
    if os.path.isdir(os.path.join(root, 'splits')) and os.path.isfile(os.path.join(root, 'models',
                                                                                   'stereo_wide_left.txt')):
        return 'RobotCar'
    return None


def list_images(dataset, data_root, version=None, split='train'):
    """Sorted image paths relative to data_root: the training targets (what gdt.py translates).

    'nuscenes': CAM_FRONT key frames of the split (train: day-clear, moving); 'robotcar': the day
    training split (or `split`); 'folder': every .jpg/.jpeg/.png below data_root.
    """
    if dataset == 'nuscenes':
        index = load_index(data_root, version or 'v1.0-trainval')
        return sorted(index.sample_data[token]['filename'] for token, _ in index.split(split))
    if dataset == 'robotcar':
        frames = read_robotcar_split(data_root, split)
        return sorted(robotcar_image_path(f['sequence'], f['target']) for f in frames)
    if dataset == 'folder':
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f"image folder not found: {data_root}")
        kind = dataset_root_kind(data_root)
        if kind:  # every image below it would be taken: sweeps, all cameras, val and test, night
            raise ValueError(f"{data_root} is a {kind} root, not a folder of images: pass --dataset "
                             f"{kind.lower().replace(' ', '')} to use its training split")
        paths = sorted(os.path.relpath(os.path.join(d, n), data_root) for d, _, names in os.walk(data_root)
                       for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise ValueError(f"no .jpg/.jpeg/.png images under {data_root}")
        return paths
    raise ValueError(f"unknown dataset {dataset!r}; use 'nuscenes', 'robotcar' or 'folder'")


# The data check (docs/method.md §4, §5): every file a run will read, read once before it starts, so that a broken
# file fails in seconds with its name instead of at step N of training, mid-GDT or after evaluation's inference.

DATA_CHECK_FIX = ("Replace them from the dataset download (a broken GDT translation: delete it and run gdt.py "
                  "again, which redoes missing ones), or {skip} to skip this check")


def read_data_file(path):
    """Read one file whole with the reader a run uses for its kind, failing as that reader does: an image is
    decoded (a PNG must end with IEND), a .pcd.bin under LIDAR_TOP/ is a nuScenes scan (whole 20-byte points),
    any other .pcd.bin md4all's RobotCar points (whole 12-byte points), a .npy a 2-D depth map; other files
    are read as bytes."""
    name = str(path).lower()
    if name.endswith(IMAGE_EXTENSIONS):
        with open_image(path) as im:
            load_pixels(im, path)
    elif name.endswith('.pcd.bin'):
        (read_nuscenes_points if 'LIDAR_TOP' in Path(path).parts else read_robotcar_points)(path)
    elif name.endswith('.npy'):
        read_depth_map(path)
    else:
        with open(path, 'rb') as f:
            while f.read(1 << 20):
                pass


def file_problem(path):
    """None when `path` reads whole (read_data_file), else what is wrong with it, naming the file and its fix."""
    try:
        read_data_file(path)
    except (OSError, ValueError) as e:
        return str(e)
    except Exception as e:  # a corrupt file can break a decoder in other ways (struct.error, IndexError...)
        return f"{path}: {type(e).__name__}: {e}"
    return None


def check_files(paths, workers=None, progress=False):
    """Sorted (path, problem) of the files among `paths` that are missing or broken, each read whole in a thread
    pool of `workers` (None: ThreadPoolExecutor's default): Pillow and file reads release the GIL, so threads
    overlap both the disk and the decoding. progress=True shows a tqdm bar."""
    paths = sorted({str(p) for p in paths})
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc='checking data', unit='file',
                                                    disable=not progress, dynamic_ncols=True) as bar:
        problems = []
        for path, problem in zip(paths, pool.map(file_problem, paths)):
            bar.update(1)
            if problem:
                problems.append((path, problem))
    return problems


def require_intact(paths, workers=None, progress=False, skip="pass --no-check-data"):
    """check_files before a long run: a ValueError with the count, the first few broken files and the fix (`skip`:
    how the command skips the check); else returns the line 'checked N files in T s' for the caller to print."""
    paths, start = sorted({str(p) for p in paths}), time.perf_counter()
    broken = check_files(paths, workers, progress)
    if broken:
        shown = '; '.join(problem for _, problem in broken[:3]) + ('; ...' if len(broken) > 3 else '')
        raise ValueError(f"{len(broken):,} of {len(paths):,} data files are broken: {shown}. "
                         + DATA_CHECK_FIX.format(skip=skip))
    return f"checked {len(paths):,} files in {time.perf_counter() - start:.1f} s"


def check_dataset(dataset, workers=None, progress=False, skip="pass --no-check-data"):
    """require_intact on every file an epoch of `dataset` can read (its files())."""
    return require_intact(dataset.files(), workers, progress, skip)


# GDT translation files, the reading side (docs/method.md §1): gdt.py writes each translation to
# `<out>/<cond>/<path relative to the data root>` in the source's format and mode, and a JSONL record per
# frame to `<out>/<cond>/manifest.rank<r>.jsonl`; the student's datasets above read them.

GDT_CONDITIONS = ('night', 'rain', 'snow', 'fog')  # the conditions gdt.py has prompts for


def parse_conditions(words):
    """--cond / --conds values -> condition names: ['night,rain', 'rain'] -> ['night', 'rain'] (space- or
    comma-separated, duplicates dropped); an unknown name is a ValueError that lists the known ones."""
    conds = list(dict.fromkeys(c.strip() for word in words for c in word.split(',') if c.strip()))
    unknown = [c for c in conds if c not in GDT_CONDITIONS]
    if unknown or not conds:
        raise ValueError(f"unknown condition(s) {', '.join(map(repr, unknown)) or 'none given'}: choose from "
                         f"{', '.join(GDT_CONDITIONS)}")
    return conds


def load_image(source):
    """An image decoded whole, so that a broken file fails here, naming it: a path reads as the datasets read
    it (open_image, load_pixels); an in-memory file (gdt.as_saved's) is decoded the same way."""
    if isinstance(source, (str, os.PathLike)):
        with open_image(source) as image:
            return load_pixels(image, source)
    try:
        with Image.open(source) as image:
            image.load()
            return image
    except (OSError, ValueError) as e:
        raise ValueError(f"image unreadable: {e}") from e


def read_manifests(folder):
    """Output path (relative to `folder`) -> its last record, over every `manifest.rank*.jsonl` of one
    condition folder. A torn last line (a run killed while writing it) is skipped; a broken line
    elsewhere is an error."""
    records = {}
    for path in sorted(Path(folder).glob('manifest.rank*.jsonl')):
        lines = path.read_text().split('\n')
        for n, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                if n == len(lines):  # no newline after it: the write was cut, and its frame is redone
                    print(f"{path}: skipping its incomplete last line (a run was killed while writing it)",
                          file=sys.stderr)
                    continue
                raise ValueError(f"{path} line {n} is not JSON: delete that line (the frame is then redone)")
            if record:
                output = record.get('output', record.get('key', ''))
                if os.path.isabs(output) or output.startswith(str(folder).rstrip(os.sep) + os.sep):
                    output = os.path.relpath(output, folder)  # records of older runs hold the full path
                records[os.path.normpath(output)] = record
    return records
