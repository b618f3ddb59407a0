"""The depth and pose networks (docs/method.md §2): shapes, ranges, gradients, loading and saving; the depth
net's prediction as md4all's evaluation runs it (§5)."""
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DepthAnythingForDepthEstimation, Dinov2Model, ResNetConfig, ResNetModel

import model
from model import (DepthNet, DinoFeatures, PoseNet, disp_to_depth, dinov2_config, export_pretrained,
                   load_depth_net, load_pose_net, pose_to_matrix, save_checkpoint)


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return DepthNet("tiny", init="none", net_size=None).eval()


@pytest.mark.parametrize("size", [(100, 180), (320, 576)])
def test_depth_net_returns_input_size_disparity_and_depth_in_range(tiny_net, size):
    out = tiny_net(torch.rand(2, 3, *size))
    assert out["disp"].shape == out["depth"].shape == out["scaled_disp"].shape == (2, 1, *size)
    assert (out["disp"] > 0).all() and (out["disp"] < 1).all()
    assert (out["depth"] >= 0.1).all() and (out["depth"] <= 80.0).all()
    grid = (round(size[0] / 14), round(size[1] / 14))
    assert out["tokens"].shape == (2, grid[0] * grid[1], 48)


def test_fixed_network_size_sets_the_token_grid():
    net = DepthNet("tiny", init="none", net_size=(98, 196))
    out = net(torch.rand(1, 3, 45, 80))
    assert out["depth"].shape == (1, 1, 45, 80) and out["tokens"].shape == (1, 7 * 14, 48)


def test_disp_to_depth_follows_the_md4all_mapping():
    scaled, depth = disp_to_depth(torch.tensor([0.0, 1.0, 0.5]), 0.1, 80.0)
    assert depth[0].item() == pytest.approx(80.0) and depth[1].item() == pytest.approx(0.1)
    assert scaled[2].item() == pytest.approx(1 / 80 + 0.5 * (10 - 1 / 80))


def test_network_input_is_normalised_with_the_imagenet_mean_and_std_per_channel():
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])  # what DINOv2 learnt on
    at_mean = mean.view(1, 3, 1, 1).expand(1, 3, 14, 14)
    assert torch.allclose(model.to_network_input(at_mean), torch.zeros(1, 3, 14, 14), atol=1e-6)
    one_std_up = (mean + std).view(1, 3, 1, 1).expand(1, 3, 14, 14)
    assert torch.allclose(model.to_network_input(one_std_up), torch.ones(1, 3, 14, 14), atol=1e-6)


def test_gradients_reach_encoder_and_head():
    net = DepthNet("tiny", init="none", net_size=None)
    out = net(torch.rand(1, 3, 56, 84))
    (out["depth"].mean() + out["tokens"].mean()).backward()
    first_block = net.model.backbone.encoder.layer[0].attention.q_proj.weight
    assert first_block.grad is not None and first_block.grad.abs().sum() > 0
    assert net.model.head.conv3.weight.grad.abs().sum() > 0
    # DDP without unused-parameter search needs every trainable parameter to get a gradient.
    assert [k for k, p in net.named_parameters() if p.requires_grad and p.grad is None] == []


def test_checkpoint_alone_rebuilds_an_identical_net(tiny_net, tmp_path):
    x = torch.rand(1, 3, 60, 100)
    save_checkpoint(str(tmp_path / "ckpt.pt"), model=tiny_net.state_dict(), config=tiny_net.config_dict())
    loaded = load_depth_net(str(tmp_path / "ckpt.pt")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x)["depth"], tiny_net(x)["depth"])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_export_opens_with_transformers_from_pretrained(tiny_net, tmp_path):
    export_pretrained(tiny_net, str(tmp_path / "export"))
    hf = DepthAnythingForDepthEstimation.from_pretrained(str(tmp_path / "export")).eval()
    x = torch.rand(1, 3, 56, 84)
    with torch.no_grad():
        s = hf(model.to_network_input(x, (56, 84))).predicted_depth
        ours = tiny_net(x)
        assert torch.allclose(s[:, None], ours["disp"], atol=1e-6)
        assert torch.allclose(load_depth_net(str(tmp_path / "export"))(x)["depth"], ours["depth"], atol=1e-5)


