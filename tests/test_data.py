"""data.py: nuScenes / RobotCar / folder readers, LiDAR ground truth, splits, augmentation."""
import argparse
import colorsys
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance

import data
import gdt
from worlds import DAY, NIGHT, RC_K, make_nuscenes, make_robotcar, save_bonnet_frame, save_image

# The fake tree's train split is cam1 (its scene's first sample) and cam3: md4all's scene-end rule would train
# on cam3 twice. Tests about other things keep both frames.
BOTH = dict(scene_ends='keep')

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'nuscenes_sample')
CAM_TOKEN = 'e3d495d4ac534d54b321f50006683844'
CAM_IMAGE = 'samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg'


# An independent projection of the real fixture frame

def hamilton(a, b):
    """Quaternion product a * b, (w, x, y, z)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def rotate(q, points):
    """Rotate (N, 3) points by q as q * (0, p) * conj(q), all points at once."""
    q = np.asarray(q) / np.linalg.norm(q)
    conj = q * np.array([1, -1, -1, -1])
    pure = np.concatenate([np.zeros((len(points), 1)), points], axis=1).T  # (4, N) quaternions (0, p)
    return hamilton(hamilton(q, pure), conj)[1:].T


def hand_projection(K, hw):
    """The fixture's LiDAR map by four explicit steps, written without data.py's helpers."""
    folder = os.path.join(FIXTURE, 'v1.0-mini')
    table = lambda name: {r['token']: r for r in json.load(open(os.path.join(folder, name + '.json')))}
    sd, calib, pose = table('sample_data'), table('calibrated_sensor'), table('ego_pose')
    cam = sd[CAM_TOKEN]
    lidar = next(r for r in sd.values() if r['fileformat'] == 'pcd')
    pts = np.fromfile(os.path.join(FIXTURE, lidar['filename']), np.float32).reshape(-1, 5)[:, :3].astype(float)
    lc, le = calib[lidar['calibrated_sensor_token']], pose[lidar['ego_pose_token']]
    ce, cc = pose[cam['ego_pose_token']], calib[cam['calibrated_sensor_token']]
    pts = rotate(lc['rotation'], pts) + lc['translation']               # lidar -> ego(t_lidar)
    pts = rotate(le['rotation'], pts) + le['translation']               # -> global
    pts = rotate(np.array(ce['rotation']) * [1, -1, -1, -1], pts - ce['translation'])  # -> ego(t_cam)
    pts = rotate(np.array(cc['rotation']) * [1, -1, -1, -1], pts - cc['translation'])  # -> camera
    u, v = K[0][0] * pts[:, 0] / pts[:, 2] + K[0][2], K[1][1] * pts[:, 1] / pts[:, 2] + K[1][2]
    keep = (pts[:, 2] > 1) & (1 < u) & (u < hw[1] - 1) & (1 < v) & (v < hw[0] - 1)
    pixel = v[keep].astype(int) * hw[1] + u[keep].astype(int)  # a point at u in [i, i+1) lands on column i
    # later points (in file order) overwrite earlier ones: each pixel keeps the highest point number
    last = np.full(hw[0] * hw[1], -1)
    np.maximum.at(last, pixel, np.arange(pixel.size))
    depth = np.zeros(hw[0] * hw[1], np.float32)
    depth[last >= 0] = pts[keep, 2][last[last >= 0]]
    return depth.reshape(hw)


@pytest.fixture(scope='module')
def fixture_map():
    return data.lidar_depth_map(FIXTURE, 'v1.0-mini', CAM_TOKEN)


def test_quaternion_to_rotation_turns_x_into_y_for_90_degrees_about_z():
    q = (math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4))
    assert np.allclose(data.quaternion_to_rotation(q) @ [1, 0, 0], [0, 1, 0])
    assert np.allclose(data.quaternion_to_rotation((1, 0, 0, 0)), np.eye(3))


def test_fixture_lidar_map_has_about_3000_points_between_4_5_and_99_m(fixture_map):
    assert fixture_map.shape == (900, 1600) and fixture_map.dtype == np.float32
    valid = fixture_map[fixture_map > 0]
    assert 2950 <= valid.size <= 3053  # ATTRIBUTION.md: 3,053 points, a few share a pixel
    assert 4.5 <= valid.min() < 5.0 and 97.0 < valid.max() < 99.0


def test_fixture_lidar_map_leaves_the_sky_empty(fixture_map):
    assert not fixture_map[:190].any()           # above every building and tree top
    assert not fixture_map[:250, 900:1200].any()  # open sky and clouds above the road
    assert (fixture_map[700:] > 0).sum() > 300    # the road in front is densely hit


def test_fixture_lidar_map_matches_an_independent_projection(fixture_map):
    K = json.load(open(os.path.join(FIXTURE, 'v1.0-mini', 'calibrated_sensor.json')))[0]['camera_intrinsic']
    expected = hand_projection(K, (900, 1600))
    assert ((expected > 0) == (fixture_map > 0)).all()
    assert np.allclose(expected, fixture_map, atol=1e-4)


def test_lidar_map_at_network_size_uses_scaled_intrinsics():
    small = data.lidar_depth_map(FIXTURE, 'v1.0-mini', CAM_TOKEN, size=(320, 576))
    calibration = json.load(open(os.path.join(FIXTURE, 'v1.0-mini', 'calibrated_sensor.json')))
    K = np.array(calibration[0]['camera_intrinsic'])
    K[0] *= 576 / 1600
    K[1] *= 320 / 900
    assert small.shape == (320, 576)
    assert np.allclose(small, hand_projection(K, (320, 576)), atol=1e-4)


def test_nuscenes_lidar_keeps_points_deeper_than_1_m_strictly_inside_a_1_pixel_border_at_floor_u():
    K, hw = np.eye(3), (6, 8)  # u = x / z, v = y / z; the open border is 1 < u < 7, 1 < v < 5
    uvz = [(1.0, 3.0, 2.0), (7.0, 3.0, 2.0), (4.0, 1.0, 2.0), (4.0, 5.0, 2.0),  # on the border: dropped
           (5.0, 2.0, 1.0),                                                    # exactly 1 m deep: dropped
           (2.7, 3.2, 2.0), (5.5, 4.9, 1.5)]                                   # kept at (floor v, floor u)
    points = np.array([(u * z, v * z, z) for u, v, z in uvz]).T
    depth = data.project_to_depth_map(points, K, hw)
    assert {(int(v), int(u)): float(depth[v, u]) for v, u in zip(*np.nonzero(depth))} == {(3, 2): 2.0, (4, 5): 1.5}


def test_robotcar_gt_keeps_u_from_half_a_pixel_to_w_minus_1_at_the_rounded_pixel():
    K, G, hw = np.eye(3), np.eye(4), (6, 8)  # G = identity: the points are already in the image frame
    uvz = [(0.5, 2.0, 2.0), (7.0, 3.0, 3.0), (3.0, 5.0, 4.0), (4.0, 0.5, 5.0),  # on the SDK's bounds: kept
           (0.3, 4.0, 2.0), (7.2, 1.0, 2.0), (2.0, 5.3, 2.0), (5.0, 0.4, 2.0),  # just outside: dropped
           (2.6, 2.4, 6.0)]                                                    # rounds to (2, 3)
    points = np.array([(u * z, v * z, z) for u, v, z in uvz]).T
    depth = data.robotcar_depth_map(points, K, G, hw, max_depth=50.0)
    # numpy rounds halves to even: u = 0.5 lands on column 0, v = 0.5 on row 0
    assert {(int(v), int(u)): float(depth[v, u]) for v, u in zip(*np.nonzero(depth))} == {
        (2, 0): 2.0, (3, 7): 3.0, (5, 3): 4.0, (0, 4): 5.0, (2, 3): 6.0}


def depth_colour(z):
    """Overlay colour of a LiDAR depth: green near, red at 40 m and beyond."""
    near = int(255 * min(z, 40) / 40)
    return 255 - near, near, 0


def points_within(mask, r):
    """How many True pixels of `mask` lie in the (2r+1)^2 box around each pixel (an integral image)."""
    table = np.pad(mask.astype(int), r).cumsum(0).cumsum(1)
    table = np.pad(table, ((1, 0), (1, 0)))
    h, w, k = mask.shape[0], mask.shape[1], 2 * r + 1
    return table[k:k + h, k:k + w] - table[:h, k:k + w] - table[k:k + h, :w] + table[:h, :w]


def test_lidar_overlay_png_shows_points_on_the_image(fixture_map, tmp_path):
    plain = Image.open(os.path.join(FIXTURE, CAM_IMAGE)).convert('RGB')
    image = plain.copy()
    draw = ImageDraw.Draw(image)
    points = list(zip(*np.nonzero(fixture_map)))
    for v, u in points:
        draw.ellipse((u - 2, v - 2, u + 2, v + 2), fill=depth_colour(fixture_map[v, u]))
    out = tmp_path / 'lidar_on_cam_front.png'
    image.save(out, compress_level=1)
    shown, plain = np.asarray(Image.open(out).convert('RGB')).astype(int), np.asarray(plain).astype(int)
    assert shown.shape == plain.shape == (900, 1600, 3)
    # every LiDAR pixel shows a depth colour (its own, or a neighbour's dot drawn later): r + g = 255, b = 0
    v, u = np.nonzero(fixture_map)
    assert (shown[v, u, 0] + shown[v, u, 1] == 255).all() and (shown[v, u, 2] == 0).all()
    assert (shown[v, u] != plain[v, u]).any(-1).mean() > 0.99
    # a point with no other point within 4 px shows its own depth: near points green, far ones red
    occupied = fixture_map > 0
    neighbours = points_within(occupied, 4)
    alone = [(v, u) for v, u in points if neighbours[v, u] == 1]
    assert len(alone) > 100
    assert all(tuple(shown[v, u]) == depth_colour(fixture_map[v, u]) for v, u in alone)
    # away from the dots (their 5x5 boxes) the PNG is the camera image, pixel for pixel
    covered = points_within(occupied, 2) > 0
    assert np.array_equal(shown[~covered], plain[~covered]) and covered.mean() < 0.1


def test_fixture_lidar_map_matches_the_nuscenes_devkit(fixture_map):
    pytest.importorskip('nuscenes')
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points
    from pyquaternion import Quaternion
    index = data.load_index(FIXTURE, 'v1.0-mini')
    cam = index.sample_data[CAM_TOKEN]
    lidar = index.sample_data[index.key_frames[cam['sample_token']]['LIDAR_TOP']]
    pc = LidarPointCloud.from_file(os.path.join(FIXTURE, lidar['filename']))
    for record, inverse in ((index.calibrated_sensor[lidar['calibrated_sensor_token']], False),
                            (index.ego_pose[lidar['ego_pose_token']], False),
                            (index.ego_pose[cam['ego_pose_token']], True),
                            (index.calibrated_sensor[cam['calibrated_sensor_token']], True)):
        if inverse:
            pc.translate(-np.array(record['translation']))
            pc.rotate(Quaternion(record['rotation']).rotation_matrix.T)
        else:
            pc.rotate(Quaternion(record['rotation']).rotation_matrix)
            pc.translate(np.array(record['translation']))
    K = np.array(index.calibrated_sensor[cam['calibrated_sensor_token']]['camera_intrinsic'])
    uv = view_points(pc.points[:3], K, normalize=True)
    depth = pc.points[2]
    keep = (depth > 1) & (uv[0] > 1) & (uv[0] < 1599) & (uv[1] > 1) & (uv[1] < 899)
    expected = np.zeros((900, 1600), np.float32)
    expected[uv[1, keep].astype(int), uv[0, keep].astype(int)] = depth[keep]
    assert np.allclose(expected, fixture_map, atol=1e-4)


# A fake nuScenes tree (tests/worlds.py)

@pytest.fixture
def nusc(tmp_path):
    data.load_index.cache_clear()
    return make_nuscenes(tmp_path / 'nusc')


def test_condition_labels_come_from_the_scene_description():
    assert data.condition_of('Night, RAIN, peds') == 'night-rain'
    assert data.condition_of('Rain, construction') == 'day-rain'
    assert data.condition_of('nighttime drive') == 'night-clear'
    assert data.condition_of('Parked cars') == 'day-clear'


def test_val_split_keeps_every_key_frame_of_val_scenes_with_its_condition(nusc):
    frames = data.load_index(nusc).split('val')
    assert frames == [('scene-0003-cam0', 'night-rain'), ('scene-0003-cam2', 'night-rain'),
                      ('scene-0012-cam0', 'day-rain'), ('scene-0012-cam2', 'day-rain')]


def test_train_split_drops_night_static_and_frames_without_neighbours(nusc):
    # scene-0001 key frames: cam1, cam3 move at 10 m/s; cam5 is static (0 m/s to both neighbours);
    # cam7 has no next frame; scene-0002 is night
    assert [t for t, _ in data.load_index(nusc).split('train')] == ['scene-0001-cam1', 'scene-0001-cam3']
    assert data.list_images('nuscenes', nusc) == ['samples/CAM_FRONT/scene-0001-cam1.png',
                                                  'samples/CAM_FRONT/scene-0001-cam3.png']


def test_train_items_follow_md4alls_scene_end_rule_unless_told_to_keep_them(nusc):
    # cam1 is scene-0001's first sample (it has a sweep before it, so it passes the moving filter): md4all's
    # correct_index trains on the next kept key frame, cam3, in its place
    md4all = data.NuScenesDepth(nusc, split='train', size=(24, 40))
    assert [t for t, _ in md4all.items] == ['scene-0001-cam3', 'scene-0001-cam3']
    assert md4all[0]['key'] == 'scene-0001-cam3' and torch.equal(md4all[0]['color'], md4all[1]['color'])
    keep = data.NuScenesDepth(nusc, split='train', size=(24, 40), scene_ends='keep')
    assert [t for t, _ in keep.items] == ['scene-0001-cam1', 'scene-0001-cam3']
    index = data.load_index(nusc)  # the last sample of a scene steps back; a scene's only frame stays
    items = [('scene-0001-cam3', 'day-clear'), ('scene-0001-cam7', 'day-clear'), ('scene-0003-cam0', 'night-rain')]
    assert [t for t, _ in data.replace_scene_ends(index, items)] == ['scene-0001-cam3', 'scene-0001-cam3',
                                                                     'scene-0003-cam0']
    with pytest.raises(ValueError, match="--scene-ends 'drop' is unknown"):
        data.NuScenesDepth(nusc, split='train', scene_ends='drop')


def test_static_frame_filter_keeps_a_mean_speed_of_exactly_half_a_metre_per_second(nusc):
    """md4all drops a training frame whose mean ego speed to its two neighbours is below 0.5 m/s."""
    path = os.path.join(nusc, 'v1.0-trainval', 'ego_pose.json')
    poses = json.load(open(path))
    step = 100_000 * 1e-6  # the frame interval in seconds: moving exactly this far takes 1 m/s
    # scene-0001 key frames cam1, cam3, cam5 (cam7 has no next frame): speeds to prev and next
    # cam1: 0 and 1 m/s, mean 0.5: kept; cam3: 0 and 0.98 m/s, mean 0.49: dropped; cam5: 0 and 0: dropped
    xs = [0.0, 0.0, step, step, 1.98 * step, 1.98 * step, 1.98 * step, 1.0]
    for pose in poses:
        if pose['token'].startswith('scene-0001-cam'):
            pose['translation'][0] = xs[int(pose['token'].split('cam')[1].split('-')[0])]
    json.dump(poses, open(path, 'w'))
    data.load_index.cache_clear()
    index = data.load_index(nusc)
    assert [t for t, _ in index.split('train')] == ['scene-0001-cam1']


def test_training_item_carries_neighbours_scaled_intrinsics_and_distances(nusc):
    item = data.NuScenesDepth(nusc, size=(24, 40), frames=(-1, 0, 1), with_lidar=True)[1]
    assert item['key'] == 'scene-0001-cam3' and item['cond'] == 'day-clear'
    for key in ('color', 'input', 'prev', 'next'):
        assert item[key].shape == (3, 24, 40) and item[key].dtype == torch.float32
    assert torch.allclose(item['K'], torch.tensor([[20.0, 0, 20], [0, 20, 12], [0, 0, 1]]))
    # ego x: prev sweep at 2 m, target at 3 m, next sweep at 4 m
    assert item['dist_prev'].item() == pytest.approx(1.0) and item['dist_next'].item() == pytest.approx(1.0)
    assert item['prev'][0, 0, -1] * 255 == pytest.approx(40, abs=1)  # the sweep before: red = 20 * 2
    # both LiDAR points land on pixel (20, 12): u = 20 + 20 * 0.1 / z, v = 12 + 20 * 0.1 / z; the later wins
    assert item['lidar'].shape == (1, 24, 40) and item['lidar'][0, 12, 20] == pytest.approx(20.0)
    assert (item['lidar'] > 0).sum() == 1 and 'gt' not in item and item['input_cond'] == 'day'
    assert torch.equal(item['input'], item['color'])


def test_val_item_has_full_resolution_gt(nusc):
    item = data.NuScenesDepth(nusc, split='val', size=(24, 40))[0]
    assert item['gt'].shape == (1, 48, 80) and item['gt'][0, 24, 40] == pytest.approx(20.0)
    assert item['cond'] == 'night-rain' and item['path'] == 'samples/CAM_FRONT/scene-0003-cam0.png'


def test_flip_mirrors_images_maps_and_principal_point_together(nusc):
    kwargs = dict(size=(24, 40), net_size=(42, 70), frames=(-1, 0, 1), with_lidar=True, color_jitter=True)
    plain, flipping = data.NuScenesDepth(nusc, **kwargs), data.NuScenesDepth(nusc, flip=True, **kwargs)
    images = ('color', 'color_aug', 'input', 'prev', 'prev_aug', 'next', 'next_aug', 'lidar')
    flipped = []
    for epoch in range(8):
        flipping.set_epoch(epoch)
        plain.set_epoch(epoch)  # the same jitter factors
        item, ref = flipping[0], plain[0]
        if torch.equal(item['color'], ref['color']):
            assert torch.equal(item['K'], ref['K']) and all(torch.equal(item[k], ref[k]) for k in images)
            continue
        flipped.append(epoch)
        assert all(torch.equal(item[k], ref[k].flip(-1)) for k in images)
        assert item['K'][0, 2].item() == pytest.approx(40 - ref['K'][0, 2].item())
    assert 0 < len(flipped) < 8


def test_velocity_distances_are_between_camera_centres_not_ego_origins(nusc):
    """The camera sits 1.5 m ahead of the ego origin: when the ego turns, the two travel different distances."""
    path = os.path.join(nusc, 'v1.0-trainval', 'ego_pose.json')
    poses = json.load(open(path))
    turned = next(p for p in poses if p['token'] == 'scene-0001-cam4-pose')  # the frame after cam3
    turned['rotation'] = [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]  # 90 degrees left
    json.dump(poses, open(path, 'w'))
    data.load_index.cache_clear()
    item = data.NuScenesDepth(nusc, size=(24, 40), frames=(-1, 0, 1))[1]
    assert item['key'] == 'scene-0001-cam3'
    # camera centres: cam3 at ego x 3 + (1.5, 0, 1.5); cam4 at ego x 4, its offset turned to (0, 1.5, 1.5)
    assert item['dist_next'].item() == pytest.approx(math.hypot(4 - 4.5, 1.5))  # the ego moved 1 m
    assert item['dist_prev'].item() == pytest.approx(1.0)


def test_items_are_reproducible_from_seed_epoch_and_index(nusc):
    kwargs = dict(size=(24, 40), color_jitter=True, flip=True, seed=3)
    a, b = data.NuScenesDepth(nusc, **kwargs), data.NuScenesDepth(nusc, **kwargs)
    a.set_epoch(5)
    b.set_epoch(5)
    assert torch.equal(a[1]['input'], b[1]['input'])
    b.set_epoch(6)
    assert not torch.equal(a[1]['input'], b[1]['input'])


def test_flip_mirrors_an_off_centre_principal_point_ground_truth_and_day_input(robotcar):
    kwargs = dict(split='test', size=(24, 40), net_size=(28, 42), day_input=True, color_jitter=True)
    plain, flipping = data.RobotCarDepth(robotcar, **kwargs), data.RobotCarDepth(robotcar, flip=True, **kwargs)
    flips = 0
    for epoch in range(6):
        plain.set_epoch(epoch)
        flipping.set_epoch(epoch)
        item, ref = flipping[0], plain[0]
        if not flipping._draws(0)[1].flip:
            continue
        flips += 1
        # RobotCar's cx is 20.11 of 40 px: a flip moves it to 40 - 20.11 = 19.89 (pixel corners)
        assert item['K'][0, 2].item() == pytest.approx(40 - RC_K[2] / 2, abs=1e-5)
        assert ref['K'][0, 2].item() == pytest.approx(RC_K[2] / 2, abs=1e-5)
        for key in ('gt', 'day_input', 'input', 'color'):
            assert torch.equal(item[key], ref[key].flip(-1)), key
        assert not torch.equal(item['gt'], ref['gt'])  # the ground truth is not symmetric
    assert flips > 0


def test_a_translated_condition_is_drawn_uniformly_from_three(nusc, tmp_path):
    conds = ('night', 'rain', 'snow')
    for cond in conds:
        for token in ('scene-0001-cam1', 'scene-0001-cam3'):
            save_image(str(tmp_path / 'gdt' / cond / f'samples/CAM_FRONT/{token}.png'), (0, 0, 0))
    ds = data.NuScenesDepth(nusc, size=(24, 40), gdt_root=str(tmp_path / 'gdt'), gdt_conds=conds, p_day=0.0)
    drawn = []
    for epoch in range(30):
        ds.set_epoch(epoch)
        u = data.ItemDraws.draw(0, epoch, 0).condition
        drawn.append(ds._draws(0)[1].cond)
        assert drawn[-1] == conds[int(u * 3)], (u, drawn[-1])  # thirds of [0, 1)
    assert set(drawn) == set(conds)


def test_items_draw_seven_named_numbers_in_a_fixed_order(nusc, tmp_path):
    u = data.ItemDraws.draw(3, 5, 1)
    assert tuple(u) == tuple(np.random.default_rng([3, 5, 1]).random(7))  # swap, condition, flip, jitter x4
    for cond in ('night', 'rain'):
        for token in ('scene-0001-cam1', 'scene-0001-cam3'):
            save_image(str(tmp_path / 'gdt' / cond / f'samples/CAM_FRONT/{token}.png'), (0, 0, 0))
    ds = data.NuScenesDepth(nusc, size=(24, 40), color_jitter=True, flip=True, gdt_root=str(tmp_path / 'gdt'),
                            gdt_conds=('night', 'rain'), p_day=0.5, seed=3)
    choices = []
    for epoch in range(12):
        u = data.ItemDraws.draw(3, epoch, 1)
        ds.set_epoch(epoch)
        index, augmentation = ds._draws(1)
        cond = 'day' if u.swap < 0.5 else ('night', 'rain')[int(u.condition * 2)]
        jitter = (0.8 + 0.4 * u.brightness, 0.8 + 0.4 * u.contrast, 0.8 + 0.4 * u.saturation, 0.1 * (u.hue - 0.5))
        assert index == 1 and augmentation == (cond, u.flip < 0.5, jitter)
        assert ds[1]['input_cond'] == cond
        choices.append((cond, u.flip < 0.5))
    assert {c for c, _ in choices} == {'day', 'night', 'rain'} and {f for _, f in choices} == {True, False}


def test_datasets_take_their_defaults_from_one_table_and_name_unknown_options(nusc, robotcar):
    assert data.NuScenesDepth(nusc).size == data.DATASET_DEFAULTS['nuscenes']['size'] == (320, 576)
    rc = data.RobotCarDepth(robotcar)
    assert (rc.size, rc.crop, rc.max_depth) == ((320, 544), 0.8, 50.0)
    assert data.DATASET_DEFAULTS['robotcar'] == dict(size=rc.size, max_depth=rc.max_depth, crop=rc.crop)
    assert data.FolderDepth(os.path.join(FIXTURE, 'samples', 'CAM_FRONT')).size is None
    with pytest.raises(TypeError, match='gdt_rot'):
        data.NuScenesDepth(nusc, gdt_rot='/data/gdt')  # a misspelt option fails, it is not swallowed


def pil(image):
    """PIL RGB image of a (3, H, W) tensor in [0, 1] that came from 8-bit pixels."""
    return Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())


@pytest.mark.parametrize('exact', [False, True])
def test_jitter_reaches_depth_and_pose_frames_with_one_set_of_factors_never_the_loss_frames(nusc, exact):
    ds = data.NuScenesDepth(nusc, size=(24, 40), frames=(-1, 0, 1), color_jitter=True, exact_jitter=exact)
    item, plain = ds[0], data.NuScenesDepth(nusc, size=(24, 40), frames=(-1, 0, 1))[0]
    factors = ds._draws(0)[1].jitter
    jitter = data.color_jitter if exact else data.affine_jitter
    for key in ('color', 'prev', 'next'):
        assert torch.equal(item[key], plain[key]) and torch.equal(plain[key + '_aug'], plain[key])
        expected = data.to_tensor(jitter(pil(plain[key]), *factors))
        assert torch.equal(item[key + '_aug'], expected) and not torch.equal(item[key + '_aug'], item[key])
    assert torch.equal(item['input'], item['color_aug'])  # net size = loss size: the same jittered frame


def test_input_is_resized_once_from_the_full_frame_to_the_network_size(nusc):
    item = data.NuScenesDepth(nusc, size=(24, 40), **BOTH, net_size=(42, 70))[0]
    full = Image.open(os.path.join(nusc, 'samples/CAM_FRONT/scene-0001-cam1.png')).convert('RGB')
    assert item['input'].shape == (3, 42, 70) and item['color'].shape == (3, 24, 40)
    assert torch.equal(item['input'], data.to_tensor(full.resize((70, 42), Image.LANCZOS)))
    assert torch.equal(item['color'], data.to_tensor(full.resize((40, 24), Image.LANCZOS)))
    val = data.NuScenesDepth(nusc, split='val', size=(24, 40), net_size=(42, 70))[0]
    assert val['input'].shape == (3, 42, 70) and val['gt'].shape == (1, 48, 80)


def test_color_jitter_is_torchvisions_pil_jitter_in_md4alls_fixed_order():
    image = Image.fromarray(np.array([[[100, 50, 200], [200, 60, 20], [90, 90, 90]]], np.uint8))
    # factors 1 and hue 0: only torchvision's 8-bit HSV round trip, which moves (200, 60, 20) to (200, 58, 20)
    assert np.asarray(data.color_jitter(image, 1.0, 1.0, 1.0, 0.0)).tolist() == [[[100, 50, 200], [200, 58, 20],
                                                                                  [90, 90, 90]]]
    round_trip = lambda rows: np.asarray(data.torchvision_hue_shift(Image.fromarray(np.array(rows, np.uint8)), 0))
    bright = np.asarray(data.color_jitter(image, 1.1, 1.0, 1.0, 0.0))
    assert np.array_equal(bright[:, :2], round_trip([[[110, 55, 220], [220, 66, 22]]]))
    # brightness, then contrast: greys 50 and 230 -> 60 and 255 (clipped); mean 157.5 -> 158;
    # 158 + 0.8 (60 - 158) = 79.6, 158 + 0.8 (255 - 158) = 235.6, truncated as PIL's blend does.
    # Contrast first would give 81, 254.
    greys = Image.fromarray(np.array([[[50] * 3, [230] * 3]], np.uint8))
    assert np.asarray(data.color_jitter(greys, 1.2, 0.8, 1.0, 0.0))[0, :, 0].tolist() == [79, 235]
    # saturation blends each pixel with its grey 0.299 R + 0.587 G + 0.114 B
    grey = 0.299 * 200 + 0.587 * 60 + 0.114 * 20
    saturated = np.asarray(data.color_jitter(image, 1.0, 1.0, 0.8, 0.0))[0, 1]
    assert np.allclose(saturated, [grey + 0.8 * (c - grey) for c in (200, 60, 20)], atol=3)  # + the round trip
    # hue: an HSV hue shift by int(0.05 * 255) = 12 steps of 1/255; greys keep their value
    shifted = np.asarray(data.color_jitter(image, 1.0, 1.0, 1.0, 0.05))
    for pixel in range(3):
        h, s, v = colorsys.rgb_to_hsv(*(np.asarray(image)[0, pixel] / 255))
        expected = np.array(colorsys.hsv_to_rgb((h + 12 / 255) % 1, s, v)) * 255
        assert np.abs(shifted[0, pixel] - expected).max() <= 3  # PIL's HSV is 8-bit per channel
    assert shifted[0, 1, 1] > 60 + 20 and shifted[0, 2].tolist() == [90, 90, 90]  # red turns orange
    back = np.asarray(data.color_jitter(image, 1.0, 1.0, 1.0, -0.05))[0, 1]
    assert back[2] > back[1]  # past pure red towards magenta the other way


def test_hue_jitter_shifts_whole_8_bit_steps_truncated_towards_zero():
    image = Image.fromarray(np.array([[[100, 50, 200], [200, 60, 20], [30, 180, 90]]], np.uint8))
    h, s, v = image.convert('HSV').split()

    def shifted(steps):
        hue = Image.fromarray((np.asarray(h).astype(int) + steps).astype(np.uint8))  # wraps like uint8
        return np.asarray(Image.merge('HSV', (hue, s, v)).convert('RGB'))
    # 0.05 * 255 = 12.75 -> 12 steps (rounding would take 13); -12.75 -> -12
    assert np.array_equal(np.asarray(data.color_jitter(image, 1.0, 1.0, 1.0, 0.05)), shifted(12))
    assert np.array_equal(np.asarray(data.color_jitter(image, 1.0, 1.0, 1.0, -0.05)), shifted(-12))


def torchvision_jitter(image, brightness, contrast, saturation, hue):
    """torchvision 0.x's PIL ColorJitter ops (F_pil.adjust_*), written out here as they are there, in md4all's
    order: ImageEnhance blends, then adjust_hue's HSV round trip, made even when the shift is 0."""
    image = ImageEnhance.Brightness(image).enhance(brightness)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    image = ImageEnhance.Color(image).enhance(saturation)
    h, s, v = image.convert('HSV').split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += np.uint8(int(hue * 255) % 256)  # torchvision: np.array(hue * 255).astype(np.uint8), wrapping
    return Image.merge('HSV', (Image.fromarray(np_h, 'L'), s, v)).convert('RGB')


