"""Train the SSD teacher on day-clear frames (docs/method.md §2-4): self-supervised (the paper) or on LiDAR.

    # CPU smoke run on the synthetic world (python tools/synthetic.py --out world)
    python train_teacher.py --tiny --data-root world --size 90x160 --steps 20 --out runs/teacher
    # one GPU, the paper's setting (20 epochs, batch 4, ViT-B, 518x784 network input)
    python train_teacher.py --data-root /data/nuscenes --out runs/teacher
    # DDP on 8 GPUs (or several machines: add --nnodes/--node_rank/--master_addr)
    torchrun --standalone --nproc_per_node=8 --log-dir runs/torchrun_logs train_teacher.py --data-root /data/nuscenes --out runs/teacher
    # continue after an interruption, exactly where it stopped
    python train_teacher.py ... --out runs/teacher --resume

Writes `<out>/ckpt.pt` (model, pose net, optimiser, scheduler, step, config; every --ckpt-every steps
and at the end), `<out>/best.pt` (lowest night abs_rel on the validation split), `<out>/log.jsonl`.
The loop, the shared flags and resume live in training.py; this file is the teacher's objective.
"""

import os

import numpy as np
import torch
import torch.nn as nn

import data
from losses import reprojection_loss, silog_loss, smoothness_loss, velocity_loss
from model import POSE_ORDERS, ROTATIONS, PoseNet, predict_poses, read_checkpoint
from training import (add_common_args, build_depth_net, check_data, depth_param_groups, make_dataset, parse_args,
                      train)


class SelfSupervisedLoss(nn.Module):
    """md4all teacher objective (docs/method.md §3): min reprojection with auto-masking + smoothness + velocity.

    pose_order 'md4all' feeds the pose net (target, source) for both neighbours (md4all's default, the base
    SSD builds on); 'temporal' feeds each pair in time order and inverts the previous frame's result
    (monodepth2), so the net always predicts forward motion.
    """

    def __init__(self, net, pose, w_smooth=1e-3, w_velocity=0.02, pose_order="md4all"):
        super().__init__()
        if pose_order not in POSE_ORDERS:
            raise ValueError(f"--pose-order {pose_order!r} is unknown; choose one of {POSE_ORDERS}")
        self.net, self.pose, self.w_smooth, self.w_velocity = net, pose, w_smooth, w_velocity
        self.pose_order = pose_order

    def poses(self, batch):
        """T_{t->s} for the previous and the next frame, from the colour-jittered frames (md4all)."""
        target, prev, nxt = (batch.get(k + "_aug", batch[k]) for k in ("color", "prev", "next"))
        return predict_poses(self.pose, target, prev, nxt, self.pose_order)

    def forward(self, batch):
        color, sources = batch["color"], [batch["prev"], batch["next"]]
        out = self.net(batch["input"], out_size=color.shape[-2:])
        poses = self.poses(batch)
        reprojection, _, _ = reprojection_loss(color, sources, out["depth"], poses, batch["K"])
        smooth = smoothness_loss(out["scaled_disp"], color)
        velocity = (velocity_loss(poses[0][:, :3, 3], batch["dist_prev"])
                    + velocity_loss(poses[1][:, :3, 3], batch["dist_next"])) / 2
        loss = reprojection.mean() + self.w_smooth * smooth + self.w_velocity * velocity
        return loss, {"reprojection": reprojection.mean(), "smoothness": smooth, "velocity": velocity}


