"""The SSD depth network (docs/method.md §2): DINOv2 encoder + DPT head, plus the md4all pose network.

    from model import load_depth_net
    net = load_depth_net("runs/student/ckpt.pt")      # a checkpoint alone rebuilds the net
    depth = net.infer(PIL.Image.open("frame.jpg"))    # (H, W) float32 metres
    export_onnx(net, "student.onnx")                  # ONNX graph, any frame size (pip install onnx onnxruntime)

Why transformers' `DepthAnythingForDepthEstimation`: it *is* DINOv2 + the Depth-Anything DPT head
the paper uses, so the pretrained DINOv2 encoder and the Depth-Anything-V2 weights load into it
unchanged, and an exported net opens with `from_pretrained` anywhere. We call its backbone, neck
and head ourselves (three lines) so the last-layer patch tokens come out of the same pass for the
semantic loss. The head is built as "metric" with max_depth 1, so its output is exactly the sigmoid
disparity s of md4all; `disp_to_depth` turns s into metres.
This file imports nothing of the project: copy it alone to use a trained net.
"""
import contextlib
import json
import os
import socket

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# transformers is imported inside the functions that build networks: it costs seconds to import, and a
# command that fails on a flag, or only scores saved predictions, should not wait for it.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINOv2 sizes and the Depth-Anything-V2 DPT heads that go with them (taps are 1-based layers).
ENCODERS = {
    "tiny": dict(hidden=48, layers=4, heads=4, taps=[1, 2, 3, 4], neck=[8, 16, 24, 48], fusion=16,
                 head=8, hub=None),
    "small": dict(hidden=384, layers=12, heads=6, taps=[3, 6, 9, 12], neck=[48, 96, 192, 384],
                  fusion=64, head=32, hub="facebook/dinov2-small"),
    "base": dict(hidden=768, layers=12, heads=12, taps=[3, 6, 9, 12], neck=[96, 192, 384, 768],
                 fusion=128, head=32, hub="facebook/dinov2-base"),
    "large": dict(hidden=1024, layers=24, heads=16, taps=[5, 12, 18, 24],
                  neck=[256, 512, 1024, 1024], fusion=256, head=32, hub="facebook/dinov2-large"),
}
INITS = ("dinov2", "depth-anything-v2-small", "none")
DEPTH_ANYTHING_V2_SMALL = "depth-anything/Depth-Anything-V2-Small-hf"
RESNET18 = "microsoft/resnet-18"


class ModelUnavailable(OSError):
    """A model id or folder that cannot be loaded here (the message says which and how to fix it)."""


def from_pretrained_or_explain(load_fn, name_or_path, hint, **kwargs):
    """Call `load_fn(name_or_path, **kwargs)`; fail fast with the id and the fix when it is not
    reachable (no hub, not in the cache, not a local folder), instead of ~25 s of retries."""
    name_or_path = str(name_or_path)

    def explain(cause):
        return ModelUnavailable(
            f"could not load '{name_or_path}' ({cause}). It is neither a local folder nor in the "
            f"Hugging Face cache, and the hub is not reachable from here. Download it where you have "
            f"network (`hf download {name_or_path} --local-dir DIR`) and pass DIR "
            f"instead, or use {hint}.")

    if os.path.isdir(name_or_path) or os.environ.get("HF_HUB_OFFLINE") == "1":
        try:
            return load_fn(name_or_path, **kwargs)
        except OSError as e:
            raise explain(str(e).splitlines()[0]) from e
    try:
        return load_fn(name_or_path, local_files_only=True, **kwargs)
    except OSError:
        pass
    from huggingface_hub import constants
    host = constants.ENDPOINT.split("://")[-1].split("/")[0]
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise explain(f"{host} does not resolve: {e}") from e
    try:
        return load_fn(name_or_path, **kwargs)
    except OSError as e:
        raise explain(str(e).splitlines()[0]) from e


def float32_maths(device):
    """A region where autocast is off, so float32 inputs stay float32 (a no-op on devices without
    autocast, such as the meta device of shape checks)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def disp_to_depth(disp, min_depth=0.1, max_depth=80.0):
    """md4all / monodepth2 mapping of sigmoid disparity to (scaled disparity, depth), docs/method.md §2."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


