"""A synthetic driving world, ray-cast with numpy, written as a nuScenes dataroot data.py reads (docs/method.md §7).

    python tools/synthetic.py --out world      # 5 train + 3 val scenes (day-clear, night, rain), 180x320 (HxW)
    python tools/synthetic.py --out tiny --size 90x160 --keyframes 4 --train-night 0 --workers 1
    python tools/synthetic.py --out world12 --sweeps 5   # a 12 Hz camera like nuScenes CAM_FRONT (learning check)
    python tools/synthetic.py --translate world --out gdt_rendered   # its train frames at night and in rain (ideal GDT)

Curved streets with box buildings, parked and oncoming cars and lamp posts; the ego drives its lane at about 6-11
m/s (and stops in the first day-clear train scene: static frames for md4all's filter). Key frames come at
2 Hz with --sweeps camera frames between them: 1 (4 Hz, about 2 m apart) is fast to render; 5 is nuScenes'
12 Hz (about 0.5-0.9 m), which self-supervised learning needs. Cars carry detail along their length (paint,
door gaps, pillars, wheels), so the photometric loss can see their depth. Night: lamps, headlights, lit
windows, glare, noise; rain: overcast, a wet road that mirrors the street, streaks, blur; descriptions say
"Night" / "Rain" as in nuScenes. Val scenes are named from splits/nuscenes_val.txt, train scenes outside
it. Deterministic from --seed, atomic files, a rerun resumes. Also written: v1.0-trainval/scenes.json (what
was generated) and depth/CAM_FRONT/<key frame>.npy (camera-z depth, 0 = sky). Rays pass through pixel centres
(u+0.5, v+0.5). --translate writes ideal translations: a world's training frames rendered at night and in rain
from the same poses.
"""
import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/ is not a package
import data  # noqa: E402

VERSION = 'v1.0-trainval'
TABLES = ('scene', 'sample', 'sample_data', 'calibrated_sensor', 'ego_pose', 'sensor', 'log')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (this file is in tools/)
SPLITS_DIR = os.path.join(ROOT, 'splits')
# Real nuScenes calibration (scene-0061, tests/fixtures/nuscenes_sample): camera optical frame (z forward,
# y down) 1.5 m up; lidar 1.84 m up and yawed -90 degrees; quaternions w, x, y, z.
CALIBRATION = {'CAM_FRONT': ((1.7007912, 0.0159456, 1.5109576), (-0.4998015, 0.5030316, -0.4997798, 0.4973708)),
               'LIDAR_TOP': ((0.9437130, 0.0, 1.8402300), (0.7077955, -0.0064922, 0.0106462, -0.7063073))}
NUSC_FX, NUSC_CX, NUSC_CY = 1266.417203, 816.267020, 491.507066  # CAM_FRONT at 1600x900
KEY_US, LIDAR_DELAY_US = 500_000, 35_000  # 2 Hz key frames; a sample's lidar sweep follows its image
LANE, ROAD_HALF, LINE, KERB, PAVEMENT = -1.75, 5.0, 3.5, 5.25, 7.5  # lateral offsets (m), left positive
LIDAR_BEAMS, LIDAR_AZIMUTHS, LIDAR_RANGE = np.deg2rad(np.linspace(-30.67, 10.67, 32)), 1080, 100.0  # HDL-32E
DESCRIPTIONS = {'day': 'Synthetic street, parked cars', 'night': 'Night, synthetic street, parked cars',
                'rain': 'Rain, synthetic street, parked cars'}
CAR_COLOURS = np.array([[.85, .85, .83], [.08, .08, .09], [.55, .56, .58], [.6, .08, .07], [.1, .2, .45]])
WALL_COLOURS = np.array([[.62, .55, .47], [.7, .68, .62], [.52, .3, .24], [.45, .47, .5], [.75, .7, .55]])
LATTICE = np.random.default_rng(0).random((256, 256))  # value-noise lattice (tiles every 256 cells)
EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count('1') == 1]).T
SKY = {'day': ([.8, .85, .9], [.33, .52, .85]), 'rain': ([.66, .67, .69], [.55, .56, .59]),
       'night': ([.07, .055, .05], [.015, .018, .03])}  # horizon, zenith; a town glow at night
FOG_M = {'day': 400.0, 'rain': 90.0, 'night': 250.0}  # haze distance: rain lowers far contrast most


def token(*parts):
    """Deterministic 32-hex token, like nuScenes'."""
    return hashlib.md5('/'.join(map(str, parts)).encode()).hexdigest()


def rigid(translation, q):
    """4x4 child-to-parent transform of a nuScenes record (quaternion w, x, y, z)."""
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    R = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    return np.r_[np.c_[np.array(R), translation], [[0, 0, 0, 1]]]


def intrinsics(size):
    """CAM_FRONT intrinsics scaled from 1600x900 to size (H, W)."""
    return np.diag([size[1] / 1600, size[0] / 900, 1]) @ [[NUSC_FX, 0, NUSC_CX], [0, NUSC_FX, NUSC_CY], [0, 0, 1]]


def road_point(scene, s, l):
    """Global (x, y) at arc length s and lateral offset l of the road (a circular arc), and the heading."""
    h, R = scene['h0'] + scene['kappa'] * s, 1 / scene['kappa']
    return np.stack([scene['centre'][0] + (R - l) * np.sin(h), scene['centre'][1] - (R - l) * np.cos(h)], -1), h


