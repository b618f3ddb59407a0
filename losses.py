"""The losses of SSD (docs/method.md §3), as small functions that read like the formulas.

Self-supervised teacher (md4all / monodepth2): photometric error, reprojection with auto-masking,
edge-aware smoothness, velocity supervision. Supervised teacher: SILog against LiDAR. Student:
distillation, the teacher-reliability mask, the semantic loss. The trainers compose and weight them.
Last, the evaluation metrics (docs/method.md §5): md4all's depth errors with its validity mask and
median scaling, the flip post-processing and single upsampling of a prediction, and the per-condition
averages that evaluate.py reports and the trainers validate with; and GDT's geometry agreement
(docs/method.md §1), the metric by which gdt.py audits a translation's depth against its day frame's.

Conventions used by every geometric function here:
- Pixels: data.py treats pixel (i, j) as covering [i, i+1) x [j, j+1) (what resizing assumes), so
  intrinsics scale by W'/W, a flip maps cx to W - cx and a projected point at u lands on floor(u).
  The warp, like md4all's and monodepth2's, back-projects integer pixel coordinates, i.e. reads K
  with pixel centres at integers: half a pixel from data.py's reading, the same as moving (cx, cy) by
  +0.5 px (tests/test_losses.py shows both). We keep md4all's warp exactly (the protocol's reference).
  A corner-exact warp (centres at i + 0.5, the same K) was tried: on the learning check's tiny nets
  the self-supervised teacher then collapsed to a constant depth (seed 0, 900 steps) where md4all's
  warp learns on both seeds, so the half pixel is not neutral there (README, Measured).
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
import numpy as np
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


# Evaluation metrics (docs/method.md §5): md4all's evaluator rules, here because evaluate.py reports them and
# the trainers validate with them (as monodepth2 keeps compute_depth_errors beside its losses in layers.py).
METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def flip_post_process(disp, disp_of_flipped):
    """monodepth2's edge-ramp blend of a disparity (B,1,H,W) with the prediction of the mirrored image
    (docs/method.md §5): the un-flipped mirror prediction alone near the left border, the plain one
    alone near the right, their mean in between; mask = 1 - clamp(20 (x - 0.05), 0, 1), x in [0, 1]."""
    hat = torch.flip(disp_of_flipped, dims=[-1])
    x = torch.linspace(0.0, 1.0, disp.shape[-1], dtype=disp.dtype, device=disp.device)
    mask = 1.0 - torch.clamp(20.0 * (x - 0.05), 0.0, 1.0)
    mask_hat = torch.flip(mask, dims=[-1])
    return mask_hat * disp + mask * hat + (1.0 - mask - mask_hat) * 0.5 * (disp + hat)


def upsample_depth(depth, size):
    """md4all's single interpolation of a (B,1,h,w) depth to the ground-truth size: bilinear, align_corners=True."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth, size=tuple(size), mode="bilinear", align_corners=True)


def _tensor(x):
    """A squeezed CPU tensor of x, keeping its dtype (numpy float64 stays float64, float32 stays float32)."""
    x = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x.squeeze()


