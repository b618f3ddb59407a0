"""losses.py against hand-computed values on tiny tensors (docs/method.md §3)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import (SSIM_C1, TEACHER_MASKS, backproject, distillation, min_reprojection, photometric_error,
                    pixel_grid, project, reprojection_loss, semantic_loss, silog_loss, smoothness_loss,
                    ssim, teacher_loss, velocity_loss, warp)


def intrinsics(fx, h, w, batch=1):
    """Pinhole K with the principal point at the image centre (the warp's pixel centres at integers)."""
    K = torch.tensor([[fx, 0.0, (w - 1) / 2], [0.0, fx, (h - 1) / 2], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    return K.expand(batch, 3, 3).clone()


def translation(tx, ty=0.0, tz=0.0, batch=1):
    T = torch.eye(4, dtype=torch.float64).expand(batch, 4, 4).clone()
    T[:, :3, 3] = torch.tensor([tx, ty, tz], dtype=torch.float64)
    return T


def test_ssim_of_identical_images_is_one_and_their_photometric_error_zero():
    img = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(ssim(img, img), torch.ones_like(img), atol=1e-10)
    pe = photometric_error(img, img)
    assert pe.shape == (2, 1, 6, 7)
    assert torch.allclose(pe, torch.zeros_like(pe), atol=1e-10)


def test_photometric_error_of_constant_images_matches_hand_value():
    a, b = 0.3, 0.7
    x = torch.full((1, 3, 4, 5), a, dtype=torch.float64)
    y = torch.full((1, 3, 4, 5), b, dtype=torch.float64)
    # Constant windows: every variance and covariance is 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    s = (2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1)
    expected = 0.85 * (1 - s) / 2 + 0.15 * abs(a - b)
    assert torch.allclose(ssim(x, y), torch.full_like(x, s), atol=1e-9)
    assert torch.allclose(photometric_error(x, y), torch.full((1, 1, 4, 5), expected, dtype=torch.float64),
                          atol=1e-9)


def ssim_by_hand(x, y):
    """SSIM of two (H, W) arrays written out: 3x3 windows over a reflection-padded border (the edge
    pixel not repeated), population variances, C1 = 0.01^2 and C2 = 0.03^2 (images in [0, 1])."""
    px, py = np.pad(x, 1, mode="reflect"), np.pad(y, 1, mode="reflect")
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            a, b = px[i:i + 3, j:j + 3], py[i:i + 3, j:j + 3]
            mu_a, mu_b = a.mean(), b.mean()
            var_a, var_b, cov = a.var(), b.var(), ((a - mu_a) * (b - mu_b)).mean()
            out[i, j] = ((2 * mu_a * mu_b + 1e-4) * (2 * cov + 9e-4)
                         / ((mu_a ** 2 + mu_b ** 2 + 1e-4) * (var_a + var_b + 9e-4)))
    return out


def test_ssim_and_photometric_error_of_textured_dark_images_match_a_hand_computation():
    # Night-dark images: their means are small enough that C1 shows, and texture makes C2 and the border count.
    rng = np.random.default_rng(16)
    x = 0.12 * rng.random((3, 4, 5))
    y = np.clip(x + 0.04 * rng.standard_normal((3, 4, 5)), 0, 1)
    expected_ssim = np.stack([ssim_by_hand(x[c], y[c]) for c in range(3)])
    got = ssim(torch.tensor(x)[None], torch.tensor(y)[None])[0].numpy()
    np.testing.assert_allclose(got, expected_ssim, rtol=1e-9, atol=1e-12)
    expected_pe = (0.85 * (1 - expected_ssim) / 2 + 0.15 * np.abs(x - y)).mean(0)
    pe = photometric_error(torch.tensor(x)[None], torch.tensor(y)[None])[0, 0].numpy()
    np.testing.assert_allclose(pe, expected_pe, rtol=1e-9, atol=1e-12)


def test_photometric_error_rejects_images_of_different_size():
    with pytest.raises(ValueError, match="shapes differ"):
        photometric_error(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_backproject_then_project_returns_pixel_coordinates():
    h, w = 5, 7
    K = intrinsics(6.0, h, w, batch=2)
    depth = 1 + 9 * torch.rand(2, 1, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    points = backproject(depth, torch.linalg.inv(K))
    assert points.shape == (2, 3, h, w)
    assert torch.allclose(points[:, 2:3], depth)  # camera z is the depth
    uv = project(points, K, translation(0.0, batch=2))
    grid = pixel_grid(2, h, w, dtype=torch.float64)[:, :2].reshape(2, 2, h, w).permute(0, 2, 3, 1)
    assert uv.shape == (2, h, w, 2)
    assert torch.allclose(uv, grid, atol=1e-9)
    assert uv[0, 2, 3].tolist() == pytest.approx([3.0, 2.0])  # (u, v) = (column, row)


def test_warp_with_identity_pose_returns_the_image_for_any_depth():
    h, w = 6, 8
    g = torch.Generator().manual_seed(2)
    img = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
    depth = 0.5 + 20 * torch.rand(2, 1, h, w, generator=g, dtype=torch.float64)
    out = warp(img, depth, translation(0.0, batch=2), intrinsics(5.0, h, w, batch=2))
    assert out.shape == img.shape
    assert torch.allclose(out, img, atol=1e-9)


def test_warp_with_pure_translation_shifts_by_fx_t_over_depth_pixels():
    h, w = 5, 9
    source = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    depth = torch.full((1, 1, h, w), 2.0, dtype=torch.float64)
    # Source camera 0.4 m to the left of the target: X_s = X_t + 0.4, so u_s = u_t + fx*0.4/2 = u_t + 2.
    out = warp(source, depth, translation(0.4), intrinsics(10.0, h, w))
    assert torch.allclose(out[..., :, : w - 2], source[..., :, 2:], atol=1e-9)
    # Rows: a vertical move of 0.2 m at depth 2 shifts by 1 pixel.
    out_v = warp(source, depth, translation(0.0, 0.2), intrinsics(10.0, h, w))
    assert torch.allclose(out_v[..., : h - 1, :], source[..., 1:, :], atol=1e-9)
    # Beyond the right border the sampling clamps to the edge column ('border' padding).
    assert torch.allclose(out[..., :, w - 1], source[..., :, w - 1], atol=1e-9)


def rotation(rx, ry, rz):
    """Rotation matrix Rz Ry Rx (float64)."""
    c, s = [math.cos(a) for a in (rx, ry, rz)], [math.sin(a) for a in (rx, ry, rz)]
    Rx = torch.tensor([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]], dtype=torch.float64)
    Ry = torch.tensor([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]], dtype=torch.float64)
    Rz = torch.tensor([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]], dtype=torch.float64)
    return Rz @ Ry @ Rx


def monodepth2_warp(source, depth, T, K, eps=1e-7):
    """monodepth2's (and md4all's) warp written out: integer pixel coordinates back-projected, projected
    with z + eps, normalised by W - 1 and sampled with align_corners=True and border padding."""
    b, _, h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype), torch.arange(w, dtype=depth.dtype), indexing="ij")
    pix = torch.stack([u.flatten(), v.flatten(), torch.ones(h * w, dtype=depth.dtype)])
    cam = (torch.linalg.inv(K) @ pix) * depth.reshape(b, 1, h * w)
    cam = torch.cat([cam, torch.ones(b, 1, h * w, dtype=depth.dtype)], 1)
    p = (K @ T[:, :3, :]) @ cam
    xy = p[:, :2] / (p[:, 2:3] + eps)
    grid = torch.stack([xy[:, 0] / (w - 1), xy[:, 1] / (h - 1)], -1).reshape(b, h, w, 2)
    return F.grid_sample(source, (grid - 0.5) * 2, padding_mode="border", align_corners=True)