def patch_multiple(n):
    """n pixels rounded to the nearest multiple of the 14-pixel patch (halves to even, as Python's round), at
    least 14; n may be a traced size (a 0-d tensor, export_onnx), so the ONNX graph computes it for every size."""
    if isinstance(n, torch.Tensor):
        return torch.clamp(torch.round(n / 14), min=1).long() * 14
    return max(14, round(n / 14) * 14)


def to_network_input(images, net_size=None):
    """Resize (B,3,H,W) images in [0,1] to `net_size` (or the nearest multiples of 14) and normalise them
    as DINOv2 expects. The datasets own the resize to the network size (once, from the full frame), so
    here it acts only on images that come at another size: a photo given to infer(), the pose net's
    frames, or nets built without a net_size (--tiny), which see the loss-size frames at multiples of 14."""
    h, w = images.shape[-2:]
    traced = isinstance(h, torch.Tensor)  # sizes are tensors while torch.onnx traces the net (export_onnx)
    if net_size is None:
        net_size = (patch_multiple(h), patch_multiple(w))
    if traced or tuple(net_size) != (h, w):  # traced: resize in the graph, a no-op at equal sizes
        images = F.interpolate(images, size=tuple(net_size), mode="bilinear", align_corners=False)
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def dinov2_config(encoder):
    """The real DINOv2 configuration of `encoder` (tiny: a 4-layer random one for tests)."""
    from transformers import Dinov2Config
    e = ENCODERS[encoder]
    return Dinov2Config(hidden_size=e["hidden"], num_hidden_layers=e["layers"],
                        num_attention_heads=e["heads"], image_size=518, patch_size=14,
                        layerscale_value=1.0, out_indices=e["taps"], reshape_hidden_states=False)


def depth_anything_config(encoder):
    """Depth-Anything-V2 DPT configuration on top of DINOv2 `encoder`, sigmoid output."""
    from transformers import DepthAnythingConfig
    e = ENCODERS[encoder]
    return DepthAnythingConfig(backbone_config=dinov2_config(encoder), reassemble_hidden_size=e["hidden"],
                               neck_hidden_sizes=e["neck"], fusion_hidden_size=e["fusion"],
                               head_hidden_size=e["head"], depth_estimation_type="metric", max_depth=1)


