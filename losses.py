"""The losses of SSD (docs/method.md §3), as small functions that read like the formulas.

Self-supervised teacher (md4all / monodepth2): photometric error, reprojection with auto-masking,
edge-aware smoothness, velocity supervision. Supervised teacher: SILog against LiDAR. Student:
distillation, the teacher-reliability mask, the semantic loss. The trainers compose and weight them.
Torch only: this file imports nothing of the project.

Conventions used by every geometric function here:
- Pixels: data.py treats pixel (i, j) as covering [i, i+1) x [j, j+1) (what resizing assumes), so
  intrinsics scale by W'/W, a flip maps cx to W - cx and a projected point at u lands on floor(u).
  The warp, like md4all's and monodepth2's, back-projects integer pixel coordinates, i.e. reads K
  with pixel centres at integers: half a pixel from data.py's reading, the same as moving (cx, cy) by
  +0.5 px (tests/test_losses.py shows both). We keep md4all's warp exactly (the protocol's reference;
  a corner-exact warp trained worse in the learning check, docs/results.md).
  K (B,3,3) is the intrinsics at the resolution of the image it is used with.
- T (B,4,4) takes points in the *target* camera frame to the *source* camera frame (T_{t->s}), as
  PoseNet returns it; warping samples the source where each target pixel lands.
- grid_sample uses align_corners=False with the matching normalisation (2u + 1) / W - 1, so an
  integer coordinate maps exactly onto the centre of the sampled pixel at any resolution.
- Images (B,3,H,W) in [0, 1]; depth and disparity (B,1,H,W); per-pixel maps come back (B,1,H,W).

Typical self-supervised step (train_teacher.py):

    loss_map, mask, _ = reprojection_loss(color, [prev, next], depth, [T_prev, T_next], K)
    loss = loss_map.mean() + 1e-3 * smoothness_loss(disp, color) \\
        + 0.02 * velocity_loss(T_prev[:, :3, 3], dist_prev)
"""
import torch
import torch.nn.functional as F

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
TEACHER_MASKS = ("reliable", "printed", "none")


def _at_least_float32(*tensors):
    """The tensors in float32 (float64 stays float64): the loss maths must not run in bf16/fp16."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


def ssim(x, y):
    """Per-pixel SSIM map (B,C,H,W) in [-1, 1] over 3x3 windows with reflection padding (docs/method.md §3)."""
    # Variances are differences of squares next to C1 = 1e-4: bf16 would turn them into noise.
    x, y = _at_least_float32(x, y)
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x ** 2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y ** 2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return num / den


def photometric_error(pred, target):
    """pe = 0.85 (1 - SSIM) / 2 + 0.15 |I - I'|, averaged over channels -> (B,1,H,W) (docs/method.md §3)."""
    if pred.shape != target.shape:
        raise ValueError(f"losses.photometric_error: image shapes differ, {tuple(pred.shape)} "
                         f"vs {tuple(target.shape)}; resize both to the loss resolution first")
    pred, target = _at_least_float32(pred, target)
    dssim = ((1 - ssim(pred, target)) / 2).clamp(0, 1)
    l1 = (pred - target).abs()
    return (0.85 * dssim + 0.15 * l1).mean(1, keepdim=True)


