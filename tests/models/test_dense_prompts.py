"""Dense prompts (beyond the paper): boxes, scribbles and the previous mask; distance-transform click maps."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from test_fused_paths import float32_recorder

from sam3d.errors import Sam3dError
from sam3d.models import VARIANTS, DenseInputs, VolumetricSam, VolumetricSamConfig, build_volumetric_sam
from sam3d.models.prompt_encoder import ClickMaps, ClickPromptEncoder

TINY = VARIANTS["tiny"]
GRID = TINY.token_grid  # 16^3 tokens of 4^3 voxels for the 64^3 crop
CROP = TINY.crop_size
PROJECTION = {"prompt_encoder.dense_prompts.project.weight", "prompt_encoder.dense_prompts.project.bias"}


def _box_corner() -> torch.Tensor:
    """``(1, 1, 6)``: a box over voxels 0..11 of every axis, i.e. exactly over tokens 0..2."""
    return torch.tensor([[[0.0, 0, 0, 11, 11, 11]]])


def _scribbles() -> torch.Tensor:
    """A positive stroke along w at (d 30, h 50), w 20..39 (tokens (7, 12, 5..9)); no negative one."""
    scribbles = torch.zeros(1, 2, *CROP)
    scribbles[0, 0, 30, 50, 20:40] = 1
    return scribbles


def _blob() -> torch.Tensor:
    """A previous mask: a blob over voxels 40..47 x 8..15 x 24..31 (tokens 10..11 x 2..3 x 6..7)."""
    mask = torch.zeros(1, 1, *CROP)
    mask[0, 0, 40:48, 8:16, 24:32] = 0.8
    return mask


# Each prompt type, its keyword arguments for the network, and the tokens it must change (others stay).
PROMPTS = {
    "box": ({"boxes": _box_corner()}, (slice(0, 3), slice(0, 3), slice(0, 3))),
    "scribble": ({"scribbles": _scribbles()}, (slice(7, 8), slice(12, 13), slice(5, 10))),
    "mask": ({"previous_mask": _blob()}, (slice(10, 12), slice(2, 4), slice(6, 8))),
}
CLICKS = torch.tensor([[[20.0, 30.0, 40.0], [5.0, 5, 5]]]), torch.tensor([[1, 0]])


def _net(*prompts: str) -> VolumetricSam:
    """The tiny network with ``prompts``; without any, built with the builder's defaults (the paper's)."""
    torch.manual_seed(0)
    if not prompts:
        return build_volumetric_sam("tiny").eval()
    return build_volumetric_sam("tiny", dense_prompts=prompts).eval()


def test_without_dense_prompts_the_network_is_the_papers():
    paper, enabled = _net(), _net("box", "scribble", "mask")
    for config in (VolumetricSamConfig(), *VARIANTS.values(), paper.config):
        assert config.dense_prompts == ()
        assert config.click_encoding == "gaussian"
    assert paper.prompt_encoder.dense_prompts is None
    assert not any("dense_prompts" in name for name in paper.state_dict())
    assert set(enabled.state_dict()) - set(paper.state_dict()) == PROJECTION
    assert enabled.prompt_encoder.dense_prompts is not None
    assert enabled.prompt_encoder.dense_prompts.project.in_channels == 4  # box 1, scribble 2, mask 1


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_untrained_prompts_leave_the_output_bit_identical(prompt):
    paper, enabled = _net(), _net(prompt)
    keys = paper.load_state_dict(enabled.state_dict(), strict=False)
    assert set(keys.unexpected_keys) == PROJECTION
    image = torch.randn(1, 1, *CROP)
    kwargs, _ = PROMPTS[prompt]
    with torch.no_grad():
        assert torch.equal(enabled(image, *CLICKS, **kwargs), paper(image, *CLICKS))


def _trained_encoder(*prompts: str) -> ClickPromptEncoder:
    """A prompt encoder whose dense-prompt projection has non-zero weights (as after training)."""
    torch.manual_seed(1)
    encoder = ClickPromptEncoder(replace(TINY, dense_prompts=prompts)).eval()
    assert encoder.dense_prompts is not None
    with torch.no_grad():
        encoder.dense_prompts.project.weight.normal_()
        encoder.dense_prompts.project.bias.normal_()
    return encoder


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_each_prompt_changes_the_map_only_where_it_is(prompt):
    encoder = _trained_encoder(prompt)
    image_map = torch.randn(1, TINY.neck_dim, *GRID)
    kwargs, where = PROMPTS[prompt]
    name = {"boxes": "boxes", "scribbles": "scribbles", "previous_mask": "previous_mask"}
    dense = DenseInputs(**{name[key]: value for key, value in kwargs.items()})
    with torch.no_grad():
        without = encoder.dense_embedding(image_map, *CLICKS)
        with_prompt = encoder.dense_embedding(image_map, *CLICKS, dense)
    change = (with_prompt - without).abs().sum(1)[0]
    inside = torch.zeros(GRID, dtype=torch.bool)
    inside[where] = True
    assert (change[inside] > 0).all()
    assert (change[~inside] == 0).all()


def test_a_2d_box_changes_one_slice_of_tokens_and_padding_boxes_nothing():
    encoder = _trained_encoder("box")
    image_map = torch.randn(1, TINY.neck_dim, *GRID)
    boxes = torch.tensor([[[21.0, 20, 40, 21, 31, 51], [0, 0, 0, 63, 63, 63]]])  # one slice; the whole crop
    valid = torch.tensor([[True, False]])
    with torch.no_grad():
        change = encoder.dense_embedding(image_map, *CLICKS, DenseInputs(boxes, valid)) - (
            encoder.dense_embedding(image_map, *CLICKS)
        )
    changed = change.abs().sum(1)[0] > 0
    assert changed.nonzero().unique(dim=0).tolist() == [[5, h, w] for h in range(5, 8) for w in range(10, 13)]


def test_positive_and_negative_scribbles_differ():
    encoder = _trained_encoder("scribble")
    image_map = torch.randn(1, TINY.neck_dim, *GRID)
    negative = _scribbles().flip(1)
    with torch.no_grad():
        at_positive = encoder.dense_embedding(image_map, *CLICKS, DenseInputs(scribbles=_scribbles()))
        at_negative = encoder.dense_embedding(image_map, *CLICKS, DenseInputs(scribbles=negative))
    assert (at_positive - at_negative).abs().sum() > 0


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_trained_prompts_change_the_networks_output(prompt):
    net = _net(prompt)
    assert net.prompt_encoder.dense_prompts is not None
    with torch.no_grad():
        net.prompt_encoder.dense_prompts.project.weight.normal_()
    image = torch.randn(1, 1, *CROP)
    kwargs, _ = PROMPTS[prompt]
    with torch.no_grad():
        assert not torch.equal(net(image, *CLICKS, **kwargs), net(image, *CLICKS))


def _token_centre(index: tuple[int, int, int]) -> list[float]:
    step = CROP[0] / GRID[0]
    return [(i + 0.5) * step - 0.5 for i in index]


def test_distance_maps_are_one_at_the_click_and_decay_exponentially():
    distance = ClickMaps(CROP, (8.0,), dim=4, encoding="distance")
    gaussian = ClickMaps(CROP, (8.0,), dim=4)
    points, labels = torch.tensor([[_token_centre((3, 4, 5))]]), torch.tensor([[1]])
    values = distance.maps(points, labels, GRID)[0, 0]
    assert values[3, 4, 5] == pytest.approx(1.0)
    along_w = values[3, 4, 5:]
    assert (along_w[1:] < along_w[:-1]).all()
    assert values[3, 4, 7] == pytest.approx(math.exp(-8 / 8.0))  # two tokens of 4 voxels away
    assert values[6, 8, 5] == pytest.approx(math.exp(-20 / 8.0))  # (12, 16, 0) voxels away: 20
    assert not torch.allclose(values, gaussian.maps(points, labels, GRID)[0, 0])
    assert distance.maps(points, labels.new_tensor([[0]]), GRID)[0, 0].abs().sum() == 0  # negative map only


def test_distance_encoding_is_built_from_the_setting_and_needs_click_maps():
    net = build_volumetric_sam("tiny", click_maps=True, click_encoding="distance")
    assert net.prompt_encoder.click_maps is not None
    assert net.prompt_encoder.click_maps.encoding == "distance"
    assert build_volumetric_sam("tiny", click_maps=True).prompt_encoder.click_maps.encoding == "gaussian"
    with pytest.raises(Sam3dError, match="click maps"):
        build_volumetric_sam("tiny", click_encoding="distance")
    with pytest.raises(Sam3dError, match="at most once"):
        replace(TINY, dense_prompts=("box", "box"))
    with pytest.raises(Sam3dError, match="dense_prompts"):
        replace(TINY, dense_prompts=("lasso",))  # type: ignore[arg-type]


def test_gradients_reach_the_projections():
    net = build_volumetric_sam("tiny", dense_prompts=("box", "scribble", "mask"))
    kwargs = {key: value for prompt in PROMPTS.values() for key, value in prompt[0].items()}
    kwargs["scribbles"] = _scribbles() + _scribbles().flip(1, 2)  # and a negative stroke elsewhere
    logits = net(torch.randn(1, 1, *CROP), *CLICKS, **kwargs)
    logits[:, 1].mean().backward()
    projection = net.prompt_encoder.dense_prompts.project  # type: ignore[union-attr]
    assert projection.weight.grad is not None
    assert (projection.weight.grad.abs().sum((0, 2, 3, 4)) > 0).all()  # every input channel


def _mask(shape: tuple[int, ...] = (1, 1, *CROP)) -> torch.Tensor:
    return torch.zeros(shape)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"boxes": torch.tensor([[[0.0, 0, 0, 9, 9, 64]]])}, ValueError, "lies outside the crop"),
        ({"boxes": torch.tensor([[[-1.0, 0, 0, 9, 9, 9]]])}, ValueError, "lies outside the crop"),
        ({"boxes": torch.tensor([[[9.0, 0, 0, 0, 9, 9]]])}, ValueError, "end before its start"),
        ({"boxes": torch.zeros(1, 1, 4)}, ValueError, r"boxes must have shape \(1, K, 6\)"),
        ({"boxes": _box_corner(), "box_valid": torch.ones(1, 2, dtype=torch.bool)}, ValueError, "box_valid"),
        ({"box_valid": torch.ones(1, 1, dtype=torch.bool)}, ValueError, "without boxes"),
        ({"previous_mask": _mask((1, 1, 64, 64, 32))}, ValueError, r"previous_mask must have shape"),
        ({"previous_mask": _mask() + 2}, ValueError, r"values in \[0, 1\]"),
        ({"scribbles": _mask()}, ValueError, r"scribbles must have shape \(1, 2, 64, 64, 64\)"),
        ({"scribbles": torch.zeros(1, 2, *CROP, dtype=torch.long)}, TypeError, "bool or float"),
    ],
)
def test_bad_prompts_are_refused(kwargs, error, match):
    net = _net("box", "scribble", "mask")
    with pytest.raises(error, match=match):
        net(torch.randn(1, 1, *CROP), *CLICKS, **kwargs)


def test_padding_boxes_are_not_checked():
    net = _net("box")
    boxes = torch.tensor([[[0.0, 0, 0, 9, 9, 9], [-1, -1, -1, -1, -1, -1]]])
    net(torch.randn(1, 1, *CROP), *CLICKS, boxes=boxes, box_valid=torch.tensor([[True, False]]))


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_a_prompt_type_not_enabled_is_refused_naming_the_setting(prompt):
    kwargs, _ = PROMPTS[prompt]
    others = tuple(other for other in PROMPTS if other != prompt)
    with pytest.raises(ValueError, match=f"'{prompt}' in VolumetricSamConfig.dense_prompts"):
        _net(*others)(torch.randn(1, 1, *CROP), *CLICKS, **kwargs)


def test_bf16_autocast_runs_the_dense_prompts_in_bfloat16():
    net = build_volumetric_sam("tiny", dense_prompts=("box", "scribble", "mask"))
    kwargs = {key: value for prompt in PROMPTS.values() for key, value in prompt[0].items()}
    image = torch.randn(1, 1, *CROP)
    recorder = float32_recorder(net, min_numel=max(p.numel() for p in net.parameters()) + 1)
    encoder = net.prompt_encoder.dense_prompts
    assert encoder is not None
    dense = DenseInputs(_box_corner(), None, _scribbles(), _blob())
    with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
        maps = encoder.maps(dense, 1, GRID)
        logits = net(image, *CLICKS, **kwargs)
    assert maps.dtype == torch.bfloat16
    assert logits.dtype == torch.bfloat16
    assert recorder.found == set()


def test_integer_boxes_and_bool_scribbles_read_as_their_float_values():
    encoder = _trained_encoder("box", "scribble")
    image_map = torch.randn(1, TINY.neck_dim, *GRID)
    as_float = DenseInputs(boxes=_box_corner(), scribbles=_scribbles())
    as_given = DenseInputs(boxes=_box_corner().long(), scribbles=_scribbles().bool())
    with torch.no_grad():
        expected = encoder.dense_embedding(image_map, *CLICKS, as_float)
        torch.testing.assert_close(encoder.dense_embedding(image_map, *CLICKS, as_given), expected)