FIXTURE_FRAME = os.path.join(os.path.dirname(__file__), "fixtures", "nuscenes_sample", "samples", "CAM_FRONT",
                             "n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg")


def test_onnx_export_matches_torch_depth_on_the_fixture_frame_at_two_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="optional: pip install onnx onnxruntime (requirements-extras.txt)")
    pytest.importorskip("onnx", reason="optional: pip install onnx onnxruntime (requirements-extras.txt)")
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=None, init_depth=10.0).eval()  # the net size follows the frame
    session = ort.InferenceSession(model.export_onnx(net, str(tmp_path / "depth.onnx")),
                                   providers=["CPUExecutionProvider"])
    frame = Image.open(FIXTURE_FRAME).convert("RGB")
    for h, w in [(90, 160), (126, 224)]:  # patch grids 6x11 and 9x16 without a fixed net size: odd and even
        images = torch.from_numpy(np.array(frame.resize((w, h), Image.BILINEAR))).permute(2, 0, 1)[None] / 255
        with torch.no_grad():
            expected = net(images)["depth"].numpy()
        (depth,) = session.run(["depth"], {"images": images.numpy()})
        assert depth.shape == (1, 1, h, w)
        assert np.abs(depth / expected - 1).max() < 1e-4
    assert os.listdir(tmp_path) == ["depth.onnx"]


def test_infer_returns_a_depth_map_at_the_image_size(tiny_net):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8))
    depth = tiny_net.infer(image)
    assert isinstance(depth, np.ndarray) and depth.shape == (50, 90) and depth.dtype == np.float32


def test_infer_runs_in_eval_mode_and_gives_back_the_mode_it_found(tiny_net):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 42, 3), dtype=np.uint8))
    seen = []
    hook = tiny_net.register_forward_pre_hook(lambda module, inputs: seen.append(module.training))
    try:
        tiny_net.train()
        tiny_net.infer(image)
        assert seen == [False] and tiny_net.training is True  # a training net stays in training mode
        tiny_net.eval()
        tiny_net.infer(image)
        assert seen == [False, False] and tiny_net.training is False
    finally:
        hook.remove()
        tiny_net.eval()


def test_dinov2_init_loads_the_encoder_from_a_local_folder(tmp_path):
    torch.manual_seed(1)
    Dinov2Model(dinov2_config("tiny")).save_pretrained(tmp_path / "dino")
    net = DepthNet("tiny", init="dinov2", weights=str(tmp_path / "dino"), net_size=None)
    reference = Dinov2Model.from_pretrained(tmp_path / "dino")
    assert torch.equal(net.model.backbone.encoder.layer[2].mlp.fc1.weight, reference.encoder.layer[2].mlp.fc1.weight)
    # The frozen semantic encoder sees the same token grid as the depth net.
    dino = DinoFeatures("tiny", weights=str(tmp_path / "dino"), net_size=None)
    x = torch.rand(1, 3, 56, 84)
    assert dino(x).shape == net(x)["tokens"].shape
    assert not any(p.requires_grad for p in dino.parameters())


def test_unreachable_weight_id_fails_fast_with_the_fix(monkeypatch):
    with pytest.raises(model.ModelUnavailable, match="facebook/dinov2-base.*--init none"):
        DepthNet("base", init="dinov2")
    # Without the offline flag, an unresolvable hub is caught before the hub client's retries.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.setattr(model.socket, "getaddrinfo", no_dns)
    with pytest.raises(model.ModelUnavailable, match="nobody/missing-model.*does not resolve"):
        model.from_pretrained_or_explain(Dinov2Model.from_pretrained, "nobody/missing-model", "--init none")


def test_bad_flags_are_named():
    with pytest.raises(ValueError, match="--encoder"):
        DepthNet("huge", init="none")
    with pytest.raises(ValueError, match="--encoder small"):
        DepthNet("base", init="depth-anything-v2-small")