def fixture_frame(hw):
    folder = os.path.join(FIXTURE, 'samples', 'CAM_FRONT')
    with Image.open(os.path.join(folder, os.listdir(folder)[0])) as im:
        return im.convert('RGB').resize(hw[::-1], Image.LANCZOS)


@pytest.mark.parametrize('hue', [0.0, 0.5 / 255, -0.9 / 255, 1 / 255, -0.05, 0.0314, 0.05])
def test_color_jitter_equals_torchvisions_pil_ops_on_the_real_frame_even_below_one_hue_step(hue):
    for hw in ((320, 576), (518, 784)):
        frame = fixture_frame(hw)
        ours = np.asarray(data.color_jitter(frame, 1.13, 0.87, 1.05, hue))
        assert np.array_equal(ours, np.asarray(torchvision_jitter(frame, 1.13, 0.87, 1.05, hue))), (hw, hue)
    if abs(hue) < 1 / 255:  # no shift, yet the 8-bit round trip moves colours: torchvision's frames have it
        moved = np.abs(np.asarray(data.color_jitter(frame, 1, 1, 1, hue), int) - np.asarray(frame)).max(-1)
        assert 0.05 < (moved > 0).mean() and moved.max() <= 2


def test_hue_tables_give_pils_hsv_round_trip_for_a_million_random_colours():
    colours = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8))
    for shift in (0, 1, -12, 12, 128):
        assert np.array_equal(np.asarray(data.hue_shift(colours, shift)),
                              np.asarray(data.torchvision_hue_shift(colours, shift))), shift