def test_warp_equals_monodepth2s_warp_with_the_same_intrinsics():
    """md4all's warp (monodepth2's layers), border padding included; K read with integer pixel centres."""
    h, w = 7, 11
    g = torch.Generator().manual_seed(13)
    source = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
    depth = 2 + 8 * torch.rand(2, 1, h, w, generator=g, dtype=torch.float64)
    T = translation(0.3, -0.1, 0.4, batch=2)
    T[:, :3, :3] = torch.stack([rotation(0.02, -0.05, 0.01), rotation(-0.03, 0.08, 0.0)])
    K = torch.tensor([[9.0, 0, 5.2], [0, 8.5, 3.9], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    ours = warp(source, depth, T, K)
    # every sample point differs, and some leave the image: border padding is compared too
    assert (ours - source).abs().amax((1, 2, 3)).min() > 0.1
    assert torch.allclose(ours, monodepth2_warp(source, depth, T, K, eps=0), atol=1e-12)
    assert torch.allclose(ours, monodepth2_warp(source, depth, T, K), atol=1e-6)  # its 1e-7 on z


def test_warp_reads_k_with_integer_pixel_centres_half_a_pixel_from_data_pys_corners():
    """A camera 1 m closer to a wall 4 m away sees it 4/3 larger about the principal point. An affine
    image rendered at pixel centres (i + 0.5, j + 0.5) with K in data.py's reading (as synthetic.py
    renders) is reproduced exactly by the warp once (cx, cy) move by -0.5, and missed by a sub-pixel
    shift with K as it is: the half pixel between the two readings, documented in losses.py."""
    h, w, fx = 12, 16, 10.0
    K = torch.tensor([[[fx, 0, 7.3], [0, fx, 5.1], [0, 0, 1]]], dtype=torch.float64)
    cx, cy, zoom = 7.3, 5.1, 4 / 3
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    wall = lambda x, y: torch.stack([0.1 + 0.03 * x + 0.02 * y, 0.9 - 0.04 * x, 0.2 + 0.05 * y])[None]  # noqa: E731
    target = wall(u, v)
    source = wall(cx + (u - cx) / zoom, cy + (v - cy) / zoom)  # the same wall seen from 1 m closer
    shifted = K.clone()
    shifted[:, :2, 2] -= 0.5
    out = warp(source, torch.full((1, 1, h, w), 4.0, dtype=torch.float64), translation(0, 0, -1.0), shifted)
    xs, ys = cx + (u - cx) * zoom, cy + (v - cy) * zoom  # where each target centre lands in the source
    inside = (xs >= 0.5) & (xs <= w - 0.5) & (ys >= 0.5) & (ys <= h - 0.5)
    assert inside.sum() > 40
    assert torch.allclose(out[..., inside], target[..., inside], atol=1e-9)
    as_is = warp(source, torch.full((1, 1, h, w), 4.0, dtype=torch.float64), translation(0, 0, -1.0), K)
    assert (as_is[..., inside] - target[..., inside]).abs().max() > 0.005


def test_warp_stays_pixel_exact_under_bf16_autocast():
    h, w = 8, 576
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(12))
    depth = torch.full((1, 1, h, w), 7.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = warp(img, depth, translation(0.0).float(), intrinsics(300.0, h, w).float())
        pe = photometric_error(img.bfloat16(), img.bfloat16())
    assert out.dtype == torch.float32 and torch.allclose(out, img, atol=1e-3)  # bf16 geometry was ~1 off
    assert pe.dtype == torch.float32 and pe.abs().max() < 1e-6


def test_warp_rejects_depth_of_another_resolution():
    with pytest.raises(ValueError, match="upsample the depth"):
        warp(torch.zeros(1, 3, 4, 6), torch.ones(1, 1, 2, 3), translation(0.0).float(),
             intrinsics(3.0, 4, 6).float())


def test_automask_picks_the_identity_error_where_the_image_is_static():
    h, w = 6, 10
    target = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    depth = torch.full((1, 1, h, w), 2.0, dtype=torch.float64)
    K = intrinsics(10.0, h, w)
    # Static scene, wrong motion: the un-warped sources match exactly, so every pixel is masked.
    loss, mask, warped = reprojection_loss(target, [target, target], depth,
                                           [translation(0.4), translation(-0.4)], K)
    assert loss.shape == mask.shape == (1, 1, h, w) and mask.dtype == torch.bool
    assert not mask.any()
    assert torch.allclose(loss, torch.zeros_like(loss), atol=1e-12)
    # Without auto-masking the wrong warp is charged.
    loss_all, mask_all, _ = reprojection_loss(target, [target], depth, [translation(0.4)], K,
                                              automask=False)
    assert mask_all.all() and loss_all.mean() > 0.01


def test_automask_keeps_the_warped_error_where_the_camera_moved():
    h, w = 6, 12
    target = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    source = torch.cat([target[..., :, -2:], target[..., :, :-2]], -1)  # scene moved 2 px right
    depth = torch.full((1, 1, h, w), 2.0, dtype=torch.float64)
    loss, mask, _ = reprojection_loss(target, [source], depth, [translation(0.4)], intrinsics(10.0, h, w))
    # Pixels whose 3x3 SSIM window stays inside the correctly warped part reconstruct exactly.
    assert mask[..., :, :w - 3].all()
    assert torch.allclose(loss[..., :, :w - 3], torch.zeros(1, 1, h, w - 3, dtype=torch.float64),
                          atol=1e-9)


def test_automask_ties_go_to_identity_deterministically():
    target = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    source = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    loss, mask = min_reprojection(target, [source], [source])
    assert not mask.any()
    assert torch.equal(loss, photometric_error(source, target))


def test_reprojection_takes_the_minimum_over_sources_so_one_good_source_wins():
    """Occlusion handling (monodepth2): a pixel seen well in either neighbour costs nothing, whichever one it is."""
    h, w = 6, 8
    g = torch.Generator().manual_seed(14)
    target = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    unrelated = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    still, K = translation(0.0), intrinsics(5.0, h, w)
    depth = torch.full((1, 1, h, w), 3.0, dtype=torch.float64)
    for sources in ([target, unrelated], [unrelated, target]):  # the good source first, then second
        loss, mask, _ = reprojection_loss(target, sources, depth, [still, still], K, automask=False)
        assert bool(mask.all())
        assert float(loss.max()) < 1e-9  # a mean over the sources: half the unrelated frame's error
    assert photometric_error(unrelated, target).mean() > 0.2  # so the unrelated frame alone is far from 0


def test_automask_compares_with_the_best_unwarped_source_not_their_mean():
    """A pixel that either raw neighbour already matches is static: masked, even when the other differs."""
    g = torch.Generator().manual_seed(15)
    target = 0.2 + 0.6 * torch.rand(1, 3, 5, 7, generator=g, dtype=torch.float64)
    close = target + 0.02  # a warped source with a small, uniform error
    warped_error = photometric_error(close, target)
    far_error = photometric_error(1 - target, target)
    # the warped error lies between the identity errors' minimum (0) and their mean
    assert (warped_error > 0).all() and (warped_error < far_error / 2).all()
    loss, mask = min_reprojection(target, [close, close], [1 - target, target])
    assert int(mask.sum()) == 0 and float(loss.max()) < 1e-9
    loss, mask = min_reprojection(target, [close, 1 - target], [1 - target, 1 - target])
    assert mask.all() and torch.allclose(loss, warped_error, atol=1e-12)


def smoothness_by_hand(disp, image):
    """Edge-aware smoothness written out pixel by pixel: disparity over its mean, each neighbour difference
    weighted by exp(-mean over channels of the image difference), x and y terms each averaged."""
    d = disp / disp.mean()
    h, w = d.shape
    x_terms = [abs(d[i, j] - d[i, j + 1]) * math.exp(-np.mean(np.abs(image[:, i, j] - image[:, i, j + 1])))
               for i in range(h) for j in range(w - 1)]
    y_terms = [abs(d[i, j] - d[i + 1, j]) * math.exp(-np.mean(np.abs(image[:, i, j] - image[:, i + 1, j])))
               for i in range(h - 1) for j in range(w)]
    return np.mean(x_terms) + np.mean(y_terms)


def test_smoothness_weights_disparity_gradients_down_at_image_edges_by_hand_value():
    disp = np.array([[1.0, 2.0, 4.0, 3.0], [2.0, 5.0, 1.0, 1.5], [3.0, 1.0, 2.0, 6.0]])
    image = np.stack([np.array([[0.0, 0.9, 0.1, 0.8], [0.7, 0.2, 1.0, 0.0], [0.3, 0.6, 0.4, 0.9]]) * (1 - 0.2 * c)
                      for c in range(3)])  # strong texture, different in each channel
    expected = smoothness_by_hand(disp, image)
    got = smoothness_loss(torch.tensor(disp)[None, None], torch.tensor(image)[None]).item()
    assert got == pytest.approx(expected, rel=1e-6)  # the loss adds 1e-7 to the mean
    # the texture matters: the same disparity on a flat image costs clearly more
    assert smoothness_by_hand(disp, np.zeros_like(image)) > 1.3 * expected


def test_smoothness_normalises_each_images_disparity_by_its_own_mean():
    """Scale-invariant per image (monodepth2's mean-normalised disparity): a far scene costs what a near one does."""
    g = torch.Generator().manual_seed(17)
    disp, image = 0.1 + torch.rand(2, 1, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    alone = [smoothness_loss(disp[i:i + 1], image[i:i + 1]).item() for i in range(2)]
    assert smoothness_loss(disp, image).item() == pytest.approx(np.mean(alone), rel=1e-5)
    scaled = disp * torch.tensor([1.0, 10.0]).view(2, 1, 1, 1)
    assert smoothness_loss(scaled, image).item() == pytest.approx(np.mean(alone), rel=1e-5)


def test_smoothness_is_zero_for_constant_disparity_and_hand_value_for_a_step():
    image = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(8))
    assert smoothness_loss(torch.full((1, 1, 4, 5), 0.3), image).item() == pytest.approx(0.0, abs=1e-7)
    # disp [1, 1, 3, 3] per row, mean 2: normalised [.5, .5, 1.5, 1.5]; x-gradients [0, 1, 0] on a
    # flat image (weight e^0 = 1) average to 1/3; y-gradients are 0.
    disp = torch.tensor([[1.0, 1.0, 3.0, 3.0]]).expand(2, 4).reshape(1, 1, 2, 4)
    flat = torch.full((1, 3, 2, 4), 0.5)
    assert smoothness_loss(disp, flat).item() == pytest.approx(1 / 3, rel=1e-5)


def test_velocity_loss_is_zero_at_the_true_translation_and_hand_value_otherwise():
    t = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    assert velocity_loss(t, torch.tensor([5.0, 1.0])).item() == pytest.approx(0.0)
    assert velocity_loss(t, torch.tensor([4.0, 1.5])).item() == pytest.approx((1.0 + 0.5) / 2)


def test_silog_is_zero_for_a_scaled_prediction_with_variance_focus_one():
    gt = torch.tensor([[[[1.0, 2.0], [5.0, 40.0]]]])
    pred = (3 * gt).requires_grad_()
    loss = silog_loss(pred, gt, variance_focus=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_silog_matches_hand_value_on_valid_pixels_only():
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]], [[0.0, 90.0], [0.05, 3.0]]]]).reshape(2, 1, 2, 2)
    pred = gt.clone()
    pred[0, 0, 0, :] *= 2  # d = log 2 on two of the four valid pixels (second image: one valid, d = 0)
    pred[1] = torch.tensor([[7.0, 7.0], [7.0, 3.0]])  # invalid gt pixels must not count
    l2 = math.log(2)
    # five valid pixels: d = [l2, l2, 0, 0, 0]
    mean_d2, mean_d = 2 * l2 ** 2 / 5, 2 * l2 / 5
    expected = 10 * math.sqrt(mean_d2 - 0.85 * mean_d ** 2)
    assert silog_loss(pred, gt).item() == pytest.approx(expected, rel=1e-5)