def test_pose_net_returns_rigid_transforms_and_round_trips(tmp_path):
    pose = PoseNet("tiny", init=None)
    T = pose(torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96))
    assert T.shape == (2, 4, 4)
    R = T[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5)
    assert torch.equal(T[:, 3], torch.tensor([[0.0, 0, 0, 1]] * 2))
    save_checkpoint(str(tmp_path / "c.pt"), pose=pose.state_dict(), pose_config=pose.config_dict())
    x = torch.rand(1, 3, 64, 96)
    assert torch.equal(load_pose_net(str(tmp_path / "c.pt"))(x, x), pose(x, x))


def test_pose_net_started_at_motion_predicts_straight_ahead_motion_of_that_length():
    torch.manual_seed(0)
    pose, x, y = PoseNet("tiny", init=None), torch.rand(3, 3, 64, 96), torch.rand(3, 3, 64, 96)
    before = pose(x, y)[:, :3, 3]
    assert before.abs().max() < 0.05  # md4all's start: about no motion
    pose.start_at_motion(0.7)
    t = pose(x, y)[:, :3, 3]
    assert torch.equal(t[:, :2], before[:, :2])  # only the forward component moved
    assert torch.allclose(t[:, 2], torch.full((3,), -0.7), atol=0.005)


def test_pose_from_axis_angle_matches_a_hand_rotation():
    T = pose_to_matrix(torch.tensor([[0.0, 0.0, np.pi / 2]]), torch.tensor([[1.0, 2.0, 3.0]]), "axis-angle")
    expected = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    assert torch.allclose(T[0], expected, atol=1e-6)


def test_pose_from_axis_angle_turns_about_x_and_y_the_right_way():
    quarter = np.pi / 2
    Tx = pose_to_matrix(torch.tensor([[quarter, 0.0, 0.0]]), torch.zeros(1, 3), "axis-angle")[0, :3, :3]
    Ty = pose_to_matrix(torch.tensor([[0.0, quarter, 0.0]]), torch.zeros(1, 3), "axis-angle")[0, :3, :3]
    assert torch.allclose(Tx @ torch.tensor([0.0, 1, 0]), torch.tensor([0.0, 0, 1]), atol=1e-6)  # y -> z
    assert torch.allclose(Ty @ torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0]), atol=1e-6)  # z -> x
    # a general axis: Rodrigues' rotation keeps the axis and turns a perpendicular vector by the angle
    axis = torch.tensor([1.0, 2.0, 2.0]) / 3
    R = pose_to_matrix((0.7 * axis)[None], torch.zeros(1, 3), "axis-angle")[0, :3, :3]
    assert torch.allclose(R @ axis, axis, atol=1e-6)
    perpendicular = torch.tensor([2.0, -2.0, 1.0]) / 3
    turned = R @ perpendicular
    assert turned @ perpendicular == pytest.approx(np.cos(0.7), abs=1e-6)
    assert turned @ torch.linalg.cross(axis, perpendicular) == pytest.approx(np.sin(0.7), abs=1e-6)


def test_pose_net_sees_the_target_in_its_first_three_channels():
    """The order the teacher's pose net was trained with; the student's reliability mask reuses it."""
    pose = PoseNet("tiny", init=None)
    seen = []
    pose.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    target, source = torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 48)
    pose(target, source)
    assert torch.allclose(seen[0][:, :3], model.to_network_input(target, (32, 48)))
    assert torch.allclose(seen[0][:, 3:], model.to_network_input(source, (32, 48)))


def test_pose_net_imagenet_init_duplicates_and_halves_the_first_filters(tmp_path):
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                          layer_type="basic")
    rgb = ResNetModel(config)
    rgb.save_pretrained(tmp_path / "resnet")
    pose = PoseNet("tiny", init=str(tmp_path / "resnet"))
    w3 = rgb.embedder.embedder.convolution.weight
    w6 = pose.encoder.embedder.embedder.convolution.weight
    assert torch.allclose(w6, torch.cat([w3, w3], 1) / 2)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = DepthNet("tiny", init="none", net_size=None)
    checkpointed = DepthNet("tiny", init="none", net_size=None)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.model.activation_checkpointing_enable()  # train_teacher.py --grad-ckpt
    x = torch.rand(1, 3, 56, 84)
    for net in (plain, checkpointed):
        net(x)["depth"].mean().backward()
    w = lambda n: n.model.backbone.encoder.layer[0].mlp.fc1.weight.grad  # noqa: E731
    assert checkpointed.model.is_activation_checkpointing and torch.allclose(w(plain), w(checkpointed), atol=1e-6)