def decoded(path, hw):
    """The frame at `path` as the default path decodes it for size hw: DCT-scaled (PIL draft), RGB, Lanczos."""
    with Image.open(path) as im:
        im.draft('RGB', (hw[1], hw[0]))
        return im.convert('RGB').resize(hw[::-1], Image.LANCZOS)


def test_default_items_are_torchvisions_ops_on_the_decoded_frames_of_the_real_frame_and_a_synthetic_world(tmp_path):
    """The default path's jittered tensors, bit for bit, on the nuScenes JPEG and on frames of the world the
    learning check renders, over items whose draws include hue shifts of 0."""
    import synthetic
    world = synthetic.render_world(str(tmp_path / 'w'), train_day=1, train_night=0, train_rain=0, val_day=0,
                                   val_night=0, val_rain=0, keyframes=3, sweeps=1, size=(90, 160))
    shift = lambda seed, i: int(0.1 * (data.ItemDraws.draw(seed, 0, i).hue - 0.5) * 255)  # noqa: E731
    seeds = [next(s for s in range(1000) if (shift(s, 0) == 0) == zero) for zero in (True, False)]
    folder = os.path.join(FIXTURE, 'samples', 'CAM_FRONT')
    cases = [(data.FolderDepth(folder, size=(320, 576), net_size=(518, 784), color_jitter=True, seed=s), 0)
             for s in seeds]
    for seed in seeds:
        teacher = data.NuScenesDepth(world, synthetic.VERSION, 'train', size=(56, 96), net_size=(70, 126),
                                     frames=(-1, 0, 1), color_jitter=True, seed=seed)
        cases += [(teacher, i) for i in range(len(teacher))]
    shifts = set()
    for ds, i in cases:
        item, factors = ds[i], ds._draws(i)[1].jitter
        shifts.add(int(factors[3] * 255))
        path = os.path.join(ds.root, ds.items[i] if isinstance(ds, data.FolderDepth)
                            else ds.index.sample_data[ds.items[i][0]]['filename'])
        for key, hw in (('color_aug', ds.size), ('input', ds.net_size)):
            assert torch.equal(item[key], data.to_tensor(torchvision_jitter(decoded(path, hw), *factors))), key
    assert 0 in shifts and len(shifts) > 2


