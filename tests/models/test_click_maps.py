"""Click maps (beyond the paper): the prompt encoder learns where the clicks are, not only what is under them."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sam3d.errors import Sam3dError
from sam3d.models import VARIANTS, VolumetricSamConfig, build_volumetric_sam
from sam3d.models.prompt_encoder import ClickMaps, ClickPromptEncoder

TINY = VARIANTS["tiny"]
GRID = TINY.token_grid  # 16^3 tokens of 4^3 voxels for the 64^3 crop


def _token_centre(index: tuple[int, int, int]) -> list[float]:
    step = TINY.crop_size[0] / GRID[0]
    return [(i + 0.5) * step - 0.5 for i in index]


def test_maps_are_gaussians_of_each_labels_nearest_click():
    maps = ClickMaps(TINY.crop_size, (2.0, 8.0), dim=4)
    points = torch.tensor([[_token_centre((3, 4, 5)), _token_centre((10, 10, 10)), [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])  # the padding click at the corner must leave no trace

    values = maps.maps(points, labels, GRID)

    assert values.shape == (1, 4, *GRID)
    positive, negative = values[0, 2], values[0, 3]  # the 8-voxel width
    assert positive[3, 4, 5] == pytest.approx(1.0)
    assert negative[10, 10, 10] == pytest.approx(1.0)
    assert negative[3, 4, 5] == pytest.approx(math.exp(-(28**2 + 24**2 + 20**2) / (2 * 8.0**2)), rel=1e-4)
    # One token (4 voxels) away along h, for each width.
    assert values[0, 0, 3, 5, 5] == pytest.approx(math.exp(-(4**2) / (2 * 2.0**2)))
    assert positive[3, 5, 5] == pytest.approx(math.exp(-(4**2) / (2 * 8.0**2)))
    # At the corner token, only the real clicks count (the padding click there would give ~1).
    assert positive[0, 0, 0] == pytest.approx(math.exp(-(12**2 + 16**2 + 20**2) / (2 * 8.0**2)), rel=1e-4)
    assert negative[0, 0, 0] < 1e-6


def test_no_clicks_give_empty_maps():
    maps = ClickMaps(TINY.crop_size, (4.0,), dim=4)
    assert maps.maps(torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.long), GRID).abs().sum() == 0


def test_untrained_maps_leave_the_papers_network_unchanged():
    torch.manual_seed(0)
    with_maps = build_volumetric_sam("tiny", click_maps=True, dense_prompts=("box", "mask")).eval()
    torch.manual_seed(0)
    without = build_volumetric_sam("tiny").eval()
    # the same seed gives every weight they share the same initial value
    theirs, ours = with_maps.state_dict(), without.state_dict()
    assert set(ours) < set(theirs)
    assert all(torch.equal(theirs[key], value) for key, value in ours.items())
    assert set(theirs) - set(ours) == {
        f"prompt_encoder.{part}.project.{name}"
        for part in ("click_maps", "dense_prompts")
        for name in ("weight", "bias")
    }
    assert with_maps.config.click_map_sigmas == (4.0, 16.0)  # 1/16 and 1/4 of the 64-voxel crop
    image, points = torch.randn(1, 1, *TINY.crop_size), torch.tensor([[[20.0, 30.0, 40.0], [5.0, 5, 5]]])
    labels = torch.tensor([[1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(with_maps(image, points, labels), without(image, points, labels))


def _with_sigmas(sigmas: tuple[float, ...]) -> VolumetricSamConfig:
    return replace(TINY, click_map_sigmas=sigmas)


def _encoders() -> tuple[ClickPromptEncoder, ClickPromptEncoder]:
    """The paper's prompt encoder, and the same with click maps whose projection has been trained."""
    torch.manual_seed(1)
    paper, with_maps = ClickPromptEncoder(TINY), ClickPromptEncoder(_with_sigmas((4.0,)))
    with_maps.load_state_dict(paper.state_dict(), strict=False)
    assert with_maps.click_maps is not None
    with torch.no_grad():
        with_maps.click_maps.project.weight.normal_()
    return paper.eval(), with_maps.eval()


def test_maps_tell_apart_clicks_on_look_alike_regions():
    """On a map whose every token looks the same, the paper's encoder cannot tell where a click is."""
    paper, with_maps = _encoders()
    uniform = torch.randn(1, TINY.neck_dim, 1, 1, 1).expand(1, TINY.neck_dim, *GRID).contiguous()
    labels = torch.tensor([[1]])
    near, far = torch.tensor([[_token_centre((2, 2, 2))]]), torch.tensor([[_token_centre((13, 13, 13))]])
    with torch.no_grad():
        torch.testing.assert_close(paper(uniform, near, labels), paper(uniform, far, labels))
        at_near, at_far = with_maps(uniform, near, labels), with_maps(uniform, far, labels)
    change = (at_near - at_far).abs().sum(1)[0]
    assert change[2, 2, 2] > 10 * change[7, 7, 7]
    assert change[13, 13, 13] > 10 * change[7, 7, 7]


def test_maps_train_and_widths_are_checked():
    net = build_volumetric_sam("tiny", click_maps=True)
    logits = net(torch.randn(1, 1, *TINY.crop_size), torch.tensor([[[30.0, 30, 30]]]), torch.tensor([[1]]))
    logits[:, 1].mean().backward()
    assert net.prompt_encoder.click_maps is not None
    assert net.prompt_encoder.click_maps.project.weight.grad.abs().sum() > 0
    with pytest.raises(Sam3dError, match="click_map_sigmas must be positive"):
        _with_sigmas((4.0, 0.0))