def pixel_grid(batch, height, width, device=None, dtype=torch.float32):
    """Homogeneous pixel coordinates (B,3,H*W): rows u (column), v (row), 1; centre of (0,0) at 0 (md4all)."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing="ij")
    pix = torch.stack([u.flatten(), v.flatten(), torch.ones_like(u).flatten()])
    return pix.unsqueeze(0).expand(batch, -1, -1)


def backproject(depth, inv_K):
    """Camera-frame points X = D(p) K^-1 p of every pixel p: (B,1,H,W) depth -> (B,3,H,W) (docs/method.md §3)."""
    b, _, h, w = depth.shape
    rays = inv_K @ pixel_grid(b, h, w, depth.device, depth.dtype)
    return (rays * depth.reshape(b, 1, h * w)).reshape(b, 3, h, w)


def project(points, K, T=None):
    """Pixel coordinates (B,H,W,2) as (u, v) of K [R|t] X for camera points X (B,3,H,W) (docs/method.md §3)."""
    b, _, h, w = points.shape
    pts = points.reshape(b, 3, h * w)
    if T is not None:
        pts = T[:, :3, :3] @ pts + T[:, :3, 3:]
    cam = K @ pts
    # Points behind or on the camera plane land far outside the image instead of dividing by ~0.
    uv = cam[:, :2] / cam[:, 2:3].clamp(min=1e-6)
    return uv.permute(0, 2, 1).reshape(b, h, w, 2)


def sampling_grid(uv, height, width):
    """grid_sample coordinates in [-1, 1] (align_corners=False) for pixel coordinates (B,H,W,2)."""
    size = torch.tensor([width, height], device=uv.device, dtype=uv.dtype)
    # A NaN coordinate (a diverged depth or pose) crashes grid_sample's CPU backward; send such
    # points outside the image instead, and let the NaN loss stop the run (train_teacher.py).
    return torch.nan_to_num((2 * uv + 1) / size - 1, nan=2.0, posinf=2.0, neginf=-2.0)


def warp(source, depth, T, K):
    """Source image resampled into the target view: I_{s->t}(p) = I_s(K T_{t->s} D(p) K^-1 p) (docs/method.md §3);
    points leaving the image take the nearest edge pixel (border padding)."""
    if K.dim() == 2:
        K = K.expand(source.shape[0], 3, 3)
    h, w = source.shape[-2:]
    if depth.shape[-2:] != (h, w):
        raise ValueError(f"losses.warp: depth is {tuple(depth.shape[-2:])} but the image is {(h, w)}; "
                         "upsample the depth to the loss resolution (and scale K to it)")
    # Under bf16 autocast the matmuls would place pixels several columns off at 576 px wide.
    with torch.autocast(source.device.type, enabled=False):
        source, depth, T, K = _at_least_float32(source, depth, T, K)
        uv = project(backproject(depth, torch.linalg.inv(K)), K, T)
        return F.grid_sample(source, sampling_grid(uv, h, w), mode="bilinear",
                             padding_mode="border", align_corners=False)


def min_reprojection(target, warped_sources, sources, automask=True):
    """Per-pixel min over sources of pe, auto-masked by the un-warped sources' pe (docs/method.md §3).

    Returns (loss_map (B,1,H,W), mask (B,1,H,W) bool: True where a warped source won). Ties go
    to the identity error (the strict inequality of monodepth2's mask), which replaces its random
    tie-break noise: static pixels are masked deterministically, so runs are reproducible.
    """
    warped = torch.cat([photometric_error(w, target) for w in warped_sources], 1).min(1, keepdim=True)[0]
    if not automask:
        return warped, torch.ones_like(warped, dtype=torch.bool)
    identity = torch.cat([photometric_error(s, target) for s in sources], 1).min(1, keepdim=True)[0]
    mask = warped < identity
    return torch.where(mask, warped, identity), mask


def reprojection_loss(target, sources, depth, poses, K, automask=True):
    """Warp every source into the target with its T_{t->s} and take the auto-masked min (docs/method.md §3).

    Returns (loss_map (B,1,H,W), mask (B,1,H,W) bool, list of warped sources).
    """
    if len(sources) != len(poses):
        raise ValueError(f"losses.reprojection_loss: {len(sources)} source frames but {len(poses)} "
                         "poses; give one T_{t->s} per source frame")
    warped = [warp(s, depth, T, K) for s, T in zip(sources, poses)]
    loss_map, mask = min_reprojection(target, warped, sources, automask)
    return loss_map, mask, warped


def smoothness_loss(disp, image):
    """Edge-aware smoothness of mean-normalised disparity, |grad d*| e^{-|grad I|} (docs/method.md §3).

    md4all feeds it the scaled disparity 1/depth (DepthNet's `scaled_disp`), not the sigmoid output.
    """
    # float32: bf16 would give most neighbouring pixels the same disparity, and a zero or noisy gradient.
    disp, image = _at_least_float32(disp, image)
    d = disp / (disp.mean((2, 3), keepdim=True) + 1e-7)
    grad_d_x = (d[..., :, :-1] - d[..., :, 1:]).abs()
    grad_d_y = (d[..., :-1, :] - d[..., 1:, :]).abs()
    grad_i_x = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    grad_i_y = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (grad_d_x * torch.exp(-grad_i_x)).mean() + (grad_d_y * torch.exp(-grad_i_y)).mean()


def velocity_loss(t_pred, dist_gt):
    """Velocity supervision mean |‖t_pred‖ - ‖t_gt‖|: t_pred (B,3) metres, dist_gt (B,) (docs/method.md §3)."""
    dist_gt = torch.as_tensor(dist_gt, dtype=t_pred.dtype, device=t_pred.device).reshape(-1)
    return (t_pred.norm(dim=-1).reshape(-1) - dist_gt).abs().mean()


def silog_loss(pred, gt, min_depth=0.1, max_depth=80.0, variance_focus=0.85):
    """SILog 10 sqrt(mean d^2 - λ (mean d)^2), d = log pred - log gt on min < gt < max (docs/method.md §3).

    The BTS form: scaled by 10, and pooled over every valid pixel of the batch, so an image
    without LiDAR simply contributes nothing; a batch with no valid pixel gives 0 (with a graph).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"losses.silog_loss: prediction {tuple(pred.shape)} and ground truth "
                         f"{tuple(gt.shape)} differ; resize the prediction to the LiDAR map")
    pred, gt = _at_least_float32(pred, gt)
    valid = (gt > min_depth) & (gt < max_depth)
    if not valid.any():
        return pred.sum() * 0
    d = torch.log(pred[valid]) - torch.log(gt[valid])
    # The clamp keeps sqrt (and its gradient) finite when the error is exactly scale-invariant.
    return 10 * torch.sqrt(((d ** 2).mean() - variance_focus * d.mean() ** 2).clamp(min=1e-12))


def distillation(student_scaled_disp, teacher_scaled_disp):
    """Per-pixel distillation |s_S - s_T| / s_S on scaled disparities, teacher detached (docs/method.md §3)."""
    if student_scaled_disp.shape != teacher_scaled_disp.shape:
        raise ValueError(f"losses.distillation: student {tuple(student_scaled_disp.shape)} and teacher "
                         f"{tuple(teacher_scaled_disp.shape)} disparities differ in shape")
    s_t = teacher_scaled_disp.detach()
    return (student_scaled_disp - s_t).abs() / student_scaled_disp


def teacher_loss(distill_map, pe_teacher, pe_student, mask="reliable"):
    """Teacher loss mean(M * distillation), M = [pe_T < pe_S] where the teacher is reliable (docs/method.md §3).

    mask 'printed' uses the paper's printed inequality [pe_T > pe_S]; 'none' uses M = 1.
    M is computed without gradient: it selects pixels, it is not a target.
    """
    if mask not in TEACHER_MASKS:
        raise ValueError(f"losses.teacher_loss: unknown mask {mask!r}; "
                         f"--teacher-mask takes one of {', '.join(TEACHER_MASKS)}")
    with torch.no_grad():
        if mask == "reliable":
            m = pe_teacher < pe_student
        elif mask == "printed":
            m = pe_teacher > pe_student
        else:
            m = torch.ones_like(distill_map, dtype=torch.bool)
    return (m.to(distill_map.dtype) * distill_map).mean()


def semantic_loss(f_student, f_dino):
    """Semantic loss 1 - mean over patch tokens of cos(F_student, F_dino), DINOv2 detached (docs/method.md §3)."""
    if f_student.shape != f_dino.shape:
        raise ValueError(f"losses.semantic_loss: student tokens {tuple(f_student.shape)} and DINOv2 "
                         f"tokens {tuple(f_dino.shape)} differ; use an encoder of the same size "
                         "on images of the same size")
    return 1 - F.cosine_similarity(f_student, f_dino.detach(), dim=-1).mean()