def test_a_fresh_head_starts_at_the_requested_depth_and_varies_over_the_image():
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=None, init_depth=10.0)
    out = net(torch.rand(1, 3, 56, 84))
    assert out["depth"].median().item() == pytest.approx(10.0, rel=0.05)
    # PyTorch-default init of the DPT head: the disparity is not a constant (no dead ReLUs at the start)
    assert out["disp"].std() > 1e-5


def test_output_size_input_network_or_given():
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=(56, 98)).eval()
    x = torch.rand(1, 3, 40, 70)
    with torch.no_grad():
        assert net(x)["depth"].shape == (1, 1, 40, 70)
        native = net(x, out_size="network")
        assert native["disp"].shape == (1, 1, 56, 98)  # the head's own resolution, no interpolation
        resized = net(x, out_size=(20, 35))
    assert resized["depth"].shape == (1, 1, 20, 35)
    expected = torch.nn.functional.interpolate(native["disp"], size=(20, 35), mode="bilinear", align_corners=False)
    assert torch.allclose(resized["disp"], expected, atol=1e-7)


def test_under_bf16_autocast_disparity_and_smoothness_stay_float32():
    from losses import smoothness_loss
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=None, init_depth=20.0)
    x = torch.rand(1, 3, 56, 84)
    grads = []
    for autocast in (False, True):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x, out_size=(40, 60))
            loss = smoothness_loss(out["scaled_disp"], torch.nn.functional.interpolate(x, (40, 60)))
        assert out["disp"].dtype == out["scaled_disp"].dtype == out["depth"].dtype == loss.dtype == torch.float32
        if autocast:  # bf16 sigmoid output would make most horizontal neighbours equal
            same = (out["disp"][..., 1:] == out["disp"][..., :-1]).float().mean()
            assert same < 0.2
        loss.backward()
        grads.append(net.model.head.conv2.weight.grad.flatten().clone())
    # the encoder runs in bf16, so gradients are close, not equal; a bf16 head gave cosine ~0.1
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.9


class RelativeDisparity(torch.nn.Module):
    """Stands in for a trained Depth-Anything head's last convolution: its output is a given relative disparity."""

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x):
        return self.z[:len(x), None].to(x.dtype)


def small_net_seeing(z):
    """A Depth-Anything-V2-Small-sized DepthNet whose head outputs z (B, H, W) on frames of that size."""
    torch.manual_seed(0)
    net = DepthNet("small", init="none", net_size=None).eval()
    net.model.head.conv3 = RelativeDisparity(z)
    return net, torch.rand(len(z), 3, *z.shape[1:])


