"""Whole-volume protocols: one crop at the clicks (paper) and crops that follow the object (full)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sam3d.inference import segment_around_clicks, segment_object


class ObjectFromIntensity(torch.nn.Module):
    """Stands in for a perfect network: foreground wherever the crop's intensity is positive."""

    def __init__(self, crop: tuple[int, int, int]) -> None:
        super().__init__()
        self.config = SimpleNamespace(crop_size=crop)
        self.sharpness = torch.nn.Parameter(torch.tensor(20.0))
        self.calls = 0

    def forward(self, image, points, labels=None):
        self.calls += 1
        assert len(points[0]) > 0
        assert ((points >= 0) & (points <= torch.tensor(self.config.crop_size) - 1)).all(), (
            "click outside crop"
        )
        return torch.cat([-self.sharpness * image, self.sharpness * image], 1)


def _volume() -> tuple[torch.Tensor, torch.Tensor]:
    """A tube 110 voxels long (longer than a 32^3 crop) and a separate blob far from it."""
    d, h, w = torch.meshgrid(torch.arange(48), torch.arange(56), torch.arange(140), indexing="ij")
    tube = ((d - 24) ** 2 + (h - 28) ** 2 <= 36) & (w >= 15) & (w < 125)
    blob = (d - 6) ** 2 + (h - 6) ** 2 + (w - 6) ** 2 <= 9
    return torch.where(tube | blob, 1.0, -1.0), tube


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_full_protocol_covers_an_object_longer_than_the_crop():
    image, tube = _volume()
    net = ObjectFromIntensity((32, 32, 32))
    click = torch.tensor([[24.0, 28.0, 70.0]])
    paper = segment_around_clicks(net, image, click) > 0.5
    full = segment_object(net, image, click) > 0.5
    assert _dice(paper, tube) < 0.5  # one crop holds 32 of the tube's 110 voxels of length
    assert _dice(full, tube) > 0.99
    assert not full[:12, :12, :12].any()  # the separate blob is not connected to the click
    assert net.calls < 20


def test_full_protocol_on_an_object_inside_one_crop_is_the_paper_protocol():
    image = -torch.ones(64, 64, 64)
    image[28:36, 28:36, 28:36] = 1.0
    net = ObjectFromIntensity((32, 32, 32))
    click = torch.tensor([[31.0, 31.0, 31.0]])
    full = segment_object(net, image, click)
    assert net.calls == 1
    torch.testing.assert_close(full > 0.5, segment_around_clicks(net, image, click) > 0.5)


def test_segment_around_clicks_pastes_the_crop_at_the_clicks():
    from sam3d.models import build_volumetric_sam

    net = build_volumetric_sam("tiny").eval()
    image = torch.randn(70, 90, 100)
    probability = segment_around_clicks(net, image, torch.tensor([[5.0, 80.0, 50.0]]))
    inside = probability > 0
    indices = inside.nonzero()
    # crop of 64^3 centred on the click, clipped to the volume
    assert indices.min(0).values.tolist() == [0, 48, 18]
    assert indices.max(0).values.tolist() == [36, 89, 81]