def test_affine_jitter_composes_the_four_steps_and_rotates_hue_about_the_grey_axis():
    image = Image.fromarray(np.array([[[100, 50, 200], [200, 60, 20], [90, 90, 90]]], np.uint8))
    assert np.array_equal(np.asarray(data.affine_jitter(image, 1.0, 1.0, 1.0, 0.0)), np.asarray(image))
    px = np.asarray(image).astype(float)[0]
    # brightness 1.1, contrast 0.9 towards the brightened grey mean, saturation 1.2 away from each grey
    luma = np.array([0.299, 0.587, 0.114])
    bright = 1.1 * px
    contrasted = 0.9 * bright + 0.1 * (bright @ luma).mean()
    expected = 1.2 * contrasted - 0.2 * (contrasted @ luma)[:, None]
    out = np.asarray(data.affine_jitter(image, 1.1, 0.9, 1.2, 0.0))[0].astype(float)
    assert np.abs(out - np.clip(expected, 0, 255)).max() <= 1
    greys = Image.fromarray(np.array([[[50] * 3, [230] * 3]], np.uint8))
    assert np.asarray(data.affine_jitter(greys, 1.2, 1.0, 1.0, 0.0))[0, :, 0].tolist() == [60, 255]  # 276 clips
    # hue: a rotation about (1, 1, 1) keeps greys and each pixel's channel sum, turns red towards orange
    shifted = np.asarray(data.affine_jitter(image, 1.0, 1.0, 1.0, 0.05))[0].astype(float)
    assert shifted[2].tolist() == [90, 90, 90] and np.abs(shifted.sum(1) - px.sum(1)).max() <= 2
    assert shifted[1, 1] > 60 + 20 and np.asarray(data.affine_jitter(image, 1.0, 1.0, 1.0, -0.05))[0, 1, 2] > 20