def road_coords(scene, x, y):
    """Arc length s and lateral offset l (left positive) of global ground points."""
    sg, dx, dy, k = np.sign(scene['kappa']), x - scene['centre'][0], y - scene['centre'][1], scene['kappa']
    h = np.arctan2(sg * dx, -sg * dy)
    return ((h - scene['h0'] + np.pi) % (2 * np.pi) - np.pi) / k, 1 / k - sg * np.hypot(dx, dy)


def ego_pose(scene, timestamp):
    """Ego translation (x, y, 0) and rotation (w, x, y, z) in the global frame at a timestamp (us)."""
    s = np.interp((timestamp - scene['base']) * 1e-6, scene['t_grid'], scene['s_grid'])
    (x, y), h = road_point(scene, s, LANE)
    return [float(x), float(y), 0.0], [float(np.cos(h / 2)), 0.0, 0.0, float(np.sin(h / 2))]


def plan_boxes(rng, sc, s_end):
    """Buildings (kind 0), cars (1) and lamp posts (2) along the road: rotations, sizes, corners, colours."""
    boxes = []  # (s, l, length along the road, width, height, kind, r, g, b)
    for side in (-1, 1):
        s = -60 + rng.uniform(0, 8)
        while s < s_end + 160:
            w, d, h = rng.uniform(8, 24), rng.uniform(8, 18), rng.uniform(5, 12) * rng.choice([1, 2.5])
            if rng.random() > 0.12:  # a gap now and then shows what lies behind
                col = np.clip(WALL_COLOURS[rng.integers(5)] * rng.uniform(0.8, 1.15, 3), 0, 1)
                boxes.append((s + w / 2, side * (rng.uniform(9, 15) + d / 2), w, d, h, 0, *col))
            s += w + rng.uniform(1, 6)
        for s in np.arange(-40, s_end + 120, 7.5):  # parked cars, clear of the ego's lane
            if rng.random() < 0.45:
                boxes.append((s + rng.uniform(-1, 1), side * 4.1, rng.uniform(4, 4.8), rng.uniform(1.7, 2),
                              rng.uniform(1.4, 1.8), 1, *CAR_COLOURS[rng.integers(5)]))
    for s in np.arange(-40, s_end + 150, 14):  # the oncoming lane
        if rng.random() < 0.35:
            boxes.append((s + rng.uniform(0, 4), -LANE, 4.4, 1.8, 1.5, 1, *CAR_COLOURS[rng.integers(5)]))
    for s in s_end + 8 + np.cumsum(rng.uniform(6, 40, 2)):  # in the ego's lane, beyond where it ends
        boxes.append((s, LANE, 4.4, 1.8, 1.6, 1, *CAR_COLOURS[rng.integers(5)]))
    lamps_s = np.arange(-40, s_end + 150, 30.0)
    sides = np.where(np.arange(len(lamps_s)) % 2 == 0, 1, -1)
    boxes += [(s, side * 5.6, 0.24, 0.24, 7.2, 2, .45, .45, .45) for s, side in zip(lamps_s, sides)]
    bx = np.array(boxes)
    xy, yaw = road_point(sc, bx[:, 0], bx[:, 1])
    c, s, size = np.cos(yaw), np.sin(yaw), bx[:, 2:5]
    rot = np.stack([np.stack([c, -s, 0 * c], 1), np.stack([s, c, 0 * c], 1), np.tile([0.0, 0, 1], (len(c), 1))], 1)
    unit = np.array([[i >> 2, (i >> 1) & 1, i & 1] for i in range(8)], float)  # corner index bits: x, y, z
    corners = np.einsum('kij,kcj->kci', rot, (unit - [.5, .5, 0]) * size[:, None]) + np.c_[xy, 0 * c][:, None]
    sc['boxes'] = dict(rot=rot, size=size, corners=corners, kind=bx[:, 5].astype(int), colour=bx[:, 6:9])
    sc['lamps'] = np.c_[road_point(sc, lamps_s, sides * 4.6)[0], np.full(len(sides), 7.0)]