def test_silog_leaves_out_lidar_exactly_at_the_minimum_and_at_the_cap():
    gt = torch.tensor([[[[2.0, 0.1], [80.0, 4.0]]]])
    pred = torch.tensor([[[[2.0, 7.0], [7.0, 8.0]]]])
    # valid: 2 m (d = 0) and 4 m (d = log 2) only
    l2 = math.log(2)
    expected = 10 * math.sqrt(l2 ** 2 / 2 - 0.85 * (l2 / 2) ** 2)
    assert silog_loss(pred, gt, min_depth=0.1, max_depth=80.0).item() == pytest.approx(expected, rel=1e-5)
    gt64 = torch.tensor([[[[2.0, 0.1], [80.0, 4.0]]]], dtype=torch.float64)  # 0.1 exactly as the flag says it
    assert silog_loss(pred.double(), gt64, min_depth=0.1, max_depth=80.0).item() == pytest.approx(expected)


def test_silog_without_any_valid_pixel_is_zero_not_nan():
    pred = torch.rand(2, 1, 3, 3).add(0.5).requires_grad_()
    gt = torch.zeros(2, 1, 3, 3)
    gt[1] = 100.0  # beyond max_depth
    loss = silog_loss(pred, gt)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()
    gt[0, 0, 1, 1] = 10.0  # one valid pixel in the whole batch: finite too
    assert torch.isfinite(silog_loss(pred, gt))