def test_affine_jitter_stays_close_to_torchvisions_jitter_on_a_real_frame():
    """The documented tolerance: over md4all's ranges, on the nuScenes fixture frame at 320x576, the mean
    absolute difference stays under 2.5/255 and the 99th percentile under 8/255 (measured 2.1 and 7)."""
    folder = os.path.join(FIXTURE, 'samples', 'CAM_FRONT')
    with Image.open(os.path.join(folder, os.listdir(folder)[0])) as im:
        frame = im.convert('RGB').resize((576, 320), Image.LANCZOS)
    rng = np.random.default_rng(0)
    for _ in range(10):
        u = rng.random(4)
        factors = (*(0.8 + 0.4 * u[:3]), 0.1 * (u[3] - 0.5))
        difference = np.abs(np.asarray(data.color_jitter(frame, *factors)).astype(float)
                            - np.asarray(data.affine_jitter(frame, *factors)))
        assert difference.mean() < 2.5 and np.percentile(difference, 99) <= 8, factors


def test_gdt_swap_replaces_input_with_the_translation_at_rate_one_minus_p_day(nusc, tmp_path):
    gdt = tmp_path / 'gdt'
    for cond, colour in (('night', 0), ('rain', 50)):
        for token in ('scene-0001-cam1', 'scene-0001-cam3'):
            save_image(str(gdt / cond / f'samples/CAM_FRONT/{token}.png'), (colour, colour, colour))
    ds = data.NuScenesDepth(nusc, size=(24, 40), gdt_root=str(gdt), gdt_conds=('night', 'rain'), p_day=0.5)
    conds = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        item = ds[0]
        conds.append(item['input_cond'])
        if item['input_cond'] == 'day':
            assert torch.equal(item['input'], item['color'])
        else:
            grey = 0 if item['input_cond'] == 'night' else 50
            assert item['input'][0, 0, -1].item() == pytest.approx(grey / 255)
            assert item['color'][2, 0, -1].item() == pytest.approx(100 / 255)  # color stays the day frame
    assert 10 < conds.count('day') < 30 and conds.count('night') > 3 and conds.count('rain') > 3


def test_missing_gdt_translations_fail_at_construction_with_count_paths_and_command(nusc, tmp_path):
    (tmp_path / 'gdt' / 'night').mkdir(parents=True)
    save_image(str(tmp_path / 'gdt' / 'night' / 'samples/CAM_FRONT/scene-0001-cam3.png'), (0, 0, 0))
    with pytest.raises(FileNotFoundError, match=r'^1 GDT translations missing .*night/samples/CAM_FRONT/'
                                                r'scene-0001-cam1\.png.*python gdt\.py --dataset nuscenes '
                                                r'--data-root \S+ --out \S+ --cond night'):
        data.NuScenesDepth(nusc, size=(24, 40), **BOTH, gdt_root=str(tmp_path / 'gdt'), gdt_conds=('night',))
    with pytest.raises(FileNotFoundError, match='rain'):
        data.NuScenesDepth(nusc, gdt_root=str(tmp_path / 'gdt'), gdt_conds=('night', 'rain'))
    with pytest.raises(ValueError, match=r"\('night',\) given without a GDT folder"):
        data.NuScenesDepth(nusc, gdt_conds=('night',))


def test_rejected_gdt_translations_fall_back_to_the_day_frame_and_are_counted(nusc, tmp_path):
    night = tmp_path / 'gdt' / 'night'
    save_image(str(night / 'samples/CAM_FRONT/scene-0001-cam3.png'), (0, 0, 0))
    with open(night / 'manifest.rank0.jsonl', 'w') as f:  # last record wins; a cut-off line is skipped
        f.write(json.dumps(dict(output='samples/CAM_FRONT/scene-0001-cam1.png', status='ok')) + '\n')
        f.write(json.dumps(dict(output=str(night / 'samples/CAM_FRONT/scene-0001-cam1.png'),
                                status='rejected')) + '\n{"output": "samp')
    ds = data.NuScenesDepth(nusc, size=(24, 40), **BOTH, gdt_root=str(tmp_path / 'gdt'), gdt_conds=('night',), p_day=0.0)
    assert ds.gdt_fallbacks == {'night': 1}
    fallback, swapped = ds[0], ds[1]
    assert fallback['input_cond'] == 'day' and torch.equal(fallback['input'], fallback['color'])
    assert swapped['input_cond'] == 'night' and swapped['input'].max() == 1.0 and swapped['input'][2].min() == 0
    os.remove(night / 'samples/CAM_FRONT/scene-0001-cam3.png')  # deleted after the start
    with pytest.raises(FileNotFoundError, match=r'night/samples/CAM_FRONT/scene-0001-cam3.png.*gdt\.py'):
        ds[1]


def test_manifest_reader_skips_a_torn_last_line_and_names_a_broken_line_elsewhere(tmp_path):
    (tmp_path / 'manifest.rank1.jsonl').write_text('{"output": "a.png", "status": "rejected"}\n{"output": "b.p')
    (tmp_path / 'manifest.rank0.jsonl').write_text('{"output": "a.png", "status": "ok"}\n')
    assert data.read_manifests(tmp_path) == {'a.png': dict(output='a.png', status='rejected')}  # rank order
    (tmp_path / 'manifest.rank0.jsonl').write_text('{"output": "a.p\n{"output": "b.png"}\n')
    with pytest.raises(ValueError, match=r'manifest\.rank0\.jsonl line 1 is not JSON: delete that line'):
        data.read_manifests(tmp_path)


def test_nuscenes_errors_name_the_path_and_the_fix(nusc, tmp_path):
    with pytest.raises(FileNotFoundError, match='dataroot not found'):
        data.NuScenesIndex(str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match=r"v1\.0-mini.*\['v1\.0-trainval'\]"):
        data.NuScenesIndex(nusc, 'v1.0-mini')
    with pytest.raises(ValueError, match=r"unknown nuScenes scene.*scene-9999"):
        data.NuScenesDepth(nusc, scenes=['scene-9999'])
    with pytest.raises(ValueError, match='empty nuScenes train split'):
        data.NuScenesDepth(nusc, scenes=['scene-0002'])
    os.remove(os.path.join(nusc, 'samples/CAM_FRONT/scene-0001-cam1.png'))
    with pytest.raises(FileNotFoundError, match='image missing.*scene-0001-cam1.png'):
        data.NuScenesDepth(nusc, size=(24, 40), **BOTH)[0]
    os.remove(os.path.join(nusc, 'samples/LIDAR_TOP/scene-0001-cam3.pcd.bin'))
    with pytest.raises(FileNotFoundError, match='LiDAR file missing.*scene-0001-cam3.pcd.bin'):
        data.lidar_depth_map(nusc, 'v1.0-trainval', 'scene-0001-cam3')
    os.remove(os.path.join(nusc, 'v1.0-trainval', 'ego_pose.json'))
    with pytest.raises(FileNotFoundError, match=r'table missing.*ego_pose\.json'):
        data.NuScenesIndex(nusc)


def test_style_references_are_training_key_frames_rain_from_day_scenes_only(nusc):
    path = os.path.join(nusc, 'v1.0-trainval', 'scene.json')
    scenes = json.load(open(path))
    scenes[0]['description'], scenes[1]['description'] = 'Rain, parked cars', 'Night, rain, parked cars'
    json.dump(scenes, open(path, 'w'))
    data.load_index.cache_clear()
    key_frames = lambda scene, idx: [f'samples/CAM_FRONT/{scene}-cam{i}.png' for i in idx]  # noqa: E731
    assert gdt.condition_frames(nusc, 'v1.0-trainval', 'rain') == key_frames('scene-0001', (1, 3, 5, 7))
    assert gdt.condition_frames(nusc, 'v1.0-trainval', 'night') == key_frames('scene-0002', (1, 3))
    scenes[0]['description'] = 'Parked cars'
    json.dump(scenes, open(path, 'w'))
    data.load_index.cache_clear()  # night-rain training scene and day-rain val scene: no reference
    with pytest.raises(ValueError, match=r"described as 'rain' by day.*--style-dir rain=DIR"):
        gdt.condition_frames(nusc, 'v1.0-trainval', 'rain')


def test_fixture_train_split_is_empty_because_its_frame_has_no_neighbours():
    with pytest.raises(ValueError, match='empty nuScenes train split'):
        data.list_images('nuscenes', FIXTURE, 'v1.0-mini')


# A fake RobotCar tree (tests/worlds.py)

@pytest.fixture
def robotcar(tmp_path):
    return make_robotcar(tmp_path / 'robotcar')


def test_robotcar_gt_lands_on_hand_computed_pixels_nearest_wins_crop_and_cap(robotcar):
    item = data.RobotCarDepth(robotcar, split='test', size=(24, 40))[0]
    gt = item['gt'][0]
    assert gt.shape == (48, 80)  # top 0.8 of 60 rows
    # image frame = (y, z, x) of the camera frame; u = f*y/x + cx, v = f*z/x + cy, rounded
    f, cx, cy = RC_K[0], RC_K[2], RC_K[3]
    assert (round(cx), round(cy)) == (40, 31) and gt[31, 40] == pytest.approx(10.0)  # 10 m beats 20 m
    assert (round(f * 1 / 5 + cx), round(f * 0.5 / 5 + cy)) == (53, 37) and gt[37, 53] == pytest.approx(5.0)
    assert gt[round(cy - f / 60), 40] == 0  # 60 m is beyond the 50 m cap
    assert (gt > 0).sum() == 2  # (5, 0, 2) falls below the crop, (-5, 0, 0) is behind
    # the training K is md4all's: rows scaled by 24/60 (the uncropped height), columns by 40/80
    assert torch.allclose(item['K'], torch.tensor([[f / 2, 0, cx / 2], [0, f * 0.4, cy * 0.4], [0, 0, 1]]))