def test_depth_anything_calibration_keeps_depth_ratios_and_the_far_field_and_refuses_a_flat_head(capsys):
    from worlds import street_depth
    depth = np.stack([street_depth(98, 168)] * 2)  # multiples of 14: the head's output size
    sky = np.isinf(depth)
    rng = np.random.default_rng(0)
    # what Depth-Anything gives: inverse depth up to scale and shift, the sky near the shift, a little noise
    z = torch.tensor(np.where(sky, 0.0, 20.0 / np.where(sky, 1, depth)) + 0.5 + 0.01 * rng.standard_normal(depth.shape))
    net, images = small_net_seeing(z.float())
    summary = net.calibrate_head(images, depth=10.0)
    with torch.no_grad():
        pred = net(images, out_size="network")["depth"][:, 0].double().numpy()
    scored = ~sky & (depth < 80)
    slope = np.polyfit(np.log(depth[scored]), np.log(pred[scored]), 1)[0]
    assert slope >= 0.95  # depth ratios kept (the affine fit before gave 0.76 on this frame)
    assert summary["median"] == pytest.approx(10.0, rel=1e-3) and summary["near"] < summary["median"] < summary["far"]
    far = depth == 40.0  # the far buildings: 40 m, not capped (the affine fit put them at 12 m)
    assert np.median(pred[far]) / summary["median"] == pytest.approx(40.0 / np.median(depth[z.numpy() >= 0.5 + 0.05 *
                                                                     (z.max().item() - 0.5)]), rel=0.15)
    assert np.median(pred[sky]) > 60  # the sky far, not at the median
    assert "head_log" in net.config_dict() and "head_log" not in DepthNet("tiny", init="none").config_dict()
    net.model.head.conv3 = RelativeDisparity(3.0 + 3.5e-5 * torch.rand(2, 98, 168))  # random weights, blank frames
    with pytest.raises(ValueError, match=r"head's output on 2 training frames is flat"):
        net.calibrate_head(images)


def test_a_calibrated_map_travels_in_the_checkpoint_and_an_old_one_loads_without(tmp_path):
    torch.manual_seed(0)
    net = DepthNet("tiny", init="none", net_size=None).eval()
    x = torch.rand(1, 3, 28, 42)
    with torch.no_grad():
        before = net(x)["depth"]
        net.head_log = dict(offset=-1.0, eps=1e-6, shift=-3.0)
        after = net(x)["depth"]
    assert not torch.allclose(before, after)
    save_checkpoint(tmp_path / "da.pt", model=net.state_dict(), config=net.config_dict())
    save_checkpoint(tmp_path / "old.pt", model=net.state_dict(), config=DepthNet("tiny", init="none",
                                                                                  net_size=None).config_dict())
    export_pretrained(net, str(tmp_path / "exported"))
    with torch.no_grad():
        assert torch.equal(load_depth_net(str(tmp_path / "da.pt")).eval()(x)["depth"], after)
        assert torch.equal(load_depth_net(str(tmp_path / "old.pt")).eval()(x)["depth"], before)
        assert torch.allclose(load_depth_net(str(tmp_path / "exported")).eval()(x)["depth"], after)


def test_pose_from_euler_angles_is_rx_ry_rz_as_md4all():
    a, b, c = 0.3, -0.5, 0.8  # about x, y, z
    T = pose_to_matrix(torch.tensor([[a, b, c]], dtype=torch.float64), torch.tensor([[1.0, 2.0, 3.0]],
                       dtype=torch.float64))
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    # Rx(a) Ry(b) Rz(c) multiplied out by hand
    R = np.array([[cb * cc, -cb * sc, sb],
                  [sa * sb * cc + ca * sc, -sa * sb * sc + ca * cc, -sa * cb],
                  [-ca * sb * cc + sa * sc, ca * sb * sc + sa * cc, ca * cb]])
    np.testing.assert_allclose(T[0, :3, :3].numpy(), R, atol=1e-12)
    np.testing.assert_allclose(T[0, :3, 3].numpy(), [1, 2, 3])
    # the two parametrisations agree about one axis and differ about several (4e-5 at about 1 degree)
    one_axis = torch.tensor([[0.0, 0.2, 0.0]])
    assert torch.allclose(pose_to_matrix(one_axis, torch.zeros(1, 3)), pose_to_matrix(one_axis, torch.zeros(1, 3),
                                                                                       "axis-angle"), atol=1e-7)
    small = torch.tensor([[0.01, 0.01, 0.01]], dtype=torch.float64)
    gap = (pose_to_matrix(small, small) - pose_to_matrix(small, small, "axis-angle")).abs().max().item()
    assert 1e-5 < gap < 1e-4
    with pytest.raises(ValueError, match="--rotation 'quaternion' is unknown"):
        pose_to_matrix(small, small, "quaternion")


