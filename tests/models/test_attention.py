"""3D windows, shift masks and decomposed relative positions against brute-force definitions."""

from __future__ import annotations

import itertools

import torch

from sam3d.models import VARIANTS, VolumetricSam
from sam3d.models.window_attention import (
    decomposed_rel_pos_bias,
    resize_rel_pos,
    shifted_window_mask,
    window_order,
    window_partition,
)


def _coordinates(grid):
    axes = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    return torch.stack(axes, dim=-1)[None].float()  # (1, D, H, W, 3)


def test_window_contents():
    grid, window = (8, 4, 12), 4
    x = torch.randn(2, *grid, 5)
    windows = window_partition(x, window)
    assert windows.shape == (2 * 2 * 1 * 3, window**3, 5)
    coords = window_partition(_coordinates(grid), window)
    # every window is one cube of consecutive coordinates
    spans = coords.amax(1) - coords.amin(1)
    assert (spans == window - 1).all()


def test_shift_mask_blocks_exactly_the_wrapped_pairs():
    grid, window, shift = (8, 8, 12), 4, 2
    mask = shifted_window_mask(grid, window, shift)
    coords = window_partition(_coordinates(grid), window)  # positions after the cyclic roll by -shift
    wrapped = coords + shift >= torch.tensor(grid)  # token came from the other end of the volume
    same_side = (wrapped[:, :, None, :] == wrapped[:, None, :, :]).all(-1)
    assert mask.shape == (2 * 2 * 3, window**3, window**3)
    assert torch.equal(mask == 0, same_side)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}


def test_relative_position_tables_have_sams_lengths():
    with torch.device("meta"):
        net = VolumetricSam(VARIANTS["vit_b"])
    for index, block in enumerate(net.image_encoder.blocks):
        length = 127 if index in (2, 5, 8, 11) else 27
        for table in (block.attn.rel_pos_d, block.attn.rel_pos_h, block.attn.rel_pos_w):
            assert table.shape == (length, 64)
        assert block.shift == (4 if index % 2 == 0 else 0)
    assert net.image_encoder.shift_mask.shape == (64, 512, 512)


def test_decomposed_bias_matches_its_definition():
    torch.manual_seed(0)
    window, channels = 3, 4
    q = torch.randn(2, 1, window**3, channels)
    tables = tuple(torch.randn(2 * window - 1, channels) for _ in range(3))
    bias = decomposed_rel_pos_bias(q, tables, window)
    positions = list(itertools.product(range(window), repeat=3))
    expected = torch.zeros(2, 1, window**3, window**3)
    for i, query in enumerate(positions):
        for j, key in enumerate(positions):
            for axis in range(3):
                expected[:, :, i, j] += q[:, :, i] @ tables[axis][query[axis] - key[axis] + window - 1]
    torch.testing.assert_close(bias, expected)


def test_resize_rel_pos_keeps_matching_tables_and_interpolates_others():
    table = torch.arange(27.0)[:, None].repeat(1, 2)
    assert resize_rel_pos(table, 27) is table
    resized = resize_rel_pos(table, 15)
    assert resized.shape == (15, 2)
    assert (resized[1:, 0] > resized[:-1, 0]).all()  # a linear ramp stays monotonic


def test_window_order_gathers_what_the_roll_and_partition_give():
    grid, window, shift = (8, 4, 12), 4, 2
    x = torch.randn(2, *grid, 5)
    order = window_order(grid, window, shift)
    rolled = window_partition(torch.roll(x, shifts=(-shift,) * 3, dims=(1, 2, 3)), window)
    gathered = x.view(2, -1, 5).index_select(1, order).view(-1, window**3, 5)
    assert torch.equal(gathered, rolled)
    back = gathered.view(2, -1, 5).index_select(1, torch.argsort(order)).view(x.shape)
    assert torch.equal(back, x)