def plan_scene(index, name, split, cond, keyframes, sweeps, seed, stop):
    """Road, trajectory, frame times, boxes and lights of one scene (no rendering)."""
    rng = np.random.default_rng([seed, index])
    kappa = rng.choice([-1, 1]) * rng.uniform(1 / 700, 1 / 220)  # a mild curve: 220-700 m radius
    h0, g0 = rng.uniform(-np.pi, np.pi), rng.uniform(300, 1800, 2)
    sc = dict(index=index, name=name, split=split, condition=cond, description=DESCRIPTIONS[cond], kappa=kappa,
              h0=h0, centre=g0 + np.array([-np.sin(h0), np.cos(h0)]) / kappa, tex_seed=int(rng.integers(1 << 20)),
              base=1_533_000_000_000_000 + index * 3_600_000_000, log=f'syn{seed}-2018-08-01-{index:04d}')
    step, edge = KEY_US // (sweeps + 1), min(sweeps, 1)  # a sweep before and after: every key frame has both
    sc['cameras'] = [(sc['base'] + i * step, i >= 0 and i % (sweeps + 1) == 0 and i // (sweeps + 1) < keyframes)
                     for i in range(-edge, (keyframes - 1) * (sweeps + 1) + edge + 1)]
    t = np.arange(-1.0, keyframes * KEY_US * 1e-6 + 1.0, 0.001)
    v0, amp, period, phase = rng.uniform(6, 11), rng.uniform(0.05, 0.2), rng.uniform(4, 9), rng.uniform(0, 7)
    v = v0 * (1 + amp * np.sin(2 * np.pi * t / period + phase))  # m/s
    a, b = max(1, keyframes // 2 - 2), min(keyframes - 1, max(1, keyframes // 2 - 2) + 3)
    if stop:  # stands still from key frame a to b; stopping within 0.2 s keeps frames a and b moving
        v *= np.clip(np.maximum(a * 0.5 - t, t - b * 0.5) / 0.2, 0, 1)
    sc['static_keyframes'] = list(range(a + 1, b)) if stop else []
    sc['t_grid'], sc['s_grid'] = t, np.concatenate([[0], np.cumsum((v[1:] + v[:-1]) * 0.0005)]) - 20
    plan_boxes(rng, sc, sc['s_grid'][-1])
    el, az = np.deg2rad(rng.uniform(25, 60)), rng.uniform(-np.pi, np.pi)
    sc['sun'] = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    return sc


def plan_world(train_day=3, train_night=1, train_rain=1, val_day=1, val_night=1, val_rain=1, keyframes=10,
               sweeps=1, seed=0):
    """Scene plans, in that order: val names from splits/nuscenes_val.txt, train names outside it."""
    with open(os.path.join(SPLITS_DIR, 'nuscenes_val.txt')) as f:
        val_names = [line.strip() for line in f if line.strip()]
    if keyframes < 2 or sweeps < 0 or val_day + val_night + val_rain > len(val_names):
        raise ValueError(f"need keyframes >= 2, sweeps >= 0 and at most {len(val_names)} val scenes (got "
                         f"{keyframes}, {sweeps}, {val_day + val_night + val_rain})")
    scenes, names = [], {'val': iter(val_names), 'train': (f'scene-{i:04d}' for i in range(1, 10000)
                                                           if f'scene-{i:04d}' not in set(val_names))}
    for split, cond, n in [('train', 'day', train_day), ('train', 'night', train_night), ('train', 'rain', train_rain),
                           ('val', 'day', val_day), ('val', 'night', val_night), ('val', 'rain', val_rain)]:
        for _ in range(n):
            stop = split == 'train' and cond == 'day' and not any(s['static_keyframes'] for s in scenes)
            scenes.append(plan_scene(len(scenes), next(names[split]), split, cond, keyframes, sweeps, seed, stop))
    return scenes


@np.errstate(divide='ignore', invalid='ignore')
def cast_rays(scene, origin, dirs, window):
    """Nearest hit of rays origin + t * dirs: t, object (-2 sky, -1 ground, k box k), box face 0..5."""
    t = np.where(dirs[..., 2] < 0, -origin[2] / dirs[..., 2], np.inf)
    obj, face, bx = np.where(np.isfinite(t), -1, -2), np.zeros(t.shape, int), scene['boxes']
    for k in range(len(bx['size'])):
        win = window(bx['corners'][k])
        if win is None:
            continue
        view = np.s_[win[0]:win[1], win[2]:win[3]]
        d = dirs[view] @ bx['rot'][k]  # the box frame: axis-aligned, corner 0 at the origin
        o = (origin - bx['corners'][k, 0]) @ bx['rot'][k]
        t1, t2 = -o / d, (bx['size'][k] - o) / d  # slab test
        near, far = np.fmin(t1, t2).max(-1), np.fmax(t1, t2).min(-1)
        tv, ov, fv = t[view], obj[view], face[view]
        hit = (near <= far) & (near > 1e-6) & (near < tv)
        if hit.any():
            axis = np.fmin(t1[hit], t2[hit]).argmax(-1)  # the slab the ray entered by
            tv[hit], ov[hit] = near[hit], k
            fv[hit] = 2 * axis + (np.take_along_axis(d[hit], axis[:, None], -1)[:, 0] > 0)
    return t, obj, face


def box_window(corners, to_sensor, K=None, hw=None):
    """Rows and columns of the ray grid a box can cover, or None: for the camera (K, hw) the bounding box of
    the box's projection clipped at the near plane; for the lidar the azimuth columns its corners span."""
    p = corners @ to_sensor[:3, :3].T + to_sensor[:3, 3]
    if K is None:  # a lidar box close by, or across the seam behind (bearings -pi and pi), gets every column
        az = np.arctan2(p[:, 1], p[:, 0])
        lo, hi = ((np.array([az.min(), az.max()]) + np.pi) / (2 * np.pi) * LIDAR_AZIMUTHS).astype(int)
        return None if np.hypot(p[:, 0], p[:, 1]).min() > LIDAR_RANGE else (0, len(LIDAR_BEAMS)) + (
            (lo, hi + 2) if hi - lo < LIDAR_AZIMUTHS / 4 else (0, LIDAR_AZIMUTHS))
    z, (a, b) = p[:, 2] - 0.05, EDGES
    if z.max() < 0:
        return None
    cross = z[a] * z[b] < 0
    w = (z[a] / np.where(cross, z[a] - z[b], 1))[cross, None]
    p = np.concatenate([p[z >= 0], p[a][cross] + w * (p[b][cross] - p[a][cross])])
    u, v = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2] - 0.5, K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2] - 0.5
    r0, r1 = max(int(np.floor(v.min())), 0), min(int(v.max()) + 2, hw[0])
    c0, c1 = max(int(np.floor(u.min())), 0), min(int(u.max()) + 2, hw[1])
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def value_noise(x, y, seed):
    """Smooth noise in [0, 1] with unit feature size: a random lattice, smoothstep-interpolated."""
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = (x - ix) ** 2 * (3 - 2 * (x - ix)), (y - iy) ** 2 * (3 - 2 * (y - iy))
    ix, iy = ix.astype(np.int64) + 97 * seed, iy.astype(np.int64) + 53 * seed
    v = [LATTICE[(iy + j) & 255, (ix + i) & 255] for j in (0, 1) for i in (0, 1)]
    return (1 - fy) * (v[0] + fx * (v[1] - v[0])) + fy * (v[2] + fx * (v[3] - v[2]))