class DepthNet(nn.Module):
    """DINOv2 + DPT depth network returning md4all disparity and metric depth at the input size."""

    def __init__(self, encoder="base", init="dinov2", weights=None, min_depth=0.1, max_depth=80.0,
                 net_size=(518, 784), hf_config=None, init_depth=None, head_log=None):
        """head_log: None, or the log-disparity map calibrate_head fits for a Depth-Anything start (a dict of
        offset, eps, shift): the head's last output z then becomes log(max(z - offset, eps)) + shift before
        the sigmoid."""
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Backbone
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"--encoder {encoder!r} is unknown; choose one of {sorted(ENCODERS)}")
        if init not in INITS:
            raise ValueError(f"--init {init!r} is unknown; choose one of {INITS}")
        self.encoder, self.min_depth, self.max_depth = encoder, min_depth, max_depth
        self.net_size = tuple(net_size) if net_size else None
        self.head_log = dict(head_log) if head_log else None
        backbone = None
        if init == "dinov2":  # load first: an unreachable id fails before the random init of a big net
            if encoder == "tiny" and weights is None:
                raise ValueError("--encoder tiny has no pretrained DINOv2: pass --init none or --weights DIR")
            backbone = from_pretrained_or_explain(
                Dinov2Backbone.from_pretrained, weights or ENCODERS[encoder]["hub"],
                "--init none (random encoder)", out_indices=ENCODERS[encoder]["taps"],
                reshape_hidden_states=False)
        if init == "depth-anything-v2-small":
            if encoder != "small":
                raise ValueError("--init depth-anything-v2-small loads a ViT-S net: use --encoder small")
            self.model = from_pretrained_or_explain(
                DepthAnythingForDepthEstimation.from_pretrained, weights or DEPTH_ANYTHING_V2_SMALL,
                "--init dinov2 or --init none", depth_estimation_type="metric", max_depth=1)
        else:
            config = DepthAnythingConfig.from_dict(hf_config) if hf_config else depth_anything_config(encoder)
            self.model = DepthAnythingForDepthEstimation(config)
            # A fresh DPT head as the Depth-Anything code builds it (PyTorch's default init), not transformers'
            # N(0, 0.02): with that, activations shrink layer by layer and the head's ReLUs can all die at once.
            for module in [*self.model.neck.modules(), *self.model.head.modules()]:
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    module.reset_parameters()
        if backbone is not None:
            self.model.backbone.load_state_dict(backbone.state_dict())
        # Parameters no forward pass uses (masked-image pretraining token; the first fusion block has
        # no skip input): frozen, so DDP need not search for unused parameters every step.
        self.model.backbone.embeddings.mask_token.requires_grad_(False)
        self.model.neck.fusion_stage.layers[0].residual_layer1.requires_grad_(False)
        if init_depth:
            self.start_at_depth(init_depth)

    @torch.no_grad()
    def start_at_depth(self, depth):
        """Set the head's last bias so a fresh net predicts about `depth` metres everywhere (md4all's
        sigmoid 0.5 means 0.2 m: with metric velocity supervision a from-scratch net can stall there)."""
        s = (1 / depth - 1 / self.max_depth) / (1 / self.min_depth - 1 / self.max_depth)
        self.model.head.conv3.bias.fill_(float(np.log(s / (1 - s))))

    def config_dict(self):
        """Everything needed to rebuild this net from a checkpoint alone."""
        config = dict(encoder=self.encoder, min_depth=self.min_depth, max_depth=self.max_depth,
                      net_size=self.net_size, hf_config=self.model.config.to_dict())
        return dict(config, head_log=self.head_log) if self.head_log else config

    def forward(self, images, out_size="input"):
        """images (B,3,H,W) in [0,1] -> dict of disp, scaled_disp, depth (B,1,h,w) and the last-layer
        patch tokens (B,N,C) of the encoder.

        out_size: "input" gives the maps at the size of `images`; "network" at the head's own output
        resolution (what the md4all evaluation upsamples, docs/method.md §5); (h, w) resizes to that size
        (the loss resolution in training).
        """
        x = to_network_input(images, self.net_size)
        ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
        features = self.model.backbone(x).feature_maps
        disp = self.sigmoid_disparity(self.model.neck(list(features), ph, pw), ph, pw)
        # Under bf16 autocast the sigmoid output has 8 bits of mantissa: most neighbouring pixels would get
        # the same disparity and the smoothness gradient would be noise. Everything from here is float32.
        with float32_maths(disp.device):
            size = images.shape[-2:] if out_size == "input" else disp.shape[-2:] if out_size == "network" else out_size
            if tuple(disp.shape[-2:]) != tuple(size):
                disp = F.interpolate(disp, size=tuple(size), mode="bilinear", align_corners=False)
            scaled_disp, depth = disp_to_depth(disp, self.min_depth, self.max_depth)
        return {"disp": disp, "scaled_disp": scaled_disp, "depth": depth, "tokens": features[-1][:, 1:]}

    def sigmoid_disparity(self, fused, ph, pw):
        """The DPT head (transformers' DepthAnythingDepthEstimationHead, written out) with its last 1x1
        convolution and sigmoid in float32: (B,1,14ph,14pw) md4all sigmoid disparity s in (0, 1)."""
        return torch.sigmoid(self.head_logits(fused, ph, pw))

    def head_logits(self, fused, ph, pw):
        """The head's output before the sigmoid, float32 (B,1,14ph,14pw)."""
        head = self.model.head
        x = head.conv1(fused[head.head_in_index])
        x = F.interpolate(x, (ph * 14, pw * 14), mode="bilinear", align_corners=True)
        x = head.activation1(head.conv2(x))
        with float32_maths(x.device):
            z = head.conv3(x.float())
            if self.head_log:
                h = self.head_log
                z = torch.log((z - h["offset"]).clamp_min(h["eps"])) + h["shift"]
            return z

    @torch.no_grad()
    def calibrate_head(self, images, depth=10.0, batch_size=4):
        """Map the head's relative disparity to md4all's sigmoid so that depth ratios are kept and the median
        non-sky pixel of `images` starts at `depth` metres (docs/method.md §2). Returns calibration_summary's
        dict. Raises ValueError for a head whose output is flat (random weights, blank frames).

        Depth-Anything-V2 predicts inverse depth up to a scale and a shift, and its released head ends in a
        ReLU with outputs well above 1: under our sigmoid those saturate (depth near min_depth) and gradients
        vanish. An affine map of that output cannot fix it without bending depth ratios (a metric depth of
        1-80 m lives where the sigmoid is exp-shaped, so s = exp(a z + b) would have to follow z itself; the
        old fit gave a log-log slope of 0.58 and capped the far field at 15 m). Instead the head's output
        z is read as disparity with the sky (its 1st percentile) at 0, scaled so the median non-sky pixel
        is at `depth`, and the sigmoid is given log(z - offset) + shift: for the small s of metric depths,
        s = exp(shift) (z - offset), which is md4all's 1/d - 1/max_depth when offset is the sky's level
        plus max_depth's share of the median's disparity. Pixels beyond max_depth start at max_depth.
        """
        z = torch.cat([self.head_raw(images[i:i + batch_size]).flatten() for i in range(0, len(images), batch_size)])
        z = z.double()
        offset, top = torch.quantile(z, 0.01).item(), torch.quantile(z, 0.99).item()
        spread = top - offset
        if not spread > 1e-4 * max(1.0, abs(offset), abs(top)):
            raise ValueError(f"--init depth-anything-v2-small: the head's output on {len(images)} training frames is "
                             f"flat (1st to 99th percentile {offset:.6g} to {top:.6g}): these are not Depth-Anything-V2 "
                             f"weights (--weights), or the frames are blank; nothing to calibrate from")
        near = z >= offset + AUDIT_FAR_SHARE * spread  # the sky and the far range left out (as gdt.py's audit)
        mid = torch.quantile(z[near], 0.5).item()
        # z - offset is inverse depth in units where the median pixel is at 1 / depth: md4all's sigmoid carries
        # 1/d - 1/max_depth, so the map's offset moves by that share of the median's disparity
        offset += (mid - offset) * depth / self.max_depth
        s = (1 / depth - 1 / self.max_depth) / (1 / self.min_depth - 1 / self.max_depth)
        head_log = dict(offset=offset, eps=1e-6 * spread, shift=float(np.log(s / (1 - s)) - np.log(mid - offset)))
        logits = torch.log((z[near] - offset).clamp_min(head_log["eps"])) + head_log["shift"]
        depths = disp_to_depth(torch.sigmoid(logits), self.min_depth, self.max_depth)[1]
        summary = calibration_summary(depths, len(images))
        # The scale is set by the median alone, so it cannot explode unless the head is flat (refused above); the
        # near decile is at least 5% of the disparity range away from the sky, so it starts at >= depth / 20.
        self.head_log = head_log
        return summary

    def head_raw(self, images):
        """The head's last output before any calibration map (B*H*W values): what Depth-Anything calls depth."""
        x = to_network_input(images, self.net_size)
        ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
        head_log, self.head_log = self.head_log, None
        try:
            return self.head_logits(self.model.neck(list(self.model.backbone(x).feature_maps), ph, pw), ph, pw)
        finally:
            self.head_log = head_log

    @torch.no_grad()
    def infer(self, image):
        """A PIL image (or HxWx3 uint8 array) -> (H, W) float32 depth in metres."""
        x = np.array(image.convert("RGB") if hasattr(image, "convert") else image)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"DepthNet.infer takes an RGB image (a PIL image or an (H, W, 3) uint8 array), got an "
                             f"array of shape {x.shape}; for a grey image use np.stack([a] * 3, -1)")
        x = torch.from_numpy(x)
        x = x.permute(2, 0, 1)[None].float().div(255).to(next(self.parameters()).device)
        was_training = self.training
        self.eval()
        depth = self(x)["depth"][0, 0].float().cpu().numpy()
        self.train(was_training)
        return depth


