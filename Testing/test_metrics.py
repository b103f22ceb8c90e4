import numpy as np
import pytest
import torch

from voxelopt.metrics import dice_scores, hd95, jacobian_determinant, jacobian_statistics, label_metrics


def test_dice_hand_computed():
    a = np.zeros((4, 4, 4), int)
    b = np.zeros((4, 4, 4), int)
    a[0, :2] = 1  # 8 voxels
    b[0, :1] = 1  # 4 voxels, all inside a
    a[2] = 2  # label 2 only in a: not scored
    b[3, 0, 0] = 3  # label 3 only in b: not scored
    assert dice_scores(a, b) == {1: pytest.approx(2 * 4 / 12)}


def test_hd95_of_offset_cubes_in_mm():
    a = np.zeros((30, 30, 30), bool)
    b = np.zeros((30, 30, 30), bool)
    a[10:20, 10:20, 10:20] = True
    b[10:20, 10:20, 13:23] = True  # shifted 3 voxels along x
    # x spacing 2 mm: every surface point is within 6 mm; most faces are at 0 mm or exactly 6 mm
    value = hd95(a, b, spacing_zyx=(1.0, 1.0, 2.0))
    assert value == pytest.approx(6.0)
    assert hd95(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert np.isnan(hd95(a, np.zeros_like(a), (1.0, 1.0, 1.0)))


def test_label_metrics_summary():
    a = np.zeros((20, 20, 20), int)
    a[5:15, 5:15, 5:15] = 1
    metrics = label_metrics(a, a.copy(), (1.0, 1.0, 1.0))
    assert metrics["labels"] == [1] and metrics["dice_mean"] == 1.0 and metrics["hd95_mm_mean"] == 0.0


def test_jacobian_of_linear_fields():
    shape = (10, 12, 14)
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    u = torch.stack([0.1 * zz, -0.2 * yy, 0.3 * xx])[None]  # diagonal stretch
    assert torch.allclose(jacobian_determinant(u), torch.full(shape, 1.1 * 0.8 * 1.3), atol=1e-5)
    shear = torch.stack([0.5 * yy, torch.zeros_like(yy), torch.zeros_like(yy)])[None]
    assert torch.allclose(jacobian_determinant(shear), torch.ones(shape), atol=1e-5)
    fold = torch.stack([-2.0 * zz, torch.zeros_like(zz), torch.zeros_like(zz)])[None]
    assert torch.allclose(jacobian_determinant(fold), torch.full(shape, -1.0), atol=1e-5)


def test_jacobian_statistics():
    jac = np.ones((10, 10, 10))
    stats = jacobian_statistics(jac)
    assert stats["sdlogj"] == 0.0 and stats["folding_percent"] == 0.0
    jac[5, 5, 5] = -1.0
    jac[4, 4, 4] = 2.0
    stats = jacobian_statistics(jac)
    assert stats["folding_percent"] == pytest.approx(0.1)
    inner = jac[2:-2, 2:-2, 2:-2]
    assert stats["sdlogj"] == pytest.approx(np.log(inner + 3).std())
    assert stats["sdlogj_plain"] == pytest.approx(np.log(inner[inner > 0]).std())