def fbm(x, y, fp, seed, scales=(6.0, 1.5, 0.4, 0.1)):
    """Fractal noise in about [-1, 1]; octaves finer than two pixel footprints fp fade out (no aliasing)."""
    return sum(np.clip(L / fp - 1, 0, 1) * (value_noise(x / L, y / L, seed + i) - 0.5) for i, L in enumerate(scales))


def stripe(x, w, fp):
    """Share of a pixel footprint fp covered by a line of width w centred at x = 0 (box-filtered)."""
    return np.clip(np.minimum(x + fp / 2, w / 2) - np.maximum(x - fp / 2, -w / 2), 0, None) / fp


def car_albedo(lx, ly, z, axis, size, col, fp, seed):
    """Car paint with detail that changes ALONG the car (mottling, door gaps, pillars, wheels): plain or
    horizontally banded sides let the image flow along them as the ego passes, hiding their depth."""
    L, W, h = size.T
    u = np.where(axis == 0, ly, lx)  # across the nose / tail, along the sides and the roof
    paint = col * (0.8 + 0.5 * fbm(u, np.where(axis == 2, ly, z), fp, seed + 7, (1.2, 0.35, 0.1)))[:, None]
    paint += 0.12 * fbm(u + 17, z, fp, seed + 11, (0.6, 0.2))[:, None]  # dirt and reflections, seen on any colour
    side = axis == 1
    doors = sum(stripe(lx - c * L, 0.05, fp) for c in (0.22, 0.5, 0.76))  # door and bonnet gaps
    handles = sum(stripe(lx - c * L, 0.18, fp) for c in (0.42, 0.68)) * stripe(z - 0.62 * h, 0.05, fp)
    trim = stripe(z - 0.48 * h, 0.05, fp)
    dark = np.clip(doors + handles, 0, 1) * side * (z > 0.3) * (z < 0.62 * h) + trim * (axis != 2)
    paint *= 1 - 0.7 * dark[:, None]
    pillar = sum(stripe(u - c * np.where(side, L, W), w, fp) for c, w in ((0.27, 0.12), (0.52, 0.1), (0.78, 0.2)))
    glass = (z > 0.62 * h) & (z < 0.93 * h) & (axis != 2) & (np.clip(pillar, 0, 1) * side < 0.5)
    glass_tint = np.array([.07, .09, .11]) * (1 + 1.5 * fbm(u, z, fp, seed + 13, (0.8, 0.25)))[:, None]
    cx = np.where(lx < L / 2, 0.85, L - 0.85)  # wheel centres 0.85 m from either end, 0.33 m up
    r, spoke = np.hypot(lx - cx, z - 0.33), np.cos(5 * np.arctan2(z - 0.33, lx - cx))
    wheel = side & (r < 0.33)  # tyre, a five-spoke rim and its hub; elsewhere below 0.35 m a dark sill
    grey = np.where(r < 0.06, 0.3, np.where(r < 0.2, 0.5 + 0.2 * spoke, 0.04 + 0.03 * (r > 0.3)))
    under = np.where(wheel, grey, 0.04)[:, None] * np.ones(3)
    return np.select([glass[:, None], ((z < 0.35) | wheel)[:, None]], [glass_tint, under], np.clip(paint, 0, 1))


def surface(scene, P, obj, face, fp):
    """Albedo and night emission at hit points: road, paving, grass, facades, cars, posts."""
    alb, emit, seed = np.zeros((len(P), 3)), np.zeros((len(P), 3)), scene['tex_seed']
    g, f = obj == -1, fp[obj == -1]
    s, l = road_coords(scene, P[g, 0], P[g, 1])
    al, tex = np.abs(l), fbm(s, l, f, seed)
    marks = np.clip(stripe(al - LINE, 0.15, f) + stripe(l, 0.15, f) * (s % 9 < 3), 0, 1)  # dashed centre line
    joints = np.maximum(stripe(s % 1.5 - 0.75, 1.42, f), stripe(l % 1.5 - 0.75, 1.42, f))
    grey = np.select([al < ROAD_HALF, al < KERB, al < PAVEMENT],
                     [0.3 + 0.12 * tex + 0.55 * marks, 0.72 + 0.05 * tex, 0.45 + 0.12 * joints + 0.08 * tex])
    dirt = np.clip(value_noise(s / 7, l / 7, seed + 9) * 2 - 0.5, 0, 1)[:, None]
    grass = ((1 - dirt) * [.22, .33, .12] + dirt * [.42, .36, .26]) * (1 + 0.8 * tex)[:, None]
    alb[g] = np.where((al < PAVEMENT)[:, None], grey[:, None] * [1, 1, 1.03], grass)
    b, bx = obj >= 0, scene['boxes']
    k, axis, f = obj[b], face[b] // 2, fp[b]
    lx, ly, z = np.einsum('nji,nj->in', bx['rot'][k], P[b] - bx['corners'][k, 0])  # box frame coordinates
    a, h, kind, col = np.where(axis == 0, ly, lx), bx['size'][k, 2], bx['kind'][k], bx['colour'][k]
    win = stripe(a % 2.8 - 1.4, 1.5, f) * stripe(z % 3.2 - 1.75, 1.6, f) * (z > 2.4) * (z < h - 0.8) * (axis != 2)
    lit = value_noise(np.floor(a / 2.8) * 7.3 + k * 31.1, np.floor(z / 3.2) * 5.1, seed) > 0.55
    wall = col * (0.88 + 0.3 * fbm(a + 50 * k, z, f, seed + 3))[:, None] * np.where(axis == 2, 0.75, 1)[:, None]
    wall = wall * (1 - win[:, None]) + win[:, None] * [.13, .16, .21]
    c = kind == 1
    car = col.copy()
    car[c] = car_albedo(lx[c], ly[c], z[c], axis[c], bx['size'][k[c]], col[c], f[c], seed + k[c] % 64)
    alb[b] = np.where((kind == 0)[:, None], wall, car)
    rear = (kind == 1) & (face[b] == 1) & (z > 0.45 * h) & (z < 0.6 * h) & (np.minimum(ly, bx['size'][k, 1] - ly) < .4)
    emit[b] = (win * lit * (kind == 0))[:, None] * [1.0, .75, .4] + rear[:, None] * [1.0, .08, .04]  # tail lights
    return alb, emit