def test_distillation_is_zero_when_equal_and_relative_difference_otherwise():
    s = torch.tensor([[[[0.5, 0.25]]]])
    assert torch.equal(distillation(s, s.clone()), torch.zeros_like(s))
    out = distillation(s, torch.tensor([[[[0.25, 0.5]]]]))
    assert out.flatten().tolist() == pytest.approx([0.5, 1.0])  # |.5-.25|/.5, |.25-.5|/.25


def test_teacher_loss_keeps_the_distillation_only_where_the_teacher_is_better():
    distill = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    pe_t = torch.tensor([0.1, 0.1, 0.9, 0.9]).reshape(1, 1, 2, 2)
    pe_s = torch.tensor([0.5, 0.5, 0.5, 0.5]).reshape(1, 1, 2, 2)
    assert teacher_loss(distill, pe_t, pe_s).item() == pytest.approx((1 + 2) / 4)
    assert teacher_loss(distill, pe_t, pe_s, mask="printed").item() == pytest.approx((3 + 4) / 4)
    assert teacher_loss(distill, pe_t, pe_s, mask="none").item() == pytest.approx(distill.mean().item())
    # Teacher better everywhere: exactly the plain distillation mean; worse everywhere: 0.
    assert teacher_loss(distill, pe_s * 0, pe_s).item() == pytest.approx(distill.mean().item())
    assert teacher_loss(distill, pe_s + 1, pe_s).item() == 0.0