class DinoFeatures(nn.Module):
    """Frozen pretrained DINOv2 giving the last-layer patch tokens of the day image (semantic loss)."""

    def __init__(self, encoder="base", weights=None, net_size=(518, 784)):
        """weights: hub id or folder (default: the official DINOv2 of `encoder`); 'none': random (tests, benchmarks)."""
        from transformers import Dinov2Model
        super().__init__()
        self.net_size = tuple(net_size) if net_size else None
        if weights == "none" or (weights is None and encoder == "tiny"):
            self.dino = Dinov2Model(dinov2_config(encoder))  # random, but of the student's width
        else:
            self.dino = from_pretrained_or_explain(Dinov2Model.from_pretrained, weights or ENCODERS[encoder]["hub"],
                                                   "--w-sem 0 (no semantic loss)")
        self.requires_grad_(False).eval()

    def train(self, mode=True):
        return super().train(False)  # frozen: dropout and friends stay off

    @torch.no_grad()
    def forward(self, images):
        """(B,3,H,W) in [0,1] -> (B,N,C) layer-normed last-layer patch tokens (no CLS)."""
        return self.dino(pixel_values=to_network_input(images, self.net_size)).last_hidden_state[:, 1:]


AUDIT_FAR_SHARE = 0.05  # the share of the disparity range below which a pixel counts as sky or far range