def sky_colour(cond, elev):
    """Sky radiance by ray elevation (its sine), from the horizon's colour to the zenith's."""
    return SKY[cond][0] + np.clip(elev * 3, 0, 1)[..., None] * np.subtract(SKY[cond][1], SKY[cond][0])


def light(scene, P, nrm, alb, emit, view, ego, mirror=None):
    """Radiance of hits: sun and sky (day); overcast and a wet road (rain) that reflects `mirror`, the
    radiance arriving from the mirror direction (default: the sky); lamps and headlights (night)."""
    if scene['condition'] == 'day':
        sun = np.clip(nrm @ scene['sun'], 0, None)[:, None]
        return alb * ((0.3 + 0.15 * nrm[:, 2:]) * [.9, .95, 1.05] + 0.75 * sun * [1, .96, .88])
    if scene['condition'] == 'rain':
        s, l = road_coords(scene, P[:, 0], P[:, 1])
        puddle = np.clip(value_noise(s / 4, l / 2, scene['tex_seed'] + 5) * 3 - 1.5, 0, 1)
        wet = ((nrm[:, 2] > 0.5) & (np.abs(l) < PAVEMENT) & (P[:, 2] < 0.01))[:, None]
        refl = wet * (0.3 + 0.6 * puddle[:, None]) * (1 - np.abs(view[:, 2:])) ** 2  # Fresnel-like: grazing
        rad = alb * (0.5 + 0.2 * nrm[:, 2:]) * [.92, .95, 1.0] * (1 - 0.4 * wet)
        return rad * (1 - refl) + refl * (sky_colour('rain', -view[:, 2]) if mirror is None else mirror)
    irr = np.full((len(P), 3), 0.03) * [.6, .7, 1.0]  # moonlight
    for lamp in scene['lamps'][np.linalg.norm(scene['lamps'][:, :2] - ego[:2, 3], axis=1) < 120]:
        L = lamp - P
        d2 = (L * L).sum(1)
        irr += (25 * np.clip((nrm * L).sum(1), 0, None) / d2 ** 1.5 * (d2 < 3600))[:, None] * [1, .72, .42]
    L = P - (ego[:3, 3] + 3.6 * ego[:3, 0] + [0, 0, 0.7])  # from the headlights: a cone, dipped 1.5 degrees
    d = np.linalg.norm(L, axis=1) + 1e-6
    beam = np.clip(((L @ ego[:3, 0]) / d - 0.85) / 0.1, 0, 1) * np.exp(-((np.arcsin(L[:, 2] / d) + 0.026) / 0.07) ** 2)
    irr += (1200 * beam * np.clip(-(nrm * L).sum(1) / d, 0, None) / (d * d + 4))[:, None] * [1, .97, .9]
    return alb * irr + emit