class LidarLoss(nn.Module):
    """Supervised teacher objective (docs/method.md §3): SILog against LiDAR projected at network resolution."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, batch):
        out = self.net(batch["input"], out_size=batch["lidar"].shape[-2:])
        loss = silog_loss(out["depth"], batch["lidar"], self.net.min_depth, self.net.max_depth)
        return loss, {"silog": loss}


CALIBRATION_FRAMES = 24


def calibrate_pretrained_head(net, args, frames=CALIBRATION_FRAMES):
    """Depth-Anything-V2's relative head under our sigmoid (DepthNet.calibrate_head): fitted on `frames`
    un-augmented training frames spread evenly over the split (so over its scenes; the same on every rank),
    to start at --init-depth (default 10 m). A resumed run takes the map its checkpoint holds."""
    if args.init != "depth-anything-v2-small":
        return
    if args.resume:
        net.head_log = read_checkpoint(os.path.join(args.out, "ckpt.pt"))["config"].get("head_log")
        return
    plain = make_dataset(args, "train")  # no jitter, no flip
    picks = np.linspace(0, len(plain) - 1, min(frames, len(plain))).round().astype(int)
    batch = torch.utils.data.default_collate([plain[int(i)] for i in picks])
    images = (plain.augment_batch(batch) if plain.device_augment else batch)["input"]
    summary = net.calibrate_head(images, args.init_depth or 10.0, args.batch_size)
    print(f"Depth-Anything head calibrated on {len(picks)} un-augmented training frames across the split: "
          f"{summary['line']} (disparity offset {net.head_log['offset']:.4g}, shift {net.head_log['shift']:.4g})")


def resumed_rotation(args):
    """A resumed run keeps the rotation its pose net learnt (runs from before --rotation learnt axis-angle);
    a different --rotation on the command line is refused."""
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    if not (args.resume and os.path.isfile(ckpt_path)):
        return
    saved = (read_checkpoint(ckpt_path).get("pose_config") or {}).get("rotation", "axis-angle")
    if "rotation" in args.given and args.rotation != saved:
        raise ValueError(f"--rotation {args.rotation}: {ckpt_path} was trained with --rotation {saved}; resume "
                         f"with --rotation {saved} or start another --out")
    args.rotation = saved


def main(argv=None):
    p = add_common_args(data.ArgumentParser(description=__doc__))
    p.add_argument("--supervision", default="self", choices=["self", "lidar"],
                   help="self: photometric + smoothness + velocity (the paper); lidar: SILog on projected LiDAR")
    p.add_argument("--pose-init", default="microsoft/resnet-18", help="hub id / folder, or 'none'")
    p.add_argument("--pose-order", default="md4all", choices=POSE_ORDERS,
                   help="md4all: (target, source) for both neighbours (md4all's default); temporal: pairs in time "
                        "order, the previous one inverted (monodepth2)")
    p.add_argument("--rotation", default="euler", choices=sorted(ROTATIONS),
                   help="how the pose net's three rotation outputs make a rotation: euler (md4all: Rx Ry Rz) or "
                        "axis-angle (monodepth2)")
    p.add_argument("--lr-pose", type=float, default=1e-4)
    p.add_argument("--init-motion", type=float, default=None,
                   help="self, with --pose-order temporal: start the pose net at straight-ahead motion of this many "
                        "metres per frame pair instead of md4all's zero motion (helps from-scratch nets)")
    p.add_argument("--w-smooth", type=float, default=1e-3)
    p.add_argument("--w-velocity", type=float, default=0.02)
    args = parse_args(p, argv)
    if args.init_motion and (args.supervision != "self" or args.pose_order != "temporal"):
        p.error("--init-motion starts the pose net at forward motion: it needs --supervision self and --pose-order "
                "temporal (in md4all's order the previous pair moves backwards, the next one forwards)")
    torch.manual_seed(args.seed)  # the same initial weights on every rank and every run
    self_supervised = args.supervision == "self"
    augment = dict(color_jitter=not args.no_color_jitter, exact_jitter=not args.fast_jitter, flip=not args.no_flip)
    dataset = make_dataset(args, "train", frames=(-1, 0, 1) if self_supervised else (0,),
                           with_lidar=not self_supervised, **augment)
    val_dataset = None if args.no_val else make_dataset(args, "val")
    check_data(args, dataset, val_dataset)
    net = build_depth_net(args)
    calibrate_pretrained_head(net, args)
    if self_supervised:
        resumed_rotation(args)
        pose_init = None if args.tiny or args.pose_init == "none" else args.pose_init
        pose = PoseNet("tiny" if args.tiny else "resnet18", init=pose_init, rotation=args.rotation)
        if args.init_motion:
            pose.start_at_motion(args.init_motion)
        loss_module = SelfSupervisedLoss(net, pose, args.w_smooth, args.w_velocity, args.pose_order)
        groups = depth_param_groups(net, args.lr_encoder, args.lr_decoder) + [
            dict(name="lr_pose", params=list(pose.parameters()), lr=args.lr_pose)]
        modules, extra = {"model": net, "pose": pose}, {"pose_config": pose.config_dict()}
    else:
        loss_module = LidarLoss(net)
        groups = depth_param_groups(net, args.lr_encoder, args.lr_decoder)
        modules, extra = {"model": net}, {"pose": None, "pose_config": None}
    train(args, loss_module, groups, modules, dict(config=net.config_dict(), **extra), dataset, val_dataset,
          kind="teacher")


if __name__ == "__main__":
    data.run_cli(main, "train_teacher.py")