@pytest.mark.parametrize('fast_decode', [True, False])
def test_robotcar_images_keep_the_top_768_of_960_rows_and_never_the_bonnet(robotcar, fast_decode):
    rows = save_bonnet_frame(os.path.join(robotcar, DAY, 'stereo', 'left', '200.png'))
    item = data.RobotCarDepth(robotcar, split='test', size=(48, 80), net_size=(24, 40), fast_decode=fast_decode)[0]
    assert item['key'] == f'{DAY}/200'
    # at the crop's own size nothing is resampled: row r of the item is row r of the frame (greys 10, 14, .., 198)
    assert (item['color'][1, :, 0] * 255).round().int().tolist() == rows[:48, 0, 1].tolist()
    assert torch.equal(item['color'], torch.from_numpy(rows[:48]).permute(2, 0, 1).float() / 255)
    top = Image.fromarray(rows[:48])
    assert torch.equal(item['input'], data.to_tensor(top.resize((40, 24), Image.LANCZOS)))
    assert item['input'][1].max() < 200 / 255  # the white bonnet rows reach no resized pixel either


def test_robotcar_lidar_at_network_size_lands_on_scaled_pixels(robotcar):
    item = data.RobotCarDepth(robotcar, size=(24, 40), with_lidar=True)[0]
    f, cx, cy = RC_K[0] / 2, RC_K[2] / 2, RC_K[3] / 2  # 48x80 crop -> 24x40
    lidar = item['lidar'][0]
    assert lidar[round(cy), round(cx)] == pytest.approx(10.0)
    assert lidar[round(f * 0.5 / 5 + cy), round(f / 5 + cx)] == pytest.approx(5.0)
    assert (lidar > 0).sum() == 2 and 'gt' not in item


def test_robotcar_training_k_is_md4alls_by_default_and_the_cropped_frames_when_geometric(robotcar):
    # 60x80 frames (960x1280 / 16), top 48 rows kept, loss size 24x40: md4all scales fy, cy by 24/60 (the
    # uncropped height), the cropped frame's K by 24/48; fx, cx by 40/80 either way
    md4all = data.RobotCarDepth(robotcar, size=(24, 40), with_lidar=True)[0]
    geometric = data.RobotCarDepth(robotcar, size=(24, 40), with_lidar=True, robotcar_k='geometric')[0]
    np.testing.assert_allclose(md4all['K'].numpy(), [[RC_K[0] / 2, 0, RC_K[2] / 2], [0, RC_K[1] * 24 / 60,
                               RC_K[3] * 24 / 60], [0, 0, 1]], rtol=1e-6)
    np.testing.assert_allclose(geometric['K'].numpy(), [[RC_K[0] / 2, 0, RC_K[2] / 2], [0, RC_K[1] / 2,
                               RC_K[3] / 2], [0, 0, 1]], rtol=1e-6)
    # at full scale: md4all's fy 327.68 and cy 164.46 against the cropped frame's 409.60 and 205.57
    assert 983.044006 * 320 / 960 == pytest.approx(327.68, abs=0.01)
    assert 493.378998 * 320 / 768 == pytest.approx(205.57, abs=0.01)
    assert torch.equal(md4all['lidar'], geometric['lidar'])  # the LiDAR map keeps the geometric projection
    with pytest.raises(ValueError, match="--robotcar-k 'full' is unknown"):
        data.RobotCarDepth(robotcar, robotcar_k='full')


def test_robotcar_splits_read_md4alls_files_only(robotcar, tmp_path):
    assert data.list_images('robotcar', robotcar) == [f'{DAY}/stereo/left/{t}.png' for t in (200, 300)]
    test = data.RobotCarDepth(robotcar, split='test')
    assert [(test[i]['key'], test[i]['cond']) for i in range(2)] == [(f'{DAY}/200', 'day-clear'),
                                                                     (f'{NIGHT}/1000', 'night-clear')]
    val = data.RobotCarDepth(robotcar, split='val', size=(24, 40))  # both sequences, with ground truth
    assert [(val[i]['key'], val[i]['gt'].shape) for i in range(2)] == [(f'{DAY}/200', (1, 48, 80)),
                                                                       (f'{NIGHT}/1000', (1, 48, 80))]
    splits = tmp_path / 'robotcar' / 'splits'
    (splits / 'filter_train_samples.txt').write_text('300\n')  # not md4all's place: not read
    assert len(data.list_images('robotcar', robotcar)) == 2
    (tmp_path / 'robotcar' / 'filter' / 'filter_train_samples.txt').write_text('300\n')
    assert data.list_images('robotcar', robotcar) == [f'{DAY}/stereo/left/200.png']
    with pytest.raises(ValueError, match="needs 'prev target next'"):
        data.RobotCarDepth(robotcar, split='test', frames=(-1, 0, 1))
    (splits / f'{NIGHT}_test.txt').write_text('1000 1 2\n')
    with pytest.raises(ValueError, match=rf"{NIGHT}_test.txt:1: expected 'target'"):
        data.RobotCarDepth(robotcar, split='test')
    (splits / f'{DAY}_val_stride_1.txt').write_text('100 200\n')
    with pytest.raises(ValueError, match=rf"{DAY}_val_stride_1.txt:1: expected 'prev target next'"):
        data.RobotCarDepth(robotcar, split='val')
    (splits / f'{DAY}_val_stride_1.txt').write_text('100 200 300\n')
    os.remove(splits / f'{NIGHT}_val_stride_1.txt')
    with pytest.raises(FileNotFoundError, match=rf"{NIGHT}_val_stride_1.txt missing: copy md4all's"):
        data.RobotCarDepth(robotcar, split='val')
    os.remove(tmp_path / 'robotcar' / 'filter' / 'filter_train_samples.txt')
    with pytest.raises(FileNotFoundError, match=r'filter/filter_train_samples.txt missing.*over-exposed'):
        data.RobotCarDepth(robotcar)
    with pytest.raises(ValueError, match="split must be one of"):
        data.RobotCarDepth(robotcar, split='training')


def test_robotcar_euler_angles_compose_as_yaw_pitch_roll():
    def axis(k, a):
        c, s = math.cos(a), math.sin(a)
        i, j = [(1, 2), (2, 0), (0, 1)][k]  # the plane each axis turns
        R = np.eye(3)
        R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
        return R
    roll, pitch, yaw = 0.3, -0.4, 1.1
    expected = axis(2, yaw) @ axis(1, pitch) @ axis(0, roll)
    assert np.allclose(data.euler_to_rotation(roll, pitch, yaw), expected, atol=1e-12)


def test_robotcar_vo_chains_relative_poses(robotcar):
    stamps, positions = data.read_vo_positions(os.path.join(robotcar, DAY, 'vo', 'vo.csv'))
    assert list(stamps) == [100, 200, 300, 400]
    assert np.allclose(positions, [[0, 0, 0], [1, 0, 0], [2, 0, 0], [2, 2, 0]])


def test_robotcar_training_item_has_neighbours_and_vo_distances(robotcar):
    item = data.RobotCarDepth(robotcar, size=(24, 40), frames=(-1, 0, 1))[1]
    assert item['key'] == f'{DAY}/300' and item['prev'].shape == (3, 24, 40) and 'gt' not in item
    assert item['prev'][0, 0, -1] * 255 == pytest.approx(200, abs=1)  # frame 200 is coloured red = 200
    assert item['next'][0, 0, -1] * 255 == pytest.approx(400 % 256, abs=1)
    assert item['dist_prev'].item() == pytest.approx(1.0) and item['dist_next'].item() == pytest.approx(2.0)


def test_robotcar_missing_files_name_the_path(robotcar):
    os.remove(os.path.join(robotcar, NIGHT, data.ROBOTCAR_GT_DIR, '1000.pcd.bin'))
    with pytest.raises(FileNotFoundError, match='1000.pcd.bin.*precompute_depth_gt'):
        data.RobotCarDepth(robotcar, split='test')[1]
    os.remove(os.path.join(robotcar, 'models', 'stereo_wide_left.txt'))
    with pytest.raises(FileNotFoundError, match='stereo_wide_left.txt'):
        data.RobotCarDepth(robotcar)


# Folders

def test_folder_dataset_finds_images_recursively_with_optional_npy_depth(tmp_path):
    save_image(str(tmp_path / 'a' / 'x.png'), (10, 20, 30))
    save_image(str(tmp_path / 'a' / 'b' / 'y.JPG'), (10, 20, 30))
    np.save(tmp_path / 'a' / 'x.npy', np.full((48, 80), 7.0))
    (tmp_path / 'a' / 'notes.txt').write_text('not an image')
    assert data.list_images('folder', str(tmp_path / 'a')) == ['b/y.JPG', 'x.png']
    ds = data.FolderDepth(str(tmp_path / 'a'), size=(12, 20))
    assert len(ds) == 2 and 'gt' not in ds[0] and ds[0]['color'].shape == (3, 12, 20)
    assert ds[1]['gt'].shape == (1, 48, 80) and ds[1]['gt'].dtype == torch.float32 and 'K' not in ds[1]
    assert data.FolderDepth(str(tmp_path / 'a'))[1]['color'].shape == (3, 48, 80)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no .jpg/.jpeg/.png images'):
        data.list_images('folder', str(tmp_path / 'empty'))