def camera_effects(scene, rgb, depth, T, K, rng):
    """Night: soft saturation, lamp glare, shot and read noise. Rain: low contrast, streaks, a wet-lens blur."""
    (H, W), cond = depth.shape, scene['condition']
    if cond == 'night':
        rgb, (v, u) = 1 - np.exp(-1.2 * rgb), np.mgrid[:H, :W] + 0.5
        for x, y, z in (scene['lamps'] - T[:3, 3]) @ T[:3, :3]:  # lamp heads in the camera frame
            pu, pv = K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]
            if z < 1 or not (0 <= pu < W and 0 <= pv < H) or 0 < depth[int(pv), int(pu)] < z - 0.5:
                continue  # behind, outside, or hidden
            r2 = ((u - pu) ** 2 + (v - pv) ** 2) / (0.3 * K[0, 0] / z + 0.6) ** 2
            rgb = rgb + (np.exp(-r2 / 2) + 0.15 * np.exp(-r2 / 18))[..., None] * [1, .8, .55]
        return rgb + rng.normal(0, 1, rgb.shape) * (0.012 + 0.05 * np.sqrt(np.clip(rgb, 0, 1)))
    if cond == 'rain':
        drops = (rng.random((H, W)) < 0.004) * rng.uniform(0.05, 0.12, (H, W))
        streaks = sum(np.roll(drops, (j, round(0.15 * j)), (0, 1)) for j in range(max(2, H // 14)))  # slanted
        rgb = 0.8 * rgb + 0.2 * rgb.mean() + np.clip(streaks, 0, 0.5)[..., None] * (0.85 - rgb)
        pad = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode='edge')
        return 0.4 * rgb + 0.15 * (pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:])
    return rgb


def shade(scene, origin, dirs, t, obj, face, K, ego, mirror=None):
    """Radiance (N, 3) along rays origin + t * dirs with cast_rays' hits: lit and hazed surfaces, else sky."""
    norm, hit, cond = np.linalg.norm(dirs, axis=1), obj > -2, scene['condition']
    view, rgb = dirs / norm[:, None], np.zeros((len(t), 3))
    rgb[~hit] = sky_colour(cond, view[~hit, 2])
    P, dist, obj, face = origin + t[hit, None] * dirs[hit], t[hit] * norm[hit], obj[hit], face[hit]
    rot = scene['boxes']['rot'][np.maximum(obj, 0), :, face // 2]  # box faces 0..5: axes x, y, z; odd: -
    nrm = np.where((obj < 0)[:, None], [0.0, 0, 1], np.where(face % 2, -1.0, 1.0)[:, None] * rot)
    fp = dist / K[0, 0] / np.sqrt(np.clip(np.abs((nrm * view[hit]).sum(1)), 0.05, 1))  # metres per pixel
    alb, emit = surface(scene, P, obj, face, fp)
    fog = np.exp(-dist / FOG_M[cond])[:, None]
    mirror = None if mirror is None else mirror[hit]
    rgb[hit] = light(scene, P, nrm, alb, emit, view[hit], ego, mirror) * fog + (1 - fog) * sky_colour(cond, 0 * dist)
    return rgb


def render_frame(scene, timestamp, size):
    """CAM_FRONT image (H, W, 3) uint8 and exact depth (H, W) float32 (camera z, 0 = sky) at a time (us)."""
    (H, W), K, ego = size, intrinsics(size), rigid(*ego_pose(scene, timestamp))
    T = ego @ rigid(*CALIBRATION['CAM_FRONT'])
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ T[:3, :3].T
    t, obj, face = cast_rays(scene, T[:3, 3], dirs, partial(box_window, to_sensor=np.linalg.inv(T), K=K, hw=size))
    mirror = None
    if scene['condition'] == 'rain':  # the wet road mirrors the street: cars and facades upside down beneath
        # them, the hazard rain brings to depth nets. The road is the plane z = 0, so the mirrored scene is the
        # scene seen by the camera's mirror image below it; its boxes cover the pixels of their mirrored
        # corners. The reflection is hazed over its whole path, and shade() hazes the first leg once more.
        flip = np.array([1.0, 1.0, -1.0])
        tm, om, fm = cast_rays(scene, T[:3, 3] * flip, dirs * flip,
                               lambda c: box_window(c * flip, to_sensor=np.linalg.inv(T), K=K, hw=size))
        om = np.where(tm > 0, om, -2)  # rays that look up meet the plane behind the mirrored camera: unused
        mirror = shade(scene, T[:3, 3] * flip, (dirs * flip).reshape(-1, 3), tm.ravel(), om.ravel(), fm.ravel(),
                       K, ego)
    rgb = shade(scene, T[:3, 3], dirs.reshape(-1, 3), t.ravel(), obj.ravel(), face.ravel(), K, ego, mirror)
    depth = np.where(obj > -2, t, 0).astype(np.float32)  # (H, W)
    rng = np.random.default_rng([scene['tex_seed'], timestamp % (1 << 32)])  # noise and streaks per frame
    rgb = camera_effects(scene, rgb.reshape(H, W, 3), depth, T, K, rng)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), depth


def lidar_points(scene, timestamp):
    """LIDAR_TOP sweep at a time (us): (N, 5) float32 x, y, z, intensity, ring in the lidar frame."""
    T = rigid(*ego_pose(scene, timestamp)) @ rigid(*CALIBRATION['LIDAR_TOP'])
    az, el = np.linspace(-np.pi, np.pi, LIDAR_AZIMUTHS, endpoint=False), LIDAR_BEAMS[:, None]
    local = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) + 0 * az], -1)
    t, obj, face = cast_rays(scene, T[:3, 3], local @ T[:3, :3].T, partial(box_window, to_sensor=np.linalg.inv(T)))
    keep = t < LIDAR_RANGE
    points = local[keep] * t[keep, None]
    alb = surface(scene, points @ T[:3, :3].T + T[:3, 3], obj[keep], face[keep], np.full(keep.sum(), 0.05))[0]
    ring = np.broadcast_to(np.arange(len(LIDAR_BEAMS))[:, None], t.shape)[keep]
    return np.c_[points, alb.mean(1) * 255, ring].astype(np.float32)


