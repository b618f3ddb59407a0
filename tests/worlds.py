"""Fake nuScenes, RobotCar and DrivingStereo trees for the tests: tiny frames, known poses, hand-placed LiDAR points.

    root = make_nuscenes(tmp_path / 'nusc')      # 4 scenes of 80x48 frames (SCENES), v1.0-trainval tables
    root = make_robotcar(tmp_path / 'robotcar')  # md4all's layout: DAY and NIGHT sequences of 60x80 frames
    rows = save_bonnet_frame(path)               # a 60x80 frame: every row its own grey, the bottom fifth white
    root = make_drivingstereo(tmp_path / 'ds')   # foggy (2 frames) and rainy (1) sets of 16x36 frames, banded depth
    depth = street_depth()                       # (96, 160) metres of a street frame, inf = sky

The constants below are what the tests assert against (intrinsics, point positions, scene layout).
"""
import csv
import json
import math
import os

import numpy as np
from PIL import Image

import data

# A fake nuScenes tree

CAM_Q = (0.5, -0.5, 0.5, -0.5)  # camera (z forward, x right, y down) -> ego (x forward, y left, z up)
CAM_K = [[40.0, 0, 40.0], [0, 40.0, 24.0], [0, 0, 1]]
SCENES = [  # name, description, ego x positions of the CAM_FRONT frames (K = key frame, S = sweep)
    ('scene-0001', 'Parked cars, turn left', 'SKSKSKSK', [0, 1, 2, 3, 4, 4, 4, 5]),  # 3rd key frame static
    ('scene-0002', 'Night, parked cars', 'SKSK', [0, 1, 2, 3]),
    ('scene-0003', 'Night, RAIN, peds', 'KSK', [0, 1, 2]),
    ('scene-0012', 'Rain, construction', 'KSK', [0, 0, 0]),
]


