"""The solver's building blocks against hand-computed values and reference values of the official code's formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxelopt import InputError, RegistrationConfig
from voxelopt.solver import (
    argmin_labels,
    compose,
    coordinate_descent,
    cost_volume,
    displacement_entropy,
    label_offsets,
    level_shapes,
    neighbour_weight,
    scaling_and_squaring,
    sigma_from_entropy,
    smooth_,
    solve_pyramid,
)

CPU = torch.device("cpu")


def smooth_features(shape, channels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, channels) + tuple(n + 16 for n in shape), generator=g)
    for _ in range(2):
        x = F.avg_pool3d(x, 5, 1, 2)
    x = (x - x.mean()) / x.std() * 0.15 + 0.5
    return x


def crop_shifted(big, shape, shift):
    """fixed = big cropped; moving such that moving(p + shift) = fixed(p)."""
    z, y, x = shape
    fixed = big[:, :, 8:8 + z, 8:8 + y, 8:8 + x].contiguous()
    a, b, c = (8 - s for s in shift)
    moving = big[:, :, a:a + z, b:b + y, c:c + x].contiguous()
    return moving, fixed


# ------------------------------------------------------------------ offsets and cost
def test_label_offsets_order_zero_first_corners_last():
    offsets = label_offsets(1, CPU)
    assert offsets.shape == (27, 3)
    assert offsets[0].tolist() == [0, 0, 0]
    lengths = (offsets**2).sum(1)
    assert torch.all(lengths[1:] >= lengths[:-1])
    assert set(lengths[1:7].tolist()) == {1.0} and set(lengths[-8:].tolist()) == {3.0}
    assert label_offsets(2, CPU).shape == (125, 3)


def test_cost_volume_values():
    fixed = torch.rand(1, 3, 6, 7, 8)
    moving = torch.rand(1, 3, 6, 7, 8)
    offsets = label_offsets(1, CPU)
    cost = cost_volume(moving, fixed, offsets)
    # hand-computed at an interior voxel for every offset
    z, y, x = 3, 3, 4
    for label, (dz, dy, dx) in enumerate(offsets.long().tolist()):
        expected = (moving[0, :, z + dz, y + dy, x + dx] - fixed[0, :, z, y, x]).abs().mean()
        assert cost[label, z, y, x].item() == pytest.approx(expected.item(), abs=1e-6)
    # at a border the moving feature beyond the volume repeats the border voxel
    corner = offsets.long().tolist().index([-1, -1, -1])
    expected = (moving[0, :, 0, 0, 0] - fixed[0, :, 0, 0, 0]).abs().mean()
    assert cost[corner, 0, 0, 0].item() == pytest.approx(expected.item(), abs=1e-6)


# ------------------------------------------------------------------ entropy, sigma, weights
def test_entropy_uniform_and_peaked():
    uniform = torch.zeros(27, 2, 2, 2)
    assert torch.allclose(displacement_entropy(uniform, 10.0), torch.full((2, 2, 2), math.log(27)), atol=1e-5)
    peaked = torch.ones(27, 2, 2, 2)
    peaked[5] = 0.0
    assert displacement_entropy(peaked, 50.0).max().item() < 1e-15 + 27 * 50 * math.exp(-50)


def test_entropy_matches_definition():
    cost = torch.rand(27, 3, 4, 5)
    beta = 7.0
    p = np.exp(-beta * cost.numpy())
    p /= p.sum(0, keepdims=True)
    expected = -(p * np.log(p)).sum(0)
    assert np.allclose(displacement_entropy(cost, beta).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("sigma, side, centre", [(0.3, 0.0038, 0.992), (0.4, 0.0404, 0.919), (0.5, 0.1065, 0.787)])
def test_neighbour_weights_match_spec_table(sigma, side, centre):
    w1 = neighbour_weight(torch.tensor([sigma])).item()
    assert w1 == pytest.approx(side, abs=2e-4)
    assert 1 - 2 * w1 == pytest.approx(centre, abs=1e-3)


def test_tiny_sigma_is_identity():
    assert neighbour_weight(torch.tensor([0.1, 0.2])).tolist() == [0.0, pytest.approx(3.7e-6, rel=0.05)]


def test_sigma_forms():
    entropy = torch.tensor([1.0, 2.0, 3.0])
    code = sigma_from_entropy(entropy, "code", (0.1, 0.5))
    assert code.tolist() == pytest.approx([0.1, 0.1 + 0.4 * math.log2(1.5), 0.5], abs=1e-6)
    paper = sigma_from_entropy(entropy, "paper", alpha=1.5)
    assert paper.tolist() == pytest.approx([1.5 * math.log(1 / 3 + 1), 1.5 * math.log(2 / 3 + 1), 1.5 * math.log(2)], abs=1e-6)


# ------------------------------------------------------------------ message passing
def test_fixed_sigma_filter_equals_separable_gaussian_convolution():
    x = torch.rand(2, 9, 10, 11)
    w1 = neighbour_weight(torch.full((9, 10, 11), 0.5))
    filtered = smooth_(x.clone(), w1, passes=1)
    k1 = torch.tensor([0.10651, 0.78699, 0.10651])
    kernel = (k1[:, None, None] * k1[None, :, None] * k1[None, None, :])[None, None]
    reference = F.conv3d(x[:, None], kernel)[:, 0]  # valid part: interior voxels
    assert torch.allclose(filtered[:, 1:-1, 1:-1, 1:-1], reference, atol=1e-4)


def test_filter_keeps_constants_and_is_local():
    w1 = torch.rand(6, 7, 8) * 0.3
    const = torch.full((3, 6, 7, 8), 2.5)
    assert torch.allclose(smooth_(const.clone(), w1, 3), const)
    impulse = torch.zeros(1, 6, 7, 8)
    impulse[0, 3, 3, 3] = 1.0
    w0 = torch.zeros(6, 7, 8)  # sigma ~ 0 everywhere: identity
    assert torch.equal(smooth_(impulse.clone(), w0, 3), impulse)


# ------------------------------------------------------------------ v-step tie rule
def test_flat_cost_gives_zero_displacement():
    offsets = label_offsets(1, CPU)
    energy = torch.full((27, 10), 0.25)
    assert torch.equal(argmin_labels(energy, offsets), torch.zeros(3, 10))


def test_ties_prefer_the_shortest_offset_never_a_corner():
    offsets = label_offsets(1, CPU)
    listed = offsets.long().tolist()
    energy = torch.ones(27, 2)
    corner, face = listed.index([1, 1, 1]), listed.index([0, 0, -1])
    energy[corner] = 0.0
    energy[face] = 0.0
    v = argmin_labels(energy, offsets)
    assert v[:, 0].tolist() == [0, 0, -1]
    energy = torch.ones(27, 1)
    energy[corner] = 0.5
    energy[0] = 0.5 + 1e-8  # zero offset within the tolerance: it wins
    assert argmin_labels(energy, offsets)[:, 0].tolist() == [0, 0, 0]


def test_unique_minimum_is_found():
    offsets = label_offsets(1, CPU)
    energy = torch.rand(27, 50) + 1.0
    target = torch.randint(0, 27, (50,))
    energy[target, torch.arange(50)] = 0.0
    assert torch.equal(argmin_labels(energy, offsets), offsets[target].t())


# ------------------------------------------------------------------ levels, SS, composition
def test_level_shapes():
    assert level_shapes((128, 80, 96), 5)[-1] == (8, 5, 6)
    assert level_shapes((24, 80, 96), 5) == [(24, 80, 96), (12, 40, 48), (6, 20, 24), (6, 10, 12), (6, 5, 6)]
    with pytest.raises(InputError, match="too small for 6 pyramid levels"):
        level_shapes((24, 80, 96), 6)
    with pytest.raises(InputError, match="too small"):
        level_shapes((1, 80, 96), 1)


def test_scaling_and_squaring_of_constant_field_is_the_field():
    r = torch.zeros(1, 3, 6, 7, 8)
    r[:, 0] = 0.7
    r[:, 2] = -0.4
    assert torch.allclose(scaling_and_squaring(r, 7), r, atol=1e-5)
    assert scaling_and_squaring(r, 0) is r


def test_composition_of_translations_adds():
    a = torch.zeros(1, 3, 6, 7, 8)
    b = torch.zeros(1, 3, 6, 7, 8)
    a[:, 1], b[:, 1], b[:, 2] = 0.5, 0.25, 1.0
    assert torch.allclose(compose(a, b), a + b, atol=1e-5)


# ------------------------------------------------------------------ the solver end to end
def test_identical_inputs_give_zero_field():
    f = smooth_features((24, 20, 28))[:, :, 8:-8, 8:-8, 8:-8].contiguous()
    out = solve_pyramid(f, f.clone(), RegistrationConfig(levels=3))
    assert out.field.abs().max().item() == 0.0


@pytest.mark.parametrize("adaptive", [True, False])
def test_known_shift_is_recovered_with_its_sign(adaptive):
    shift = (3, 0, -2)
    moving, fixed = crop_shifted(smooth_features((40, 36, 44)), (40, 36, 44), shift)
    out = solve_pyramid(moving, fixed, RegistrationConfig(levels=3, adaptive=adaptive))
    inner = out.field[0, :, 8:-8, 8:-8, 8:-8]
    medians = [inner[c].median().item() for c in range(3)]
    assert medians == pytest.approx(list(shift), abs=0.25)


def test_k2_reaches_two_voxels_in_one_level_and_k1_does_not():
    moving, fixed = crop_shifted(smooth_features((32, 32, 32)), (32, 32, 32), (2, 0, 0))
    discrete = RegistrationConfig(levels=1, refine_iterations=0)  # the labels alone (the refinement reaches 1.9)
    k2 = solve_pyramid(moving, fixed, discrete.replace(k=2)).field[0, 0, 8:-8, 8:-8, 8:-8].median().item()
    k1 = solve_pyramid(moving, fixed, discrete.replace(k=1)).field[0, 0, 8:-8, 8:-8, 8:-8].median().item()
    assert k2 == pytest.approx(2.0, abs=0.25)
    assert k1 < 1.5


def test_k_finest_sets_the_radius_of_the_finest_level_only():
    moving, fixed = crop_shifted(smooth_features((32, 32, 32)), (32, 32, 32), (2, 0, 0))
    discrete = RegistrationConfig(levels=1, refine_iterations=0)  # one level: it is the finest
    shift = lambda config: solve_pyramid(moving, fixed, config).field[0, 0, 8:-8, 8:-8, 8:-8].median().item()  # noqa: E731
    assert shift(discrete.replace(k=2, k_finest=1)) < 1.5  # k_finest = 1 there, not k = 2
    assert shift(discrete.replace(k=1, k_finest=2)) == pytest.approx(2.0, abs=0.25)
    assert shift(discrete.replace(k=2, k_finest=0)) == pytest.approx(2.0, abs=0.25)  # 0: k
    # two levels, a 5-voxel shift: the coarse level (half size) searches k = 2 (4 fine voxels) and
    # the finest level adds 1; with k = 1 the two levels reach 2 + 1 = 3 at most
    moving, fixed = crop_shifted(smooth_features((32, 32, 32)), (32, 32, 32), (5, 0, 0))
    two = discrete.replace(levels=2)
    assert shift(two.replace(k=2, k_finest=1)) == pytest.approx(5.0, abs=0.5)
    assert shift(two.replace(k=1, k_finest=1)) < 3.5


def test_ablation_switches_change_the_result():
    g = torch.Generator().manual_seed(3)
    moving, fixed = crop_shifted(smooth_features((32, 28, 36), seed=1), (32, 28, 36), (1, 2, -1))
    moving = moving + 0.02 * torch.rand(moving.shape, generator=g)
    base = RegistrationConfig(levels=2)
    reference = solve_pyramid(moving, fixed, base).field
    for change in ({"adaptive": False}, {"filter_cost": False}, {"sigma_mode": "code"}, {"ss_steps": 0}, {"k": 2}):
        other = solve_pyramid(moving, fixed, base.replace(**change)).field
        assert not torch.allclose(other, reference, atol=1e-4), change


def test_coordinate_descent_strong_coupling_follows_smoothed_labels():
    # With costs favouring +1 along x everywhere, every v-step picks it and u converges to it.
    offsets = label_offsets(1, CPU)
    cost = torch.ones(27, 5, 6, 7)
    cost[offsets.long().tolist().index([0, 0, 1])] = 0.0
    u = coordinate_descent(cost, offsets, [150, 1.5, 0.5], torch.full((5, 6, 7), 0.1), 3)
    assert torch.allclose(u[2], torch.ones(5, 6, 7)) and u[:2].abs().max() == 0


# ------------------------------------------------------------------ continuous refinement
@pytest.mark.parametrize("grid_scale", [1.0, 0.5])
def test_refinement_recovers_a_sub_voxel_shift_and_never_raises_the_cost(grid_scale):
    from voxelopt.geometry import warp
    from voxelopt.solver.refine import refine_field

    moving = smooth_features((32, 32, 32), channels=6)[:, :, 8:-8, 8:-8, 8:-8].contiguous()
    truth = torch.tensor([0.4, -0.3, 0.2]).view(1, 3, 1, 1, 1)
    fixed = warp(moving, truth.expand(1, 3, 32, 32, 32).contiguous())  # fixed(p) = moving(p + truth)
    start = torch.zeros(1, 3, 32, 32, 32)
    refined = refine_field(moving, fixed, start, 10, 1.0, grid_scale=grid_scale)
    inner = refined[0, :, 6:-6, 6:-6, 6:-6].reshape(3, -1).median(dim=1).values
    assert torch.allclose(inner, truth.view(3), atol=0.1)

    def cost(u):
        return (warp(moving, u) - fixed).abs().mean().item()

    assert cost(refined) < 0.5 * cost(start)
    # already at the answer: early stop keeps the field (no step lowers the data term)
    exact = truth.expand(1, 3, 32, 32, 32).contiguous()
    assert cost(refine_field(moving, fixed, exact, 10, 1.0, grid_scale=grid_scale)) <= cost(exact) + 1e-6


def test_refinement_smoothing_is_three_box_filters():
    from voxelopt.solver.refine import smooth_field

    u = torch.rand(1, 3, 14, 15, 16, generator=torch.Generator().manual_seed(0))
    boxed = u
    for _ in range(3):
        boxed = F.avg_pool3d(F.pad(boxed, [1] * 6, mode="replicate"), 3, stride=1)
    smooth = smooth_field(u)
    assert smooth.shape == u.shape
    assert torch.allclose(smooth[..., 3:-3, 3:-3, 3:-3], boxed[..., 3:-3, 3:-3, 3:-3], atol=1e-6)
    constant = torch.full((1, 3, 9, 9, 9), 2.5)
    assert torch.allclose(smooth_field(constant), constant)  # borders replicated: nothing leaks in
