"""The depth and pose networks (SPEC §2): shapes, ranges, gradients, loading and saving."""
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


def test_infer_returns_a_depth_map_at_the_image_size(tiny_net):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8))
    depth = tiny_net.infer(image)
    assert isinstance(depth, np.ndarray) and depth.shape == (50, 90) and depth.dtype == np.float32
    assert tiny_net.training is False


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
    with pytest.raises(RuntimeError, match="facebook/dinov2-base.*--init none"):
        DepthNet("base", init="dinov2")
    # Without the offline flag, an unresolvable hub is caught before the hub client's retries.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.setattr(model.socket, "getaddrinfo", no_dns)
    with pytest.raises(RuntimeError, match="nobody/missing-model.*does not resolve"):
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


def test_pose_from_axis_angle_matches_a_hand_rotation():
    T = pose_to_matrix(torch.tensor([[0.0, 0.0, np.pi / 2]]), torch.tensor([[1.0, 2.0, 3.0]]))
    expected = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    assert torch.allclose(T[0], expected, atol=1e-6)


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