def test_pose_net_keeps_its_rotation_through_a_checkpoint_and_old_ones_load_as_axis_angle(tmp_path):
    torch.manual_seed(0)
    pose = model.PoseNet("tiny", init=None)
    assert pose.rotation == "euler"  # md4all's default
    x, y = torch.rand(1, 3, 28, 42), torch.rand(1, 3, 28, 42)
    with torch.no_grad():
        pose.decoder[-1].bias[:3] = torch.tensor([10.0, -20.0, 30.0])  # rotations large enough to tell apart
    save_checkpoint(tmp_path / "new.pt", pose=pose.state_dict(), pose_config=pose.config_dict())
    old_config = {k: v for k, v in pose.config_dict().items() if k != "rotation"}  # a checkpoint from before
    save_checkpoint(tmp_path / "old.pt", pose=pose.state_dict(), pose_config=old_config)
    new, old = load_pose_net(str(tmp_path / "new.pt")), load_pose_net(str(tmp_path / "old.pt"))
    assert (new.rotation, old.rotation) == ("euler", "axis-angle")
    with torch.no_grad():
        assert torch.equal(new(x, y), pose(x, y))
        assert not torch.allclose(old(x, y), pose(x, y), atol=1e-4)


def test_invert_transform_undoes_a_rigid_motion():
    T = pose_to_matrix(torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(model.invert_transform(T) @ T, torch.eye(4)[None], atol=1e-6)


@pytest.mark.parametrize("encoder", ["small", "base"])
def test_random_semantic_dinov2_has_the_student_width(encoder):
    with torch.device("meta"):  # full-size configs, no memory
        dino = DinoFeatures(encoder, weights="none")
    assert dino.dino.config.hidden_size == model.ENCODERS[encoder]["hidden"]


def test_infer_rejects_a_single_channel_array_with_a_clear_message(tiny_net):
    with pytest.raises(ValueError, match=r"RGB image.*\(4, 6\)"):
        tiny_net.infer(np.zeros((4, 6), dtype=np.uint8))


def test_truncated_or_foreign_checkpoint_names_the_file(tiny_net, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model=tiny_net.state_dict(), config=tiny_net.config_dict())
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut\.pt cannot be read.*truncated"):
        load_depth_net(str(tmp_path / "cut.pt"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt has no 'model'"):
        load_depth_net(str(tmp_path / "other.pt"))


def test_pose_net_request_says_what_the_checkpoint_is(tmp_path):
    save_checkpoint(str(tmp_path / "s.pt"), pose=None, args={"teacher": "t.pt"})
    with pytest.raises(ValueError, match="student checkpoint"):
        load_pose_net(str(tmp_path / "s.pt"))
    save_checkpoint(str(tmp_path / "l.pt"), pose=None, args={"supervision": "lidar"})
    with pytest.raises(ValueError, match=r"teacher \(lidar\) checkpoint.*--teacher-mask none"):
        load_pose_net(str(tmp_path / "l.pt"))


def test_offline_hint_names_the_current_download_command():
    with pytest.raises(model.ModelUnavailable, match="hf download facebook/dinov2-base --local-dir DIR"):
        DepthNet("base", init="dinov2")


def test_export_opens_in_the_transformers_depth_pipeline(tiny_net, tmp_path):
    from transformers import pipeline
    export_pretrained(tiny_net, str(tmp_path / "export"))
    pipe = pipeline("depth-estimation", model=str(tmp_path / "export"))
    out = pipe(Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8)))
    assert out["predicted_depth"].ndim >= 2 and np.isfinite(out["predicted_depth"].numpy()).all()


def test_full_size_net_runs_on_the_meta_device_for_shape_checks():
    with torch.device("meta"):
        net = DepthNet("small", init="none", net_size=(518, 784))
        out = net(torch.rand(1, 3, 320, 576))
    assert out["depth"].shape == (1, 1, 320, 576) and out["tokens"].shape == (1, 37 * 56, 384)


def test_checkpoints_are_readable_as_the_umask_says(tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint(str(tmp_path / "ckpt.pt"), step=1)
    finally:
        os.umask(previous)
    assert oct((tmp_path / "ckpt.pt").stat().st_mode & 0o777) == oct(0o644) and os.listdir(tmp_path) == ["ckpt.pt"]