def save_image(path, colour, size=(80, 48)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[..., :] = colour
    image[:, : size[0] // 4] = 255  # a bright left band makes flips visible
    Image.fromarray(image).save(path)


def make_nuscenes(root, version='v1.0-trainval'):
    """A tiny dataroot: 80x48 camera, LiDAR points straight ahead, ego moving along x at 10 m/s."""
    tables = {k: [] for k in data.NUSCENES_TABLES}
    tables['sensor'] = [dict(token='s-cam', channel='CAM_FRONT', modality='camera'),
                        dict(token='s-lidar', channel='LIDAR_TOP', modality='lidar')]
    tables['calibrated_sensor'] = [
        dict(token='c-cam', sensor_token='s-cam', translation=[1.5, 0, 1.5], rotation=CAM_Q,
             camera_intrinsic=CAM_K),
        dict(token='c-lidar', sensor_token='s-lidar', translation=[0, 0, 1.8], rotation=[1, 0, 0, 0],
             camera_intrinsic=[])]
    # 10 m and 20 m ahead of the camera, 0.1 m right of and below its axis (lidar sits 0.3 m higher)
    points = np.array([[11.5, -0.1, -0.4, 0, 0], [21.5, -0.1, -0.4, 0, 0]], np.float32)
    for s, (name, description, kinds, xs) in enumerate(SCENES):
        samples = [f'{name}-sample{i}' for i, k in enumerate(kinds) if k == 'K']
        tables['scene'].append(dict(token=name, name=name, description=description, log_token='log',
                                    nbr_samples=len(samples), first_sample_token=samples[0],
                                    last_sample_token=samples[-1]))
        tokens = [f'{name}-cam{i}' for i in range(len(kinds))]
        for i, (kind, x) in enumerate(zip(kinds, xs)):
            stamp = 10 ** 9 * s + 100_000 * i
            tables['ego_pose'].append(dict(token=f'{tokens[i]}-pose', timestamp=stamp, translation=[x, 0, 0],
                                           rotation=[1, 0, 0, 0]))
            folder = 'samples' if kind == 'K' else 'sweeps'
            filename = f'{folder}/CAM_FRONT/{tokens[i]}.png'
            save_image(os.path.join(root, filename), (20 * i, 40 * s, 100))
            tables['sample_data'].append(dict(
                token=tokens[i], sample_token=f'{name}-sample{i}' if kind == 'K' else '',
                ego_pose_token=f'{tokens[i]}-pose',
                calibrated_sensor_token='c-cam', timestamp=stamp, fileformat='png', is_key_frame=kind == 'K',
                height=48, width=80, filename=filename, prev=tokens[i - 1] if i else '',
                next=tokens[i + 1] if i + 1 < len(kinds) else ''))
            if kind == 'K':
                j = samples.index(f'{name}-sample{i}')
                tables['sample'].append(dict(token=samples[j], timestamp=stamp, scene_token=name,
                                             prev=samples[j - 1] if j else '',
                                             next=samples[j + 1] if j + 1 < len(samples) else ''))
                lidar_file = f'samples/LIDAR_TOP/{tokens[i]}.pcd.bin'
                os.makedirs(os.path.join(root, 'samples/LIDAR_TOP'), exist_ok=True)
                points.tofile(os.path.join(root, lidar_file))
                tables['sample_data'].append(dict(
                    token=f'{tokens[i]}-lidar', sample_token=samples[j], ego_pose_token=f'{tokens[i]}-pose',
                    calibrated_sensor_token='c-lidar', timestamp=stamp, fileformat='pcd', is_key_frame=True,
                    height=0, width=0, filename=lidar_file, prev='', next=''))
    os.makedirs(os.path.join(root, version))
    for name, rows in tables.items():
        with open(os.path.join(root, version, name + '.json'), 'w') as f:
            json.dump(rows, f)
    return str(root)


# A fake RobotCar tree

DAY, NIGHT = '2014-12-09-13-21-02', '2014-12-16-18-44-24'
RC_K = (983.044006 / 16, 983.044006 / 16, 643.646973 / 16, 493.378998 / 16)  # 60x80 = 960x1280 / 16
RC_POINTS = np.array([[10, 0, 0], [20, 0, 0], [5, 1, 0.5], [60, 0, -1], [5, 0, 2], [-5, 0, 0]], np.float32).T


def make_robotcar(root):
    """Sequences of 60x80 frames, md4all split files, VO with a 90 degree turn, gt points (x forward)."""
    os.makedirs(root / 'models')
    (root / 'models' / 'stereo_wide_left.txt').write_text(
        ' '.join(f'{v:.6f}' for v in RC_K) + '\n0 0 1 0\n1 0 0 0\n0 1 0 0\n0 0 0 1\n')
    (root / 'splits').mkdir()
    (root / 'splits' / f'{DAY}_train_stride_1.txt').write_text('100 200 300\n200 300 400\n')
    (root / 'splits' / f'{DAY}_train_stride_2.txt').write_text('100 300 500\n')  # md4all ships it; unread
    (root / 'splits' / f'{DAY}_val_stride_1.txt').write_text('100 200 300\n')
    (root / 'splits' / f'{NIGHT}_val_stride_1.txt').write_text('900 1000 1100\n')
    (root / 'splits' / f'{DAY}_test.txt').write_text('200\n')
    (root / 'splits' / f'{NIGHT}_test.txt').write_text('1000 1418756721422679\n')  # a second field is ignored
    (root / 'filter').mkdir()
    (root / 'filter' / 'filter_train_samples.txt').write_text('999\n')
    for sequence, stamps in ((DAY, (100, 200, 300, 400)), (NIGHT, (900, 1000, 1100))):
        for t in stamps:
            save_image(str(root / sequence / 'stereo' / 'left' / f'{t}.png'), (t % 256, 0, 0), size=(80, 60))
        gt_dir = root / sequence / data.ROBOTCAR_GT_DIR
        gt_dir.mkdir(parents=True)
        for t in stamps:
            RC_POINTS.tofile(gt_dir / f'{t}.pcd.bin')
    (root / DAY / 'vo').mkdir()
    with open(root / DAY / 'vo' / 'vo.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['source_timestamp', 'destination_timestamp', 'x', 'y', 'z', 'roll', 'pitch', 'yaw'])
        writer.writerow([300, 200, 1, 0, 0, 0, 0, math.pi / 2])  # rows need not be in time order
        writer.writerow([200, 100, 1, 0, 0, 0, 0, 0])
        writer.writerow([400, 300, 2, 0, 0, 0, 0, 0])
    return str(root)



def save_bonnet_frame(path, size=(80, 60), keep=48):
    """A RobotCar-like frame whose rows tell where they came from: row r of the top `keep` rows is grey
    10 + 4 r (red and blue offset so channels differ), the rows below (the bonnet of the real 960-row
    frames, 768 + 192 / 16) are white. Returns the (H, W, 3) uint8 pixels."""
    image = np.full((size[1], size[0], 3), 255, np.uint8)
    grey = 10 + 4 * np.arange(keep)
    image[:keep] = np.stack([grey + 20, grey, grey // 2], -1)[:, None, :]
    Image.fromarray(image).save(path)
    return image


# A fake DrivingStereo weather tree

DS_FRAMES = {  # the real sets' file names: <drive>_<capture time>
    'foggy': ['2018-10-25-07-37-26_2018-10-25-07-42-00-537', '2018-10-25-07-37-26_2018-10-25-08-10-09-206'],
    'rainy': ['2018-08-17-09-45-58_2018-08-17-10-03-21-114'],
}
DS_SIZE = (16, 36)  # (H, W): 800x1762 / 50, rounded


def drivingstereo_depth():
    """The ground truth of every fake frame (metres): three equal bands of 10, 20 and 100 m, 0 (no depth) elsewhere."""
    depth = np.zeros(DS_SIZE, np.float32)
    depth[4:8, :12], depth[4:8, 12:24], depth[4:8, 24:] = 10.0, 20.0, 100.0
    return depth


def make_drivingstereo(root):
    """DrivingStereo's weather layout: <weather>/left-image-full-size/<name>.jpg and
    <weather>/depth-map-full-size/<name>.png (uint16, depth x 256)."""
    for weather, names in DS_FRAMES.items():
        for k, name in enumerate(names):
            save_image(os.path.join(root, weather, 'left-image-full-size', name + '.jpg'), (60 * k, 90, 120),
                       size=DS_SIZE[::-1])
            os.makedirs(os.path.join(root, weather, 'depth-map-full-size'), exist_ok=True)
            Image.fromarray((drivingstereo_depth() * 256).astype(np.uint16)).save(
                os.path.join(root, weather, 'depth-map-full-size', name + '.png'))
    return str(root)


# A street frame of known depth (the GDT audit and the Depth-Anything calibration tests)

def street_depth(h=96, w=160):
    """Camera-z depth (m) of a street frame, inf = sky (12% of it): the road, facades 5-20 m away with a
    setback every other block on the left, far buildings at 40 m, parked cars and poles on the right."""
    v, u = np.mgrid[0:h, 0:w] + 0.5
    horizon, f, camera_height = h * 0.3, w * 0.6, 1.5
    depth = np.where(v > horizon, f * camera_height / np.maximum(v - horizon, 1e-9), np.inf)
    depth[depth > 100] = np.inf
    boxes = [((u >= x0) & (u < x0 + 12) & (v < horizon + 30 - 10 * (k % 2)), 5.0 + 3 * k + 6 * (k % 2))
             for k, x0 in enumerate(range(0, int(w * 0.4), 12))]
    boxes.append(((u > w * 0.45) & (u < w * 0.75) & (v > horizon - 12) & (v < horizon + 2), 40.0))
    boxes += [((u > w * x0) & (u < w * x0 + 18) & (v > horizon + 4) & (v < horizon + 4 + 120 / z), z)
              for x0, z in ((0.55, 9.0), (0.72, 14.0), (0.86, 7.0))]
    boxes += [((u > w * x0) & (u < w * x0 + 2) & (v < horizon + 150 / z), z) for x0, z in ((0.5, 6.0), (0.66, 11.0),
                                                                                           (0.95, 4.0))]
    for mask, z in boxes:
        depth = np.where(mask, np.minimum(depth, z), depth)
    return depth