def calibration_summary(depths, frames):
    """Median, near (10th percentile) and far (90th) of calibrated depths, and the line the trainer prints."""
    q = torch.quantile(depths.double().flatten(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return dict(near=q[0], median=q[1], far=q[2], frames=frames,
                line=f"median {q[1]:.2f} m, near (10th percentile) {q[0]:.2f} m, far (90th) {q[2]:.2f} m")


def rotation_from_axis_angle(axis_angle):
    """Rodrigues' formula: (B,3) axis-angle -> (B,3,3) rotation matrices."""
    angle = axis_angle.norm(dim=1, keepdim=True).clamp_min(1e-8)
    k = axis_angle / angle
    zero = torch.zeros_like(k[:, 0])
    kx = torch.stack([zero, -k[:, 2], k[:, 1], k[:, 2], zero, -k[:, 0], -k[:, 1], k[:, 0], zero], 1)
    kx = kx.view(-1, 3, 3)
    eye = torch.eye(3, device=k.device, dtype=k.dtype).expand_as(kx)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    return eye + s * kx + (1 - c) * (kx @ kx)


def rotation_from_euler(angles):
    """(B,3) angles (a, b, c) about x, y, z -> (B,3,3) R = Rx(a) Ry(b) Rz(c), md4all's pose rotation
    (docs/method.md §3): a point is turned about z first, then y, then x."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(angles[:, 0]), torch.zeros_like(angles[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rx @ ry @ rz


ROTATIONS = {"euler": rotation_from_euler, "axis-angle": rotation_from_axis_angle}


def pose_to_matrix(rotation, translation, mode="euler"):
    """(B,3) rotation parameters and (B,3) translation -> (B,4,4) rigid transform [R t; 0 1]; `mode` says how
    the three numbers make R: 'euler' (md4all's Rx Ry Rz) or 'axis-angle' (monodepth2's Rodrigues)."""
    if mode not in ROTATIONS:
        raise ValueError(f"--rotation {mode!r} is unknown; choose one of {sorted(ROTATIONS)}")
    T = torch.eye(4, device=rotation.device, dtype=rotation.dtype).repeat(len(rotation), 1, 1)
    T[:, :3, :3] = ROTATIONS[mode](rotation)
    T[:, :3, 3] = translation
    return T


def invert_transform(T):
    """Inverse of rigid transforms (B,4,4): [R^T, -R^T t; 0 1], exact and float32-safe."""
    R, t = T[:, :3, :3].float(), T[:, :3, 3:].float()
    inv = torch.eye(4, device=T.device, dtype=torch.float32).repeat(len(T), 1, 1)
    inv[:, :3, :3] = R.transpose(1, 2)
    inv[:, :3, 3:] = -R.transpose(1, 2) @ t
    return inv


POSE_ORDERS = ("md4all", "temporal")
POSE_OUTPUT_SCALE = 0.01  # small outputs at start: motion between frames is centimetres to a metre (monodepth2)


def predict_poses(pose_net, target, prev, nxt, order="md4all"):
    """[T_{t->prev}, T_{t->next}] from the pose net, its inputs ordered as `order` says (docs/method.md §3):
    'md4all' feeds (target, source) for both neighbours (md4all's default, the base SSD builds on);
    'temporal' feeds each pair in time order and inverts the previous frame's result (monodepth2), so the
    net always predicts forward motion."""
    if order not in POSE_ORDERS:
        raise ValueError(f"--pose-order {order!r} is unknown; choose one of {POSE_ORDERS}")
    if order == "md4all":
        return [pose_net(target, prev), pose_net(target, nxt)]
    return [invert_transform(pose_net(prev, target)), pose_net(target, nxt)]


def resnet_config(size):
    """ResNet-18 on two stacked RGB frames (6 channels); tiny: a narrow one for tests."""
    from transformers import ResNetConfig
    if size == "tiny":
        return ResNetConfig(num_channels=6, embedding_size=8, hidden_sizes=[8, 16, 16, 32],
                            depths=[1, 1, 1, 1], layer_type="basic")
    return ResNetConfig(num_channels=6, embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                        depths=[2, 2, 2, 2], layer_type="basic")


class PoseNet(nn.Module):
    """md4all / monodepth2 pose network (docs/method.md §2): frames (target, source) -> T_{target->source}."""

    def __init__(self, size="resnet18", init=RESNET18, resnet_config_dict=None, rotation="euler"):
        """rotation: how the first three outputs make the rotation, 'euler' (md4all) or 'axis-angle'
        (monodepth2); see pose_to_matrix."""
        from transformers import ResNetConfig, ResNetModel
        super().__init__()
        if rotation not in ROTATIONS:
            raise ValueError(f"--rotation {rotation!r} is unknown; choose one of {sorted(ROTATIONS)}")
        self.size, self.rotation = size, rotation
        config = ResNetConfig.from_dict(resnet_config_dict) if resnet_config_dict else resnet_config(size)
        self.encoder = ResNetModel(config)
        if init:
            pretrained = from_pretrained_or_explain(ResNetModel.from_pretrained, init, "--pose-init none")
            state = pretrained.state_dict()
            conv = "embedder.embedder.convolution.weight"
            # ImageNet filters see one RGB frame: duplicate them for the pair and halve (monodepth2).
            state[conv] = torch.cat([state[conv], state[conv]], 1) / 2
            self.encoder.load_state_dict(state)
        c = config.hidden_sizes[-1]
        self.decoder = nn.Sequential(nn.Conv2d(c, 256, 1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 6, 1))

    def config_dict(self):
        return dict(size=self.size, resnet_config_dict=self.encoder.config.to_dict(), rotation=self.rotation)

    @torch.no_grad()
    def start_at_motion(self, metres):
        """Set the last bias so a fresh net predicts straight-ahead motion of `metres` from the first frame of
        a pair to the second (T's translation (0, 0, -metres)): where `DepthNet.start_at_depth` starts the
        depth, this starts the motion. From md4all's zero motion a from-scratch pose net can settle on the
        wrong axis (vertical, or backwards) before the depth net has learnt anything."""
        self.decoder[-1].bias[5] = -metres / POSE_OUTPUT_SCALE

    def forward(self, target, source):
        """(B,3,H,W) frames in [0,1] -> (B,4,4) transform of target-camera points into the source camera."""
        x = torch.cat([to_network_input(target, target.shape[-2:]), to_network_input(source, source.shape[-2:])], 1)
        out = POSE_OUTPUT_SCALE * self.decoder(self.encoder(x).last_hidden_state).mean((2, 3))
        return pose_to_matrix(out[:, :3], out[:, 3:], self.rotation)


def save_checkpoint(path, **parts):
    """Write a dict of parts with torch.save, whole or not at all: a temp file `.<name>.tmp<pid>` beside `path`
    (created with the umask's permissions), then renamed over it (data.write_atomic's rule; model.py stands alone)."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    try:
        torch.save(parts, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path_or_dict):
    """A training checkpoint dict from a .pt path (or the dict itself), with errors that name the file."""
    if isinstance(path_or_dict, dict):
        return path_or_dict
    if not os.path.isfile(path_or_dict):
        raise FileNotFoundError(f"checkpoint {path_or_dict} does not exist: pass the .pt file a training "
                                f"script wrote (e.g. runs/teacher/ckpt.pt)")
    try:
        ckpt = torch.load(path_or_dict, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip, a file of another kind: say which file it was
        raise ValueError(f"checkpoint {path_or_dict} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"it is truncated or not a .pt file a training script wrote") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path_or_dict} holds a {type(ckpt).__name__}, not a training checkpoint")
    return ckpt


def checkpoint_kind(ckpt):
    """'student', 'teacher (self-supervised)' or 'teacher (lidar)' from a checkpoint's saved arguments."""
    args = ckpt.get("args") or {}
    if "teacher" in args:
        return "student"
    return f"teacher ({'lidar' if args.get('supervision') == 'lidar' else 'self-supervised'})"


def load_depth_net(path_or_dict, map_location="cpu"):
    """Rebuild a DepthNet from a checkpoint file (or dict), or from a folder written by `export_pretrained`;
    errors name the file and say what it is not."""
    name = path_or_dict if isinstance(path_or_dict, str) else "the checkpoint"
    if isinstance(path_or_dict, str) and os.path.isdir(path_or_dict):
        from transformers import DepthAnythingForDepthEstimation
        try:
            with open(os.path.join(path_or_dict, "ssd_config.json")) as f:
                cfg = json.load(f)
            net = DepthNet(cfg["encoder"], init="none", min_depth=cfg["min_depth"], max_depth=cfg["max_depth"],
                           net_size=cfg["net_size"], head_log=cfg.get("head_log"))
            net.model = DepthAnythingForDepthEstimation.from_pretrained(path_or_dict)
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{name}: not a folder written by export_pretrained ({e})") from e
        return net.to(map_location)
    ckpt = read_checkpoint(path_or_dict)
    if "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{name} has no 'model' / 'config' entries: it was not written by this project's training "
                         f"scripts")
    net = DepthNet(init="none", **ckpt["config"])
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{name}: its weights do not fit its config ({str(e).splitlines()[0]})") from e
    return net.to(map_location)


def load_pose_net(path_or_dict, map_location="cpu"):
    """Rebuild the PoseNet stored in a training checkpoint."""
    ckpt = read_checkpoint(path_or_dict)
    if ckpt.get("pose") is None:
        name = path_or_dict if isinstance(path_or_dict, str) else "the checkpoint"
        raise ValueError(f"{name} holds no pose network: it is a {checkpoint_kind(ckpt)} checkpoint, and the teacher "
                       f"loss needs a self-supervised teacher's (train_teacher.py --supervision self); with a "
                       f"LiDAR teacher use --teacher-mask none")
    # checkpoints from before --rotation stored no rotation: their pose nets learnt axis-angle
    pose = PoseNet(init=None, **{"rotation": "axis-angle", **ckpt["pose_config"]})
    pose.load_state_dict(ckpt["pose"])
    return pose.to(map_location)


class DepthGraph(nn.Module):
    """What export_onnx writes: images (B,3,H,W) in [0,1] -> depth (B,1,H,W) in metres, DepthNet(images)["depth"]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net(images)["depth"]


def export_onnx(net, path, opset=17):
    """Write the depth net as an ONNX graph: input `images` (B,3,H,W) in [0,1], any batch, height and width;
    output `depth` (B,1,H,W) in metres, as `net(images)["depth"]` (resize to the net size and back included).

    Needs the `onnx` package (pip install onnx onnxruntime). The TorchScript exporter records one trace, so the
    example frame is chosen to take every size-dependent branch the graph must keep: one pixel larger than the
    network size, so that the depth is resized back to the input size (a no-op where they agree), and a patch
    grid odd in both directions, where DPT's fusion resizes each coarser map to the finer one (a no-op on even
    grids)."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it to write the file)
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    import warnings
    h, w = net.net_size or (7 * 14, 11 * 14)
    example = torch.rand(1, 3, h + 1, w + 1, device=next(net.parameters()).device)
    was_training = net.training
    net.eval()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with warnings.catch_warnings():  # the tracer's warnings name Python branches it fixes; see the docstring
            warnings.simplefilter("ignore")
            torch.onnx.export(DepthGraph(net), (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["depth"],
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                            "depth": {0: "batch", 2: "height", 3: "width"}})
        os.replace(tmp, path)
    finally:
        net.train(was_training)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_pretrained(net, folder):
    """Write `net` as a transformers folder: `DepthAnythingForDepthEstimation.from_pretrained(folder)`
    gives the sigmoid disparity s as `predicted_depth`; `load_depth_net(folder)` gives metres. A net started
    from Depth-Anything carries a log-disparity map before its sigmoid (`head_log`, DepthNet.calibrate_head)
    that transformers' model does not apply: there only `load_depth_net(folder)` (or the ONNX export) gives
    its depth; ssd_config.json holds the map."""
    net.model.save_pretrained(folder)
    cfg = {k: v for k, v in net.config_dict().items() if k != "hf_config"}
    with open(os.path.join(folder, "ssd_config.json"), "w") as f:
        json.dump(dict(cfg, disparity_to_depth="depth = 1 / (1/max_depth + (1/min_depth - 1/max_depth) * s)"),
                  f, indent=2)
    # What pipeline("depth-estimation", folder) needs to prepare an image the way this net saw it.
    h, w = net.net_size or (518, 784)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(dict(image_processor_type="DPTImageProcessor", do_resize=True, size={"height": h, "width": w},
                       keep_aspect_ratio=False, ensure_multiple_of=14, resample=3, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGENET_MEAN),
                       image_std=list(IMAGENET_STD), do_pad=False), f, indent=2)