def test_dataloader_collates_items_in_a_worker_process(nusc):
    ds = data.NuScenesDepth(nusc, size=(24, 40), **BOTH, frames=(-1, 0, 1), color_jitter=True, flip=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)))
    assert batch['color'].shape == (2, 3, 24, 40) and batch['K'].shape == (2, 3, 3)
    assert batch['dist_prev'].shape == (2,) and batch['key'] == ['scene-0001-cam1', 'scene-0001-cam3']
    assert torch.equal(batch['input'][1], ds[1]['input'])  # the worker drew what the main process draws


def test_image_sizes_parse_from_hxw_and_bad_ones_say_the_format():
    assert data.parse_size('320x576') == (320, 576) and data.parse_size('90X160') == (90, 160)
    with pytest.raises(argparse.ArgumentTypeError, match='HxW'):
        data.parse_size('320')


# Bad input, fast decoding, workers

def test_image_sizes_must_be_positive_and_argparse_says_so(capsys):
    for text in ('0x160', '320x0', '-320x576'):
        with pytest.raises(argparse.ArgumentTypeError, match='both sides must be positive'):
            data.parse_size(text)
    parser = argparse.ArgumentParser(prog='train_teacher.py')
    parser.add_argument('--size', type=data.parse_size)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(['--size', '0x160'])
    assert exit_info.value.code == 2  # argparse's usage-error status
    assert "train_teacher.py: error: argument --size: image size '0x160': both sides must be positive" \
        in capsys.readouterr().err


def test_truncated_lidar_files_name_the_file_and_a_cut_at_a_point_boundary_cannot_be_seen(nusc, robotcar):
    path = os.path.join(nusc, 'samples/LIDAR_TOP/scene-0001-cam3.pcd.bin')
    with open(path, 'r+b') as f:
        f.truncate(30)  # one point and a half
    with pytest.raises(ValueError, match=r'scene-0001-cam3\.pcd\.bin has 30 bytes.*truncated'):
        data.lidar_depth_map(nusc, 'v1.0-trainval', 'scene-0001-cam3')
    with open(path, 'r+b') as f:
        f.truncate(20)  # exactly the first point: a valid, shorter scan
    assert data.read_nuscenes_points(path).shape == (3, 1)
    gt = os.path.join(robotcar, NIGHT, data.ROBOTCAR_GT_DIR, '1000.pcd.bin')
    with open(gt, 'r+b') as f:
        f.truncate(4 * 17)  # 17 floats are not 3 rows of N
    with pytest.raises(ValueError, match=r'1000\.pcd\.bin has 68 bytes.*multiple of 12.*precompute_depth_gt'):
        data.RobotCarDepth(robotcar, split='test')[1]


def test_truncated_or_corrupt_images_name_the_file(tmp_path):
    image = Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8))
    (tmp_path / 'set').mkdir()
    for name, cut in (('a.jpg', 100), ('b.png', 20)):  # the PNG loses its IEND chunk only
        image.save(tmp_path / name)
        raw = (tmp_path / name).read_bytes()
        (tmp_path / 'set' / name).write_bytes(raw[:-cut])
    (tmp_path / 'set' / 'c.png').write_bytes(b'not an image')
    ds = data.FolderDepth(str(tmp_path / 'set'), size=(24, 40))
    for i, name in enumerate(('a.jpg', 'b.png', 'c.png')):
        for fast in (True, False):
            ds.fast_decode = fast
            with pytest.raises(ValueError, match=rf"image unreadable: .*set/{name} .*replace"):
                ds[i]


def test_fast_decode_decodes_each_frame_once_and_equals_the_reference_on_pngs(nusc, monkeypatch):
    kwargs = dict(size=(24, 40), net_size=(42, 70), frames=(-1, 0, 1), with_lidar=True, color_jitter=True,
                  flip=True, seed=1)
    fast, reference = data.NuScenesDepth(nusc, **kwargs), data.NuScenesDepth(nusc, fast_decode=False, **kwargs)
    decoded = []
    load_rgb = data.AugmentedDataset._load_rgb
    monkeypatch.setattr(data.AugmentedDataset, '_load_rgb', lambda self, im, path: decoded.append(path)
                        or load_rgb(self, im, path))
    for i in range(2):
        decoded.clear()
        a = fast[i]
        assert len(decoded) == len(set(decoded)) == 3  # target (loss and network size), prev, next
        b = reference[i]
        assert len(decoded) == 3 + 4
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))


def test_fast_decode_of_a_real_jpeg_stays_within_the_documented_tolerance():
    folder = os.path.join(FIXTURE, 'samples', 'CAM_FRONT')
    fast = data.FolderDepth(folder, size=(320, 576), net_size=(518, 784))[0]
    reference = data.FolderDepth(folder, size=(320, 576), net_size=(518, 784), fast_decode=False)[0]
    difference = (fast['color'] - reference['color']).abs()
    # the 1600x900 frame is DCT-decoded at 800x450 (half) before the Lanczos resize to 576x320
    assert 0 < difference.max() <= 12 / 255 + 1e-6 and difference.mean() < 0.002
    assert torch.equal(fast['input'], reference['input'])  # 518x784 is more than half: a full decode
    assert torch.equal(fast['color'], fast['color_aug'])  # no jitter: the same frame
    with Image.open(os.path.join(folder, os.listdir(folder)[0])) as im:
        im.draft('RGB', (576, 320))
        assert im.size == (800, 450)
        assert torch.equal(fast['color'], data.to_tensor(im.convert('RGB').resize((576, 320), Image.LANCZOS)))


def test_default_workers_share_the_usable_cpus_among_ranks(monkeypatch):
    monkeypatch.setattr(data.os, 'sched_getaffinity', lambda pid: set(range(12)), raising=False)
    assert data.default_workers() == 11 and data.default_workers(ranks_per_node=4) == 2
    monkeypatch.setattr(data.os, 'sched_getaffinity', lambda pid: set(range(64)), raising=False)
    assert data.default_workers() == 63 and data.default_workers(ranks_per_node=8) == 7
    monkeypatch.setattr(data.os, 'sched_getaffinity', lambda pid: {0}, raising=False)
    assert data.default_workers() == 0