def build_tables(scenes, size, seed):
    """The seven nuScenes tables of planned scenes, and the files to render [(scene, time, path, depth path)]."""
    tab, jobs, modality = {name: [] for name in TABLES}, [], {'CAM_FRONT': 'camera', 'LIDAR_TOP': 'lidar'}
    tab['sensor'] = [{'token': token(seed, ch), 'channel': ch, 'modality': m} for ch, m in modality.items()]
    for sc in scenes:
        name, log, keys = sc['name'], sc['log'], [ts for ts, key in sc['cameras'] if key]
        tab['log'].append({'token': token(seed, name, 'log'), 'logfile': log, 'vehicle': f'syn{seed}',
                           'date_captured': '2018-08-01', 'location': 'synthetic-town'})
        tab['calibrated_sensor'] += [{'token': token(seed, name, ch), 'sensor_token': token(seed, ch), 'translation':
                                      list(t), 'rotation': list(q), 'camera_intrinsic': intrinsics(size).tolist()
                                      if ch == 'CAM_FRONT' else []} for ch, (t, q) in CALIBRATION.items()]
        samples = [token(seed, name, 'sample', k) for k in range(len(keys))]
        tab['sample'] += [{'token': samples[k], 'timestamp': ts + LIDAR_DELAY_US, 'scene_token': token(seed, name),
                           'prev': samples[k - 1] if k else '', 'next': samples[k + 1] if k + 1 < len(keys) else ''}
                          for k, ts in enumerate(keys)]  # a sample's timestamp is its LIDAR_TOP sweep's
        chains = {'CAM_FRONT': [(ts, key, samples[min(sum(k <= ts for k in keys) - key, len(keys) - 1)],  # sweep:
                                 f"{'samples' if key else 'sweeps'}/CAM_FRONT/{log}__CAM_FRONT__{ts}.jpg")  # next
                                for ts, key in sc['cameras']],
                  'LIDAR_TOP': [(ts + LIDAR_DELAY_US, True, samples[k], f'samples/LIDAR_TOP/{log}__LIDAR_TOP__'
                                 f'{ts + LIDAR_DELAY_US}.pcd.bin') for k, ts in enumerate(keys)]}
        for ch, chain in chains.items():
            tokens, hw = [token(seed, name, ch, ts) for ts, *_ in chain], size if ch == 'CAM_FRONT' else (0, 0)
            for i, (ts, key, sample, path) in enumerate(chain):
                tab['sample_data'].append({
                    'token': tokens[i], 'sample_token': sample, 'ego_pose_token': tokens[i],
                    'calibrated_sensor_token': token(seed, name, ch), 'timestamp': ts,
                    'fileformat': path.split('.')[1], 'is_key_frame': key, 'height': hw[0], 'width': hw[1],
                    'filename': path, 'prev': tokens[i - 1] if i else '', 'next': tokens[i + 1] if i + 1 < len(chain)
                    else ''})
                translation, rotation = ego_pose(sc, ts)  # nuScenes keys an ego pose by its sample_data token
                tab['ego_pose'].append({'token': tokens[i], 'timestamp': ts, 'rotation': rotation,
                                        'translation': translation})
                jobs.append((sc['index'], ts, path, f'depth/CAM_FRONT/{path.split("/")[-1][:-4]}.npy'
                             if key and ch == 'CAM_FRONT' else None))
        tab['scene'].append({'token': token(seed, name), 'log_token': token(seed, name, 'log'),
                             'nbr_samples': len(keys), 'first_sample_token': samples[0],
                             'last_sample_token': samples[-1], 'name': name, 'description': sc['description']})
    return tab, jobs


def atomic_write(path, write):
    """`write(binary file)` fills `path` whole or not at all (data.write_atomic)."""
    def fill(tmp):
        with open(tmp, 'wb') as f:
            write(f)
    data.write_atomic(path, fill)


def write_jpeg(path, image):
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format='JPEG', quality=92))


def render_file(job):
    """Render one file of the world (an image and its depth, or a lidar sweep) and write it atomically."""
    out_root, size, scene, ts, path, depth_path = job
    if path.endswith('.pcd.bin'):
        return atomic_write(os.path.join(out_root, path), lidar_points(scene, ts).tofile)
    image, depth = render_frame(scene, ts, size)
    write_jpeg(os.path.join(out_root, path), image)
    if depth_path:
        atomic_write(os.path.join(out_root, depth_path), lambda f: np.save(f, depth))


def render_translation(job):
    """Render one key frame under another condition (same scene, pose and time) and write it atomically."""
    out_path, size, scene, ts, cond = job
    write_jpeg(out_path, render_frame(dict(scene, condition=cond), ts, size)[0])


def render_world(out_root, train_day=3, train_night=1, train_rain=1, val_day=1, val_night=1, val_rain=1,
                 keyframes=10, sweeps=1, size=(180, 320), seed=0, workers=1, progress=False):
    """Render the world as a nuScenes dataroot (version v1.0-trainval) under out_root; returns out_root.

    out_root must be new, empty, or a world rendered with the same settings (then missing files are made).
    """
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be (H, W) with at least 8 pixels each, got {size}")
    params = dict(train_day=train_day, train_night=train_night, train_rain=train_rain, val_day=val_day,
                  val_night=val_night, val_rain=val_rain, keyframes=keyframes, sweeps=sweeps, seed=seed)
    params['size'], marker = [int(size[0]), int(size[1])], Path(out_root, VERSION, 'scenes.json')
    old = json.loads(marker.read_text())['params'] if marker.is_file() else f'no {VERSION}/scenes.json'
    if os.path.isdir(out_root) and os.listdir(out_root) and old != params:  # resume only the same world
        raise FileExistsError(f"--out {out_root} is not empty and is not a synthetic world with these settings "
                              f"(found {old}); pass a new or empty folder, or delete it to render {params}")
    scenes = plan_world(**{k: v for k, v in params.items() if k != 'size'})
    tables, jobs = build_tables(scenes, params['size'], seed)
    dump = lambda obj: lambda f: f.write(json.dumps(obj, indent=1).encode())
    atomic_write(marker, dump({'generator': 'synthetic.py', 'params': params, 'scenes': [
        {'name': s['name'], 'split': s['split'], 'condition': s['condition'], 'description': s['description'],
         'keyframes': keyframes, 'camera_frames': len(s['cameras']), 'static_keyframes': s['static_keyframes']}
        for s in scenes]}))
    todo = [(out_root, params['size'], scenes[i], *job) for i, *job in jobs  # resume: existing files are whole
            if not all(os.path.isfile(os.path.join(out_root, p)) for p in job[1:] if p)]
    with ProcessPoolExecutor(workers) if workers > 1 and len(todo) > 1 else nullcontext() as pool:
        results = pool.map(render_file, todo, chunksize=4) if pool else map(render_file, todo)
        for _ in tqdm(results, total=len(todo), desc='rendering', unit='file', disable=not progress):
            pass
    for name, rows in tables.items():  # last: readers never see tables naming files not yet written
        atomic_write(os.path.join(out_root, VERSION, name + '.json'), dump(rows))
    return out_root


