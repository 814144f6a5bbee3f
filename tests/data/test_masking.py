import pytest
import torch

from pipeline.data.masking import (blocks_to_mask, make_masker, multiblock_mask, running_cell_mask,
                                   sample_blocks, tube_mask)
from pipeline.models.base import is_tube_mask, restore_order

GRID = (4, 6, 8)  # t, h, w
N = 4 * 6 * 8


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mask_type, ratio, hidden", [
    ("tube", 0.75, 4 * round(0.75 * 48)),
    ("random", 0.9, round(0.9 * N)),
    ("random", 0.5, N // 2),
    ("running_cell", 0.5, N // 2),
    ("running_cell", 0.75, 3 * N // 4),
    ("multiblock", 0.6, 4 * round(0.6 * 48)),
    ("none", 0.9, 0),
])
def test_shape_dtype_and_exact_hidden_count(mask_type, ratio, hidden):
    mask = make_masker(mask_type, ratio, GRID)(5, gen())
    assert mask.shape == (5, N) and mask.dtype == torch.bool
    assert (mask.sum(1) == hidden).all()


def test_tube_hides_the_same_positions_in_every_frame():
    mask = tube_mask(6, GRID, 0.75, gen())
    assert is_tube_mask(mask, GRID)
    rows = mask.view(6, 4, 48)[:, 0]
    assert len({tuple(r.tolist()) for r in rows}) > 1  # rows differ from each other


def test_random_mask_is_not_a_tube_and_is_seeded():
    a = make_masker("random", 0.75, GRID)(4, gen(1))
    assert torch.equal(a, make_masker("random", 0.75, GRID)(4, gen(1)))
    assert not torch.equal(a, make_masker("random", 0.75, GRID)(4, gen(2)))
    assert not is_tube_mask(a, GRID)


def test_masks_work_with_restore_order():
    mask = tube_mask(3, GRID, 0.75, gen())
    ids = restore_order(mask)
    visible_first = torch.cat([torch.zeros(3, N - int(mask[0].sum())), torch.ones(3, int(mask[0].sum()))], 1)
    assert torch.equal(torch.gather(visible_first, 1, ids).bool(), mask)


@pytest.mark.parametrize("ratio, per_cell", [(0.25, 1), (0.5, 2), (0.75, 3)])
def test_running_cell_rotates_within_each_cell(ratio, per_cell):
    t, h, w = 6, 4, 6
    mask = running_cell_mask(3, (t, h, w), ratio, gen()).view(3, t, h // 2, 2, w // 2, 2)
    cells = mask.permute(0, 1, 2, 4, 3, 5).reshape(3, t, h // 2, w // 2, 4)[..., [0, 1, 3, 2]]
    assert (cells.sum(-1) == per_cell).all()  # every cell hides per_cell slots in every frame
    assert torch.equal(cells[:, 1:], torch.roll(cells[:, :-1], shifts=1, dims=-1))  # rotates by one
    assert (cells[:, :4].sum(1) == per_cell).all()  # over 4 frames each slot is hidden per_cell times
    first = cells[:, 0, 0, 0]
    assert (cells[:, 0] == first[:, None, None]).all()  # all cells share the phase of their row


def test_running_cell_rejects_odd_grid_and_bad_ratio():
    with pytest.raises(ValueError, match="even"):
        make_masker("running_cell", 0.5, (2, 3, 4))
    with pytest.raises(ValueError, match="1 to 3"):
        make_masker("running_cell", 0.05, (2, 4, 4))


def test_multiblock_is_a_union_of_contiguous_blocks_spanning_all_time():
    h, w = 10, 12
    for seed in range(20):
        g = gen(seed)
        blocks = sample_blocks(h, w, 60, (0.1, 0.2), (0.75, 1.5), g)
        hidden = blocks_to_mask(h, w, blocks, 60).view(h, w)
        assert int(hidden.sum()) == 60
        inside = torch.zeros(h, w, dtype=torch.bool)
        for i, b in enumerate(blocks):
            assert 0 <= b.top and b.top + b.height <= h and 0 <= b.left and b.left + b.width <= w
            region = hidden[b.top:b.top + b.height, b.left:b.left + b.width]
            if i < len(blocks) - 1:
                assert region.all()  # every block but the trimmed last one is hidden whole
            inside[b.top:b.top + b.height, b.left:b.left + b.width] = True
        assert not (hidden & ~inside).any()  # nothing hidden outside the blocks
    mask = multiblock_mask(4, (3, h, w), 0.5, gen())
    assert is_tube_mask(mask, (3, h, w))


def test_multiblock_single_block_is_one_rectangle():
    # one block of area >= the target: the hidden set is the first rows of that rectangle
    mask = multiblock_mask(8, (2, 8, 8), 0.25, gen(), scale=(0.5, 0.5), aspect=(1.0, 1.0))
    for row in mask.view(8, 2, 8, 8)[:, 0]:
        ys, xs = row.nonzero(as_tuple=True)
        assert int(row.sum()) == 16
        box = row[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert box.shape[1] == 6 or box.all()  # a 6x6 block cut in raster order, or a full rectangle
        assert box[:-1].all()  # all rows but the last full: one contiguous piece


def test_unknown_mask_type():
    with pytest.raises(ValueError, match="unknown mask type 'blob'"):
        make_masker("blob", 0.5, GRID)