def test_epoch_sampler_lets_persistent_workers_draw_each_epochs_augmentation(nusc):
    ds = data.NuScenesDepth(nusc, size=(24, 40), color_jitter=True, flip=True, seed=2)
    sampler = data.EpochSampler(torch.utils.data.SequentialSampler(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=1,
                                         persistent_workers=True)
    batches = []
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        batches.append(next(iter(loader))['input'])
    sampler.set_epoch(4, [1])  # a resume that skips item 0 of epoch 4
    batches.append(next(iter(loader))['input'])
    for epoch, batch, index in ((0, batches[0], [0, 1]), (3, batches[1], [0, 1]), (4, batches[2], [1])):
        ds.set_epoch(epoch)
        assert torch.equal(batch, torch.stack([ds[i]['input'] for i in index]))
    assert not torch.equal(batches[0], batches[1])


# The data check: every file a run reads, read once before it starts

def test_check_files_lists_each_broken_file_by_path_and_no_good_one(tmp_path):
    image = Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8))
    for name in ('good.jpg', 'cut.jpg', 'good.png', 'no_iend.png'):
        image.save(tmp_path / name)
    raw = (tmp_path / 'cut.jpg').read_bytes()
    (tmp_path / 'cut.jpg').write_bytes(raw[:len(raw) // 2])  # a download cut halfway through the scan data
    (tmp_path / 'no_iend.png').write_bytes((tmp_path / 'no_iend.png').read_bytes()[:-12])  # every pixel, no IEND
    (tmp_path / 'LIDAR_TOP').mkdir()
    np.zeros((4, 5), np.float32).tofile(tmp_path / 'LIDAR_TOP' / 'good.pcd.bin')
    np.zeros((4, 5), np.float32).tofile(tmp_path / 'LIDAR_TOP' / 'cut.pcd.bin')
    with open(tmp_path / 'LIDAR_TOP' / 'cut.pcd.bin', 'r+b') as f:
        f.truncate(50)  # two and a half points
    np.zeros((3, 4), np.float32).tofile(tmp_path / 'good_robotcar.pcd.bin')  # 48 bytes: whole 12-byte points
    (tmp_path / 'cut_robotcar.pcd.bin').write_bytes(bytes(40))  # 80 bytes would be whole 20-byte nuScenes points
    np.save(tmp_path / 'good.npy', np.ones((4, 6)))
    np.save(tmp_path / 'volume.npy', np.ones((2, 4, 6)))
    broken = ['cut.jpg', 'no_iend.png', 'LIDAR_TOP/cut.pcd.bin', 'cut_robotcar.pcd.bin', 'volume.npy', 'missing.png']
    good = ['good.jpg', 'good.png', 'LIDAR_TOP/good.pcd.bin', 'good_robotcar.pcd.bin', 'good.npy']
    found = data.check_files([tmp_path / p for p in good + broken], workers=3)
    assert [p for p, _ in found] == sorted(str(tmp_path / p) for p in broken)
    for path, problem in found:
        assert path in problem, problem  # each problem names its file
    assert data.check_files([tmp_path / p for p in good]) == []


def test_files_are_what_an_epoch_reads_and_the_translations_it_may_draw(nusc, robotcar, tmp_path, monkeypatch):
    gdt_root = tmp_path / 'gdt'
    for token in ('scene-0001-cam1', 'scene-0001-cam3'):
        save_image(str(gdt_root / 'night' / f'samples/CAM_FRONT/{token}.png'), (0, 0, 0))
    (tmp_path / 'folder').mkdir()
    save_image(str(tmp_path / 'folder' / 'a.png'), (1, 2, 3))
    save_image(str(tmp_path / 'folder' / 'b.png'), (1, 2, 3))
    np.save(tmp_path / 'folder' / 'a.npy', np.ones((48, 80), np.float32))
    read = set()
    for reader in ('open_image', 'read_nuscenes_points', 'read_robotcar_points', 'read_depth_map'):
        monkeypatch.setattr(data, reader, lambda path, *a, reader=getattr(data, reader): read.add(str(path))
                            or reader(path, *a))
    datasets = [data.NuScenesDepth(nusc, size=(24, 40), **BOTH, frames=(-1, 0, 1), with_lidar=True, gdt_root=str(gdt_root),
                                   gdt_conds=('night',), p_day=0.5),
                data.NuScenesDepth(nusc, size=(24, 40), split='val'),
                data.RobotCarDepth(robotcar, size=(24, 40), frames=(-1, 0, 1), with_lidar=True),
                data.RobotCarDepth(robotcar, size=(24, 40), split='test'),
                data.FolderDepth(str(tmp_path / 'folder'), size=(24, 40))]
    for ds in datasets:
        read.clear()
        for epoch in range(4):  # p_day 0.5: some epochs draw the translation, some the day frame
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                ds[i]
        assert read == set(ds.files()), type(ds).__name__
    train = datasets[0]
    assert len(train.files()) == 2 + 3 + 2 + 2  # targets, their sweeps, LiDAR scans, translations
    train.p_day = 1.0  # the swap needs a draw >= p_day: no translation is ever read
    assert not [p for p in train.files() if p.startswith(str(gdt_root))]


def test_a_missing_prev_frame_or_a_translation_is_found_and_a_rejected_one_never_read(nusc, tmp_path):
    night = tmp_path / 'gdt' / 'night'
    save_image(str(night / 'samples/CAM_FRONT/scene-0001-cam3.png'), (0, 0, 0))
    (night / 'manifest.rank0.jsonl').write_text(json.dumps(dict(output='samples/CAM_FRONT/scene-0001-cam1.png',
                                                                 status='rejected')) + '\n')
    ds = data.NuScenesDepth(nusc, size=(24, 40), **BOTH, frames=(-1, 0, 1), gdt_root=str(tmp_path / 'gdt'),
                            gdt_conds=('night',), p_day=0.0)
    assert str(night / 'samples/CAM_FRONT/scene-0001-cam1.png') not in ds.files()
    assert re.fullmatch(r'checked 6 files in \d+\.\d s', data.check_dataset(ds))
    os.remove(os.path.join(nusc, 'sweeps/CAM_FRONT/scene-0001-cam2.png'))  # prev of cam3, next of cam1
    (night / 'samples/CAM_FRONT/scene-0001-cam3.png').write_bytes(b'')
    [(translation, empty), (prev, missing)] = data.check_files(ds.files())  # sorted: gdt/ before nusc/
    assert prev.endswith('sweeps/CAM_FRONT/scene-0001-cam2.png') and 'image missing' in missing
    assert translation == str(night / 'samples/CAM_FRONT/scene-0001-cam3.png') and 'unreadable' in empty
    with pytest.raises(ValueError, match=r'^2 of 6 data files are broken: .*scene-0001-cam3\.png.*'
                                         r'scene-0001-cam2\.png.*dataset download.*--no-check-data'):
        data.check_dataset(ds)


def test_atomic_writes_leave_files_readable_as_the_umask_says_and_no_temp_file(tmp_path):
    previous = os.umask(0o022)
    try:
        data.write_atomic(tmp_path / 'out' / 'metrics.json', lambda tmp: tmp.write_text('{}'))
    finally:
        os.umask(previous)
    assert oct((tmp_path / 'out' / 'metrics.json').stat().st_mode & 0o777) == oct(0o644)  # mkstemp would give 0o600
    with pytest.raises(ZeroDivisionError):  # a writer that fails leaves neither the output nor its temp file
        data.write_atomic(tmp_path / 'out' / 'broken.json', lambda tmp: (tmp.write_text('{'), 1 / 0))
    assert sorted(os.listdir(tmp_path / 'out')) == ['metrics.json']


def test_drivingstereo_depth_is_the_16_bit_value_over_256_and_an_8_bit_map_is_refused(tmp_path):
    from worlds import DS_FRAMES, drivingstereo_depth, make_drivingstereo
    root = make_drivingstereo(tmp_path / 'ds')
    dataset = data.DrivingStereoDepth(root, size=(14, 28))
    assert [item['cond'] for item in dataset] == ['foggy', 'foggy', 'rainy']  # every set found, in the paper's order
    assert np.array_equal(dataset[2]['gt'][0].numpy(), drivingstereo_depth())  # 2560 / 256 = 10 m, ...
    assert dataset[2]['input'].shape == (3, 14, 28) and dataset[2]['gt'].shape == (1, 16, 36)
    assert len(dataset.files()) == 6
    name = DS_FRAMES['rainy'][0]
    eight_bit = tmp_path / 'ds' / 'rainy' / 'depth-map-full-size' / f'{name}.png'
    Image.fromarray(np.zeros((16, 36), np.uint8)).save(eight_bit)
    with pytest.raises(ValueError, match=r'rainy/depth-map-full-size/.*\.png is a L PNG, not DrivingStereo.s 16-bit'):
        dataset[2]


# --gpu-augment: the workers decode, the training device resizes and jitters (augment_batch)

def same_batches(a, b):
    """The keys and every tensor of two collated batches equal, bit for bit."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key


@pytest.mark.parametrize('kind', ['teacher', 'student'])
def test_device_augmented_batches_equal_the_default_items_bit_for_bit(tiny_world, tmp_path, kind):
    """Over items with flips, every hue shift sign and 0, GDT swaps and the student's day input: the same tensors,
    so the learning check's outcome cannot change with --gpu-augment."""
    options = dict(size=(56, 96), net_size=(70, 126), color_jitter=True, flip=True, seed=3)
    if kind == 'student':
        day = data.NuScenesDepth(tiny_world, **options)
        for token, _ in day.items:  # a darker 'night' translation of each training frame, as gdt.py saves one
            path = day.index.sample_data[token]['filename']
            with Image.open(os.path.join(tiny_world, path)) as im:
                gdt.save_atomic(im.convert('RGB').point(lambda v: v // 3), tmp_path / 'night' / path)
        options.update(gdt_root=str(tmp_path), gdt_conds=('night',), p_day=0.5, day_input=True)
    else:
        options.update(frames=(-1, 0, 1))
    default, device = data.NuScenesDepth(tiny_world, **options), data.NuScenesDepth(tiny_world, device_augment=True,
                                                                                   **options)
    indices = list(range(len(default)))
    raw = torch.utils.data.default_collate([device[i] for i in indices])
    assert raw['raw_color'].dtype == torch.uint8 and 'color' not in raw
    same_batches(device.augment_batch(raw), torch.utils.data.default_collate([default[i] for i in indices]))
    draws = [default._draws(i)[1] for i in indices]
    assert {d.flip for d in draws} == {True, False}
    if kind == 'student':
        assert {d.cond for d in draws} == {'day', 'night'}


def test_device_augment_equals_the_default_path_on_the_real_frame():
    folder = os.path.join(FIXTURE, 'samples', 'CAM_FRONT')
    options = dict(size=(320, 576), net_size=(518, 784), color_jitter=True, flip=True, seed=1)
    default, device = data.FolderDepth(folder, **options), data.FolderDepth(folder, device_augment=True, **options)
    same_batches(device.augment_batch(torch.utils.data.default_collate([device[0]])),
                 torch.utils.data.default_collate([default[0]]))


def test_device_augment_needs_a_fixed_size_and_the_exact_jitter(nusc):
    with pytest.raises(ValueError, match='--size'):
        data.FolderDepth(os.path.join(FIXTURE, 'samples', 'CAM_FRONT'), device_augment=True)
    with pytest.raises(ValueError, match='--fast-jitter'):
        data.NuScenesDepth(nusc, color_jitter=True, exact_jitter=False, device_augment=True)


def test_a_dataset_builds_the_hue_tables_only_when_asked_so_a_refused_run_does_not_wait_for_them(tiny_world,
                                                                                                monkeypatch):
    calls = []
    monkeypatch.setattr(data, "hsv_tables", lambda: calls.append(1))
    jittered = data.NuScenesDepth(tiny_world, "v1.0-trainval", "train", size=(36, 64), color_jitter=True)
    assert calls == []  # 1-2 s saved where a later check refuses the run
    jittered.share_tables()
    assert calls == [1]
    data.NuScenesDepth(tiny_world, "v1.0-trainval", "train", size=(36, 64)).share_tables()  # no jitter: no tables
    assert calls == [1]