def render_translations(world_root, gdt_root, conds=('night', 'rain'), workers=1, progress=False):
    """Ideal (oracle) GDT of a rendered world: every training target the student can draw (the key frames
    of the day-clear train scenes where the ego moves, data.list_images' 'train' list) rendered again
    under each condition of `conds` with the same scene, ego pose and time, so the geometry is exactly the
    day frame's (docs/method.md §1: GDT keeps the depth and changes the condition). Written where data.py
    looks for translations, `<gdt_root>/<cond>/<the day frame's path>` (same name and JPEG format); no
    frame is rejected, so no manifest is needed. Deterministic, atomic files, a rerun resumes."""
    marker = Path(world_root, VERSION, 'scenes.json')
    if not marker.is_file():
        raise FileNotFoundError(f"no {marker}: {world_root} is not a world rendered by synthetic.py")
    unknown = [c for c in conds if c not in ('night', 'rain')]
    if unknown or not conds:
        raise ValueError(f"conditions must be among night, rain (got {list(conds)})")
    if Path(gdt_root).resolve().is_relative_to(Path(world_root).resolve()):
        raise ValueError(f"{gdt_root} is inside the world {world_root}: translations never go into the dataset")
    params = json.loads(marker.read_text())['params']
    scenes = plan_world(**{k: v for k, v in params.items() if k != 'size'})
    stamp = json.dumps({'generator': 'synthetic.py render_translations', 'world': params}, indent=1)
    for cond in conds:  # a folder of translations of another world is never mixed with this one's
        found = Path(gdt_root, cond, 'rendered.json')
        if found.is_file() and found.read_text() != stamp:
            raise FileExistsError(f"{found.parent} holds renderings of another world ({found.read_text()}); "
                                  "pass a new folder")
    targets = []
    for sc in scenes:
        keys = [ts for ts, key in sc['cameras'] if key]
        if sc['split'] == 'train' and sc['condition'] == 'day':
            targets += [(sc, ts, f'samples/CAM_FRONT/{sc["log"]}__CAM_FRONT__{ts}.jpg')
                        for k, ts in enumerate(keys) if k not in sc['static_keyframes']]
    todo = [(os.path.join(gdt_root, cond, path), params['size'], sc, ts, cond) for cond in conds
            for sc, ts, path in targets if not os.path.isfile(os.path.join(gdt_root, cond, path))]
    for cond in conds:
        atomic_write(os.path.join(gdt_root, cond, 'rendered.json'), lambda f: f.write(stamp.encode()))
    with ProcessPoolExecutor(workers) if workers > 1 and len(todo) > 1 else nullcontext() as pool:
        results = pool.map(render_translation, todo, chunksize=4) if pool else map(render_translation, todo)
        for _ in tqdm(results, total=len(todo), desc='rendering translations', unit='file', disable=not progress):
            pass
    return gdt_root


def image_size(text):
    """'HxW' -> (H, W), as data.parse_size reads it (not imported: the renderer needs no torch)."""
    h, _, w = text.lower().partition('x')
    if not (h.isdigit() and w.isdigit()) or int(h) * int(w) == 0:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give HxW with both sides positive, e.g. 180x320")
    return int(h), int(w)


def main(argv=None):
    p = data.ArgumentParser(description='Render the synthetic world as a nuScenes dataroot.')
    p.add_argument('--out', dest='out_root', required=True, help='dataroot to write: new, empty, or one to resume')
    p.add_argument('--size', type=image_size, default=(180, 320), metavar='HxW',
                   help='image size HxW as every other command (nuScenes: 900x1600)')
    p.add_argument('--keyframes', type=int, default=10, help='key frames per scene (2 Hz)')
    p.add_argument('--sweeps', type=int, default=1, help='camera sweeps between two key frames (5: 12 Hz)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1), help='rendering processes')
    for split, cond in [(s, c) for s in ('train', 'val') for c in ('day', 'night', 'rain')]:
        p.add_argument(f'--{split}-{cond}', type=int, default=3 if split + cond == 'trainday' else 1)
    p.add_argument('--translate', metavar='WORLD', help="instead of a world: render WORLD's training targets "
                   "under --cond into --out/<cond>/, a GDT folder of ideal translations for train_student.py")
    p.add_argument('--cond', nargs='+', default=['night', 'rain'], choices=['night', 'rain'],
                   help='conditions for --translate')
    args = vars(p.parse_args(argv))
    translating = args['translate'] is not None
    counts = {k: v for k, v in args.items() if k.startswith(('train_', 'val_'))}
    if not translating and (min(counts.values()) < 0 or sum(counts.values()) < 1):
        p.error('scene counts: give at least one scene (--train-day, --val-night, ...) and no negative count')
    if args['workers'] < 1:
        p.error('--workers must be at least 1')
    world, conds = args.pop('translate'), args.pop('cond')
    if world:
        print(f"wrote {render_translations(world, args['out_root'], conds, args['workers'], progress=True)}: "
              f"translations of {world} into {', '.join(conds)} (train_student.py --gdt-root)")
        return
    print(f"wrote {render_world(**args, progress=True)}: a nuScenes dataroot, version {VERSION}")


if __name__ == '__main__':
    data.run_cli(main, 'synthetic.py')