def compute_depth_metrics(gt, pred, min_depth=0.1, max_depth=80.0, median_scaling=False):
    """Depth errors of one image, md4all's rules (docs/method.md §5). Returns None without valid pixels.

    valid = min < gt < max in gt's own dtype (a float32 gt of float32(0.1) is not valid); the optional
    median scaling uses torch's median (the lower middle value on an even count); then pred is
    clamped to [min, max]. The metrics are computed in the inputs' dtype, as md4all does."""
    gt, pred = _tensor(gt), _tensor(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {tuple(gt.shape)} and prediction {tuple(pred.shape)} differ in size: upsample "
                         f"the prediction to the ground-truth resolution first")
    valid = (gt > min_depth) & (gt < max_depth)  # a Python float does not promote the tensor's dtype
    if not valid.any():
        return None
    dtype = torch.promote_types(gt.dtype, pred.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float64
    gt, pred = gt[valid].to(dtype), pred[valid].to(dtype)
    if median_scaling:
        pred = pred * torch.median(gt) / torch.median(pred)
    pred = pred.clamp(min_depth, max_depth)
    ratio, diff = torch.maximum(gt / pred, pred / gt), gt - pred
    return {
        "abs_rel": float(torch.mean(diff.abs() / gt)),
        "sq_rel": float(torch.mean(diff ** 2 / gt)),
        "rmse": float(torch.sqrt(torch.mean(diff ** 2))),
        "rmse_log": float(torch.sqrt(torch.mean((torch.log(gt) - torch.log(pred)) ** 2))),
        "a1": float((ratio < 1.25).to(dtype).mean()),
        "a2": float((ratio < 1.25 ** 2).to(dtype).mean()),
        "a3": float((ratio < 1.25 ** 3).to(dtype).mean()),
    }


def average_metrics(per_image):
    """Mean of per-image metric dicts (images without valid pixels skipped), with the image count."""
    per_image = [m for m in per_image if m is not None]
    if not per_image:
        return {"count": 0, **{k: float("nan") for k in METRIC_NAMES}}
    return {"count": len(per_image), **{k: float(np.mean([m[k] for m in per_image])) for k in METRIC_NAMES}}


def condition_group(cond):
    """Reporting group of a frame's condition (docs/method.md §5): night-clear and night-rain count as night."""
    return "night" if cond.startswith("night") else cond


def metric_totals(per_image, conds):
    """Sums and counts of per-image metrics per reporting group and 'all' (reducible across ranks)."""
    totals = {}
    for metrics, cond in zip(per_image, conds):
        if metrics is None:
            continue
        for group in {condition_group(cond), "all"}:  # a set: a folder's frames are in 'all' only, once
            t = totals.setdefault(group, dict.fromkeys(METRIC_NAMES, 0.0) | {"count": 0})
            t["count"] += 1
            for k in METRIC_NAMES:
                t[k] += float(metrics[k])
    return totals


def summarize(totals):
    """Means per group from `metric_totals` sums."""
    return {g: {"count": t["count"], **{k: t[k] / t["count"] for k in METRIC_NAMES}} for g, t in totals.items()}


def score_loader(loader, predict, min_depth=0.1, max_depth=80.0, median_scaling=False, on_image=None,
                 progress=False):
    """Score `predict(batch)` against each item's `gt`: (totals per group, one row per image).

    When predict returns a dict {mode: predictions} (model.net_predictor(..., by_mode=True)), totals are
    {mode: totals per group} and each row holds {mode: metrics}. `on_image(batch, i, pred_i, row)`
    sees every image (pred_i: a tensor, or a dict like the predictions)."""
    from tqdm import tqdm
    rows, per_mode = [], None
    for batch in tqdm(loader, desc="evaluate", disable=not progress, dynamic_ncols=True):
        if "gt" not in batch:
            raise ValueError("items carry no ground truth `gt`: a folder needs a .npy depth map next to each image")
        preds = predict(batch)
        per_mode = isinstance(preds, dict)
        preds = preds if per_mode else {"plain": preds}
        for i in range(len(batch["path"])):
            row = {"path": batch["path"][i], "cond": batch["cond"][i] if "cond" in batch else "all"}
            for mode, pred in preds.items():
                row[mode] = compute_depth_metrics(batch["gt"][i, 0], pred[i], min_depth, max_depth, median_scaling)
            if not per_mode:
                row = {"path": row["path"], "cond": row["cond"], **(row["plain"] or {})}
            rows.append(row)
            if on_image:
                on_image(batch, i, {mode: p[i] for mode, p in preds.items()} if per_mode else preds["plain"][i], row)
    conds = [r["cond"] for r in rows]
    if not per_mode:
        return metric_totals([r if "abs_rel" in r else None for r in rows], conds), rows
    modes = [m for m in rows[0] if m not in ("path", "cond")] if rows else []
    return {mode: metric_totals([r[mode] for r in rows], conds) for mode in modes}, rows


# GDT's geometry audit (docs/method.md §1): how well a translation keeps its day frame's depth (numpy maps).
def align_scale_shift(pred, target):
    """Closed-form least-squares scale s >= 0 and shift t of pred onto target (docs/method.md §1):
    s = cov(pred, target) / var(pred), t = mean(target) - s mean(pred). A negative scale would swap
    near and far, so it is held at 0 (the best fit is then the constant mean). Never
    torch.linalg.lstsq (its backward builds N x N matrices)."""
    pm, tm = pred.mean(), target.mean()
    s = max(((pred - pm) * (target - tm)).mean() / max(((pred - pm) ** 2).mean(), 1e-12), 0.0)
    return s * pred + (tm - s * pm)


def geometry_agreement(pred, control, depth_range=80.0):
    """GDT's geometry audit of one translation (docs/method.md §1): does it keep the day frame's depth?

    pred: the translation's relative inverse depth (H, W) from the depth model that made the control
    map (H, W[, 3]), near = bright in [0, 1]. pred is aligned to the control by least-squares scale
    and shift in INVERSE depth: both are disparity known up to a scale and a shift, an affine map
    there (not in depth, where a fit would follow the far pixels). Both are then read as depth over
    depth_range (control 1 = depth 1, 0 = depth_range: md4all's 80 m cap) and compared as a
    prediction against ground truth: abs_rel, and delta1 = share of pixels within 1.25x (gdt.py's
    --min-agreement metric). The control's own map scores abs_rel 0, delta1 1.
    Returns (metrics, aligned map in control units)."""
    target, pred = (np.asarray(x, dtype=np.float64) for x in (control, pred))
    target, pred = (x[..., 0] if x.ndim == 3 else x for x in (target, pred))
    aligned = np.clip(align_scale_shift(pred, target), 0.0, 1.0)
    d, d_ctrl = (1.0 / (1.0 / depth_range + (1.0 - 1.0 / depth_range) * c) for c in (aligned, target))
    ratio = np.maximum(d / d_ctrl, d_ctrl / d)
    return dict(abs_rel=float(np.mean(np.abs(d - d_ctrl) / d_ctrl)), delta1=float(np.mean(ratio < 1.25))), aligned
