"""synthetic.py: the world is a nuScenes dataroot that the real reader (data.py) reads as generated."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data
import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'nuscenes_sample', 'v1.0-mini')
TINY = dict(train_day=2, train_night=0, train_rain=0, val_day=1, val_night=1, val_rain=1, keyframes=4,
            size=(90, 160), seed=3)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return synthetic.render_world(str(tmp_path_factory.mktemp('world') / 'w'), **TINY)


def table(root, name):
    with open(os.path.join(root, synthetic.VERSION, name + '.json')) as f:
        return json.load(f)


def key_cameras(root):
    return [sd for sd in table(root, 'sample_data') if sd['is_key_frame'] and sd['fileformat'] == 'jpg']


def plan():
    return synthetic.plan_world(**{k: v for k, v in TINY.items() if k != 'size'})


def key_frames_by_scene(root):
    """{scene name: [key-frame CAM_FRONT records in time order]} from the tables."""
    names = {s['token']: s['name'] for s in table(root, 'scene')}
    scene_of = {s['token']: names[s['scene_token']] for s in table(root, 'sample')}
    frames = {}
    for cam in sorted(key_cameras(root), key=lambda c: c['timestamp']):
        frames.setdefault(scene_of[cam['sample_token']], []).append(cam)
    return frames


def test_tables_have_the_real_nuscenes_fields_and_link_consistently(world):
    for name in synthetic.TABLES:  # same columns as the real v1.0 tables of the fixture
        with open(os.path.join(FIXTURE, name + '.json')) as f:
            assert set(table(world, name)[0]) == set(json.load(f)[0]), name
    tabs = {name: table(world, name) for name in synthetic.TABLES}
    tokens = [r['token'] for name in synthetic.TABLES if name != 'ego_pose' for r in tabs[name]]
    assert len(tokens) == len(set(tokens)) and all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)
    samples = {s['token']: s for s in tabs['sample']}
    for scene in tabs['scene']:
        chain, token = [], scene['first_sample_token']
        while token:
            chain.append(samples[token])
            assert samples[token]['scene_token'] == scene['token']
            token = samples[token]['next']
        assert len(chain) == scene['nbr_samples'] == 4 and chain[-1]['token'] == scene['last_sample_token']
        assert [s['timestamp'] for s in chain] == sorted(s['timestamp'] for s in chain)
    by_token = {sd['token']: sd for sd in tabs['sample_data']}
    for sd in tabs['sample_data']:
        assert os.path.isfile(os.path.join(world, sd['filename']))
        if sd['next']:
            nxt = by_token[sd['next']]
            assert nxt['prev'] == sd['token'] and nxt['timestamp'] > sd['timestamp']
            assert nxt['calibrated_sensor_token'] == sd['calibrated_sensor_token']
        if sd['is_key_frame'] and sd['fileformat'] == 'pcd':  # the sample's time is its lidar sweep's
            assert samples[sd['sample_token']]['timestamp'] == sd['timestamp']
            assert os.path.getsize(os.path.join(world, sd['filename'])) % 20 == 0  # float32 x 5
    cams = key_cameras(world)
    assert len(cams) == len(tabs['sample']) == 5 * 4
    assert all(samples[c['sample_token']]['timestamp'] - c['timestamp'] == synthetic.LIDAR_DELAY_US for c in cams)
    with Image.open(os.path.join(world, cams[0]['filename'])) as image:
        assert image.size == (160, 90)


def test_val_scenes_take_official_val_names_and_train_scenes_others(world):
    with open(os.path.join(ROOT, 'splits', 'nuscenes_val.txt')) as f:
        val = {line.strip() for line in f if line.strip()}
    with open(os.path.join(world, synthetic.VERSION, 'scenes.json')) as f:
        scenes = json.load(f)['scenes']
    assert [(s['name'] in val) for s in scenes] == [s['split'] == 'val' for s in scenes]
    assert Counter((s['split'], s['condition']) for s in scenes) == {
        ('train', 'day'): 2, ('val', 'day'): 1, ('val', 'night'): 1, ('val', 'rain'): 1}


def test_reader_labels_conditions_and_drops_the_stopped_frames(world):
    index = data.NuScenesIndex(world, synthetic.VERSION)
    assert Counter(c for _, c in index.split('val')) == {'day-clear': 4, 'night-clear': 4, 'day-rain': 4}
    with open(os.path.join(world, synthetic.VERSION, 'scenes.json')) as f:
        scenes = json.load(f)['scenes']
    static = {(s['name'], k) for s in scenes for k in s['static_keyframes']}
    assert static == {('scene-0001', 2)}  # the first day-clear training scene stops
    frames = key_frames_by_scene(world)
    expected = sorted(cam['filename'] for name in ('scene-0001', 'scene-0002')
                      for k, cam in enumerate(frames[name]) if (name, k) not in static)
    assert data.list_images('nuscenes', world, synthetic.VERSION, 'train') == expected and len(expected) == 7


def test_projected_lidar_depth_equals_rendered_depth(world):
    errors = []
    for cam in key_cameras(world):
        lidar = data.lidar_depth_map(world, synthetic.VERSION, cam['token'])
        name = os.path.basename(cam['filename'])[:-4] + '.npy'
        rendered = np.load(os.path.join(world, 'depth', 'CAM_FRONT', name))
        assert lidar.shape == rendered.shape == (90, 160) and (lidar > 0).sum() > 200
        hit = lidar > 0
        errors.append(np.abs(lidar[hit] - rendered[hit]) / np.maximum(rendered[hit], 1e-3))
    errors = np.concatenate(errors)  # pixels quantise the ground's depth gradient; occlusion edges differ
    assert np.median(errors) < 0.01 and (errors < 0.05).mean() > 0.9


def test_lidar_points_lie_exactly_on_the_surfaces_the_camera_sees(world):
    tabs = {name: {r['token']: r for r in table(world, name)} for name in ('ego_pose', 'calibrated_sensor')}
    lidars = {sd['sample_token']: sd for sd in table(world, 'sample_data') if sd['fileformat'] == 'pcd'}
    scenes = {s['name']: s for s in plan()}
    record = lambda name, key: synthetic.rigid(tabs[name][key]['translation'], tabs[name][key]['rotation'])
    pose = lambda sd: record('ego_pose', sd['ego_pose_token']) @ record('calibrated_sensor',
                                                                       sd['calibrated_sensor_token'])
    agree = []
    for name, cam in [(name, cam) for name, cams in key_frames_by_scene(world).items() for cam in cams[::2]]:
        lidar = lidars[cam['sample_token']]
        points = np.fromfile(os.path.join(world, lidar['filename']), np.float32).reshape(-1, 5)[:, :3]
        T = np.linalg.inv(pose(cam)) @ pose(lidar)
        p = points @ T[:3, :3].T + T[:3, 3]  # lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera
        p = p[p[:, 2] > 1]
        K = np.array(tabs['calibrated_sensor'][cam['calibrated_sensor_token']]['camera_intrinsic'])
        assert np.allclose(K, synthetic.intrinsics((90, 160)))
        dirs = (p / p[:, 2:]) @ pose(cam)[:3, :3].T  # camera rays through the points' exact projections
        t = synthetic.cast_rays(scenes[name], pose(cam)[:3, 3], dirs[None], lambda c: (0, 1, 0, len(p)))[0][0]
        assert np.all(t < p[:, 2] * (1 + 1e-5))  # no camera ray passes behind a lidar point: same geometry
        agree.append(np.abs(t - p[:, 2]) < 1e-5 * p[:, 2])  # float32 files: rendering precision
    agree = np.concatenate(agree)
    assert len(agree) > 5000 and agree.mean() > 0.85  # the rest is hidden from the camera (parallax)


def test_ego_poses_follow_the_planned_trajectory(world):
    poses = {p['token']: p for p in table(world, 'ego_pose')}
    scene, keys = plan()[0], key_frames_by_scene(world)['scene-0001']  # moves, stands still at key frame 2, moves
    xyz = np.array([poses[sd['ego_pose_token']]['translation'] for sd in keys])
    for sd in keys:
        translation, rotation = synthetic.ego_pose(scene, sd['timestamp'])
        assert np.allclose(poses[sd['ego_pose_token']]['translation'], translation, atol=1e-9)
        assert np.allclose(poses[sd['ego_pose_token']]['rotation'], rotation, atol=1e-12)
        assert np.isclose(synthetic.road_coords(scene, *translation[:2])[1], synthetic.LANE)  # in its lane
    s = np.interp([(sd['timestamp'] - scene['base']) * 1e-6 for sd in keys], scene['t_grid'], scene['s_grid'])
    step = np.linalg.norm(np.diff(xyz, axis=0), axis=1)  # chords of a >= 220 m radius arc ~ its lengths,
    assert np.allclose(step, np.diff(s) * (1 - scene['kappa'] * synthetic.LANE), atol=1e-3)  # off the centre line
    assert step[0] > 2 and step[1] < 1e-9 and step[2] < 1e-9  # stopped from key frame 1 to 3
    assert np.all(xyz[:, 2] == 0) and len({tuple(p['translation']) for p in poses.values()}) > 30


def test_night_is_dark_and_noisy_and_rain_low_in_contrast(world):
    images = {}
    for scene in plan():
        for sd in key_frames_by_scene(world)[scene['name']]:
            images.setdefault(scene['condition'], []).append(
                np.asarray(Image.open(os.path.join(world, sd['filename'])), np.float32) / 255)
            depth = np.load(os.path.join(world, 'depth', 'CAM_FRONT', os.path.basename(sd['filename'])[:-4] + '.npy'))
            assert depth[-1].min() > 1.5 and depth.max() > 40  # road from a few metres to far buildings
    images = {c: np.stack(ims) for c, ims in images.items()}
    mean = {c: im.mean() for c, im in images.items()}
    assert mean['night'] < 0.5 * mean['day'] and mean['rain'] > 0.8 * mean['day']
    contrast = {c: im.mean(-1).std(axis=(1, 2)).mean() for c, im in images.items()}
    assert contrast['rain'] < 0.8 * contrast['day']
    noise = {c: np.abs(np.diff(im.mean(-1), axis=2)).mean() for c, im in images.items()}
    assert noise['night'] > noise['day'] > noise['rain']  # sensor noise at night, blur in the rain


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    small = dict(train_day=1, train_night=1, train_rain=0, val_day=0, val_night=0, val_rain=0, keyframes=2,
                 size=(36, 64))
    worlds = [synthetic.render_world(str(tmp_path / name), seed=seed, workers=w, **small)
              for name, seed, w in (('a', 0, 1), ('b', 0, 2), ('c', 1, 1))]
    files = lambda root: sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)
    read = lambda root, name: Path(root, name).read_bytes()
    assert files(worlds[0]) == files(worlds[1]) and len(files(worlds[0])) == 2 * (5 + 2 + 2) + 7 + 1
    assert all(read(worlds[0], name) == read(worlds[1], name) for name in files(worlds[0]))  # any worker count
    jpgs = [[name for name in files(root) if name.endswith('.jpg')] for root in (worlds[0], worlds[2])]
    assert len(jpgs[0]) == len(jpgs[1]) == 10
    assert all(read(worlds[0], a) != read(worlds[2], b) for a, b in zip(*jpgs))  # log names carry the seed


def test_rerun_resumes_and_foreign_or_other_settings_folders_are_refused(tmp_path):
    small = dict(train_day=1, train_night=0, train_rain=0, val_day=0, val_night=0, val_rain=0, keyframes=2,
                 size=(36, 64))
    root = synthetic.render_world(str(tmp_path / 'w'), **small)
    image = sorted(os.listdir(os.path.join(root, 'samples', 'CAM_FRONT')))[0]
    with open(os.path.join(root, 'samples', 'CAM_FRONT', image), 'rb') as f:
        original = f.read()
    os.remove(os.path.join(root, 'samples', 'CAM_FRONT', image))
    lidar = os.path.join(root, 'samples', 'LIDAR_TOP', os.listdir(os.path.join(root, 'samples', 'LIDAR_TOP'))[0])
    before = os.stat(lidar).st_mtime_ns
    synthetic.render_world(root, **small)
    with open(os.path.join(root, 'samples', 'CAM_FRONT', image), 'rb') as f:
        assert f.read() == original
    assert os.stat(lidar).st_mtime_ns == before  # finished files are kept, not rendered again
    assert not [n for d, _, ns in os.walk(root) for n in ns if '.tmp' in n]
    with pytest.raises(FileExistsError, match='other|these settings'):
        synthetic.render_world(root, **dict(small, seed=5))
    (tmp_path / 'photos').mkdir()
    (tmp_path / 'photos' / 'cat.jpg').write_bytes(b'x')
    with pytest.raises(FileExistsError, match='not a synthetic world'):
        synthetic.render_world(str(tmp_path / 'photos'), **small)
    with pytest.raises(ValueError, match='keyframes'):
        synthetic.render_world(str(tmp_path / 'new'), **dict(small, keyframes=1))


def test_cli_writes_a_readable_world(tmp_path):  # a bad --size: tests/test_bad_inputs.py
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'synthetic.py'), '--out', str(tmp_path / 'cli'),
           '--keyframes', '2', '--train-day', '1', '--train-night', '0', '--train-rain', '0', '--val-day', '0',
           '--val-night', '0', '--val-rain', '0', '--workers', '1']
    done = subprocess.run(cmd + ['--size', '36x64'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [s['name'] for s in table(str(tmp_path / 'cli'), 'scene')] == ['scene-0001']


def test_car_sides_vary_along_the_car_so_their_depth_shows_in_the_flow():
    L, h = 4.4, 1.6
    lx = np.linspace(0.05, L - 0.05, 400)  # one line along a side at door height, below the windows
    n = len(lx)
    size, col = np.tile([L, 1.8, h], (n, 1)), np.tile([.6, .08, .07], (n, 1))
    albedo = lambda z, axis, fp: synthetic.car_albedo(lx, np.zeros(n), np.full(n, z), np.full(n, axis), size,
                                                      col, np.full(n, fp), seed=4)
    side = albedo(0.6, 1, 0.01)
    assert side.shape == (n, 3) and np.all((side >= 0) & (side <= 1))
    red = side[:, 0]
    assert red.std() > 0.15 * red.mean()  # mottling, door gaps: not a plain or banded side
    assert np.abs(np.diff(red)).max() > 0.2  # sharp door gaps, not only smooth noise
    wheel_row = albedo(0.33, 1, 0.01).mean(1)  # through both wheel centres: bright rims in a dark tyre and sill
    rims = (np.abs(lx - 0.85) < 0.15) | (np.abs(lx - (L - 0.85)) < 0.15)
    assert wheel_row[rims].mean() > 0.35 and wheel_row[np.abs(lx - L / 2) < 0.5].max() < 0.1
    far = albedo(0.6, 1, 0.5)  # seen from far (0.5 m per pixel): fine detail fades instead of aliasing
    assert np.abs(np.diff(far[:, 0])).mean() < np.abs(np.diff(red)).mean()
    assert np.array_equal(side, albedo(0.6, 1, 0.01))  # deterministic


def test_wet_road_mirrors_the_street_in_the_rain_and_only_there():
    scene = plan()[0]
    ts = [t for t, key in scene['cameras'] if key][1]
    boxes = {k: v[:1] for k, v in scene['boxes'].items()}  # one box, 10 km away beside the road: out of sight
    no_boxes = dict(scene, boxes=dict(boxes, corners=boxes['corners'] + [0, 1e4, 0]))
    changed = {}
    for cond in ('day', 'rain'):
        image, depth = synthetic.render_frame(dict(scene, condition=cond), ts, (90, 160))
        empty_image, empty_depth = synthetic.render_frame(dict(no_boxes, condition=cond), ts, (90, 160))
        road = (depth == empty_depth) & (depth > 0)  # the road where no box stands in front of it
        road[:, :2] = road[:, -2:] = False  # the rain's blur mixes in neighbours up to a pixel away
        road[:-1] &= road[1:]
        road[1:] &= road[:-1]
        diff = np.abs(image.astype(int) - empty_image).max(-1)
        changed[cond] = (diff[road] > 12).mean()
        assert road.sum() > 1000
    assert changed['day'] == 0  # by day the road looks the same with or without the cars beside it
    assert changed['rain'] > 0.05  # in the rain their upside-down images lie on the wet road


def test_sweeps_make_a_12_hz_camera_that_moves_under_a_metre_between_frames():
    for sweeps, hz in ((1, 4), (5, 12)):
        scene = synthetic.plan_world(2, 0, 0, 0, 0, 0, keyframes=6, sweeps=sweeps, seed=2)[1]  # the 1st stops
        times = np.array([ts for ts, _ in scene['cameras']])
        keys = [ts for ts, key in scene['cameras'] if key]
        assert np.allclose(np.diff(times), 1e6 / hz, atol=1) and np.allclose(np.diff(keys), 5e5, atol=1)
        assert len(keys) == 6 and times[0] < keys[0] and times[-1] > keys[-1]  # a sweep before and after
        xy = np.array([synthetic.ego_pose(scene, ts)[0][:2] for ts in times])
        step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        speed = np.interp((times[1:] - scene['base']) * 1e-6, scene['t_grid'], np.gradient(scene['s_grid'], 1e-3))
        assert np.allclose(step, speed / hz, rtol=0.1)  # 6-11 m/s driven
        if sweeps == 5:  # nuScenes CAM_FRONT: 12 Hz, under a metre a frame at town speed
            assert 0.45 < np.median(step) < 0.95 and step.max() < 1.05


def test_rendered_translations_keep_the_geometry_and_lie_where_the_student_reads_them(world, tmp_path):
    gdt = synthetic.render_translations(world, str(tmp_path / 'gdt'), workers=1)
    targets = data.list_images('nuscenes', world, synthetic.VERSION, 'train')
    for cond in ('night', 'rain'):
        written = sorted(os.path.relpath(os.path.join(d, n), os.path.join(gdt, cond))
                         for d, _, ns in os.walk(os.path.join(gdt, cond)) for n in ns if n.endswith('.jpg'))
        assert written == targets and len(targets) == 7  # every target the student draws, nothing else
    day = {p: np.asarray(Image.open(os.path.join(world, p)), np.float32) / 255 for p in targets}
    read = lambda cond, p: np.asarray(Image.open(os.path.join(gdt, cond, p)), np.float32) / 255
    for p in targets:
        assert read('night', p).shape == day[p].shape == (90, 160, 3)
        assert read('night', p).mean() < 0.5 * day[p].mean()
        assert read('rain', p).mean(-1).std() < 0.8 * day[p].mean(-1).std()
    for scene in plan()[:2]:  # same scene, pose and time: the depth under every condition is the day frame's
        ts = [t for t, key in scene['cameras'] if key][1]
        depth = np.load(os.path.join(world, 'depth', 'CAM_FRONT', f"{scene['log']}__CAM_FRONT__{ts}.npy"))
        for cond in ('night', 'rain'):
            assert np.array_equal(synthetic.render_frame(dict(scene, condition=cond), ts, (90, 160))[1], depth)
    train = data.NuScenesDepth(world, synthetic.VERSION, 'train', size=(45, 80), gdt_root=gdt,
                               gdt_conds=('night',), p_day=0)
    item = train[0]
    assert item['input_cond'] == 'night' and item['input'].mean() < 0.5 * item['color'].mean()


def test_rendered_translations_are_deterministic_resume_and_refuse_other_worlds(world, tmp_path):
    a = synthetic.render_translations(world, str(tmp_path / 'a'), conds=('night',), workers=1)
    synthetic.main(['--translate', world, '--out', str(tmp_path / 'b'), '--cond', 'night', '--workers', '2'])
    files = lambda root: sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)
    assert files(a) == files(str(tmp_path / 'b')) and not os.path.exists(tmp_path / 'b' / 'rain')
    assert all(Path(a, f).read_bytes() == Path(tmp_path, 'b', f).read_bytes() for f in files(a))  # any worker count
    first, last = [Path(a, f) for f in files(a) if f.endswith('.jpg')][::6]
    original, before = first.read_bytes(), last.stat().st_mtime_ns
    first.unlink()
    synthetic.render_translations(world, a, conds=('night',))
    assert first.read_bytes() == original and last.stat().st_mtime_ns == before  # resumed, finished files kept
    assert not [f for f in files(a) if '.tmp' in f]
    other = tmp_path / 'other' / synthetic.VERSION  # the tables of a world with another seed
    other.mkdir(parents=True)
    scenes = json.loads(Path(world, synthetic.VERSION, 'scenes.json').read_text())
    (other / 'scenes.json').write_text(json.dumps(dict(scenes, params=dict(scenes['params'], seed=4))))
    other = str(other.parent)
    with pytest.raises(FileExistsError, match='another world'):
        synthetic.render_translations(other, a, conds=('night',))
    with pytest.raises(ValueError, match='inside the world'):
        synthetic.render_translations(world, os.path.join(world, 'gdt'))
    with pytest.raises(ValueError, match='night, rain'):
        synthetic.render_translations(world, str(tmp_path / 'c'), conds=('snow',))
    with pytest.raises(FileNotFoundError, match='not a world'):
        synthetic.render_translations(str(tmp_path / 'b'), str(tmp_path / 'c'))


@pytest.mark.parametrize('counts', [['--train-day', '0', '--train-night', '0', '--train-rain', '0', '--val-day', '0',
                                     '--val-night', '0', '--val-rain', '0'], ['--train-night', '-1']])
def test_a_world_without_scenes_is_refused_before_rendering(tmp_path, capsys, counts):
    with pytest.raises(SystemExit) as e:
        synthetic.main(['--out', str(tmp_path / 'w'), *counts])
    assert e.value.code == 2 and 'scene counts' in capsys.readouterr().err and not (tmp_path / 'w').exists()