def test_teacher_loss_distils_neither_mask_where_teacher_and_student_reproject_equally():
    """M = [pe_T < pe_S] is strict: a tie (e.g. both depths sending a pixel off the image) is not evidence."""
    distill = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    pe_t = torch.tensor([0.5, 0.1, 0.5, 0.9]).reshape(1, 1, 2, 2)
    pe_s = torch.full((1, 1, 2, 2), 0.5)
    assert teacher_loss(distill, pe_t, pe_s).item() == pytest.approx(2 / 4)
    assert teacher_loss(distill, pe_t, pe_s, mask="printed").item() == pytest.approx(4 / 4)


def test_teacher_loss_rejects_an_unknown_mask_naming_the_flag():
    with pytest.raises(ValueError, match="--teacher-mask"):
        teacher_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "both")


def test_semantic_loss_is_zero_for_identical_and_two_for_opposite_features():
    f = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(9))
    assert semantic_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert semantic_loss(f, -f).item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="same size"):
        semantic_loss(f, f[:, :5])


def test_semantic_loss_averages_the_cosine_of_each_token_pair_by_hand_value():
    student = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]]])  # (B, tokens, channels); lengths do not count
    dino = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    # per token: cos 1, 1/sqrt 2, 1/sqrt 2 (a cosine over tokens per channel would give 1 - 0.643)
    expected = 1 - (1 + 2 / math.sqrt(2)) / 3
    assert semantic_loss(student, dino).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mask", TEACHER_MASKS)
def test_student_losses_send_gradients_to_the_student_only(mask):
    g = torch.Generator().manual_seed(10)
    s_student = (0.1 + torch.rand(1, 1, 4, 4, generator=g)).requires_grad_()
    s_teacher = (0.1 + torch.rand(1, 1, 4, 4, generator=g)).requires_grad_()
    pe_t = torch.rand(1, 1, 4, 4, generator=g).requires_grad_()
    pe_s = torch.rand(1, 1, 4, 4, generator=g).requires_grad_()
    f_student = torch.randn(1, 5, 8, generator=g).requires_grad_()
    f_dino = torch.randn(1, 5, 8, generator=g).requires_grad_()
    loss = (teacher_loss(distillation(s_student, s_teacher), pe_t, pe_s, mask=mask)
            + semantic_loss(f_student, f_dino))
    loss.backward()
    assert s_student.grad is not None and s_student.grad.abs().sum() > 0
    assert f_student.grad is not None and f_student.grad.abs().sum() > 0
    assert s_teacher.grad is None and f_dino.grad is None
    assert pe_t.grad is None and pe_s.grad is None  # the masks compare reprojection errors, never train them


def test_reprojection_loss_gradients_reach_depth_and_pose():
    h, w = 6, 8
    g = torch.Generator().manual_seed(11)
    target = torch.rand(1, 3, h, w, generator=g)
    source = torch.rand(1, 3, h, w, generator=g)
    depth = torch.full((1, 1, h, w), 3.0).requires_grad_()
    T = translation(0.1).float().requires_grad_()
    loss, _, _ = reprojection_loss(target, [source], depth, [T], intrinsics(5.0, h, w).float(),
                                   automask=False)
    loss.mean().backward()
    assert depth.grad.abs().sum() > 0 and T.grad[:, :3, 3].abs().sum() > 0


def test_warp_survives_nan_depth_in_backward():
    """grid_sample's backward segfaults on NaN coordinates; the warp must not hand it any."""
    from losses import warp
    depth = torch.full((1, 1, 8, 12), float("nan"), requires_grad=True)
    source = torch.rand(1, 3, 8, 12, requires_grad=True)
    K = torch.tensor([[10.0, 0, 6], [0, 10, 4], [0, 0, 1]])
    warped = warp(source, depth, torch.eye(4)[None], K)
    warped.sum().backward()
    assert source.grad is not None and torch.isfinite(warped).all()
