"""Whole-volume protocols: one crop at the clicks (paper) and crops that follow the object (full)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sam3d.errors import Sam3dError
from sam3d.inference import CropEncoder, VolumePrompts, segment_around_clicks, segment_object
from sam3d.interaction import InteractionSession
from sam3d.models import CropEncoding, build_volumetric_sam


class ObjectFromIntensity(torch.nn.Module):
    """Stands in for a perfect network: foreground wherever the crop's intensity is positive."""

    def __init__(self, crop: tuple[int, int, int]) -> None:
        super().__init__()
        self.config = SimpleNamespace(crop_size=crop, dense_prompts=())
        self.sharpness = torch.nn.Parameter(torch.tensor(20.0))
        self.calls = 0

    def encode_image(self, image):
        self.calls += 1
        return CropEncoding(last_map=image, decoder_context=image)

    def segment(self, encoding, points, labels=None):
        assert len(points[0]) > 0
        assert ((points >= 0) & (points <= torch.tensor(self.config.crop_size) - 1)).all(), (
            "click outside crop"
        )
        image = encoding.last_map
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
    paper = segment_around_clicks(CropEncoder(net, 0), image, VolumePrompts.from_clicks(click)) > 0.5
    full = segment_object(CropEncoder(net, 0), image, VolumePrompts.from_clicks(click)) > 0.5
    assert _dice(paper, tube) < 0.5  # one crop holds 32 of the tube's 110 voxels of length
    assert _dice(full, tube) > 0.99
    assert not full[:12, :12, :12].any()  # the separate blob is not connected to the click
    assert net.calls < 20
    # a session grows into the neighbouring crops by default: one click covers the whole tube
    session = InteractionSession(ObjectFromIntensity((32, 32, 32)), image)
    assert _dice(session.add_click(click[0]) > 0.5, tube) > 0.99


def test_full_protocol_on_an_object_inside_one_crop_is_the_paper_protocol():
    image = -torch.ones(64, 64, 64)
    image[28:36, 28:36, 28:36] = 1.0
    net = ObjectFromIntensity((32, 32, 32))
    click = torch.tensor([[31.0, 31.0, 31.0]])
    full = segment_object(CropEncoder(net, 0), image, VolumePrompts.from_clicks(click))
    assert net.calls == 1
    torch.testing.assert_close(
        full > 0.5, segment_around_clicks(CropEncoder(net, 0), image, VolumePrompts.from_clicks(click)) > 0.5
    )


def test_segment_around_clicks_pastes_the_crop_at_the_clicks():
    net = build_volumetric_sam("tiny").eval()
    image = torch.randn(70, 90, 100)
    probability = segment_around_clicks(
        CropEncoder(net, 0), image, VolumePrompts.from_clicks(torch.tensor([[5.0, 80.0, 50.0]]))
    )
    inside = probability > 0
    indices = inside.nonzero()
    # crop of 64^3 centred on the click, clipped to the volume
    assert indices.min(0).values.tolist() == [0, 48, 18]
    assert indices.max(0).values.tolist() == [36, 89, 81]


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    net = build_volumetric_sam("tiny").eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "label_embed" in name or "rel_pos" in name:
                parameter.normal_(0, 0.5)
    return net


def test_crop_encoder_reuses_only_identical_crops_of_unchanged_weights(tiny_net):
    encoder = CropEncoder(tiny_net, capacity=2)
    patch = torch.randn(64, 64, 64)
    first = encoder(patch)
    assert encoder(patch.clone()) is first  # the same voxels: reused
    changed = patch.clone()
    changed[10, 20, 30] += 1e-3  # the same crop position, another image: never the stale encoding
    assert encoder(changed) is not first
    with torch.no_grad():
        tiny_net.mask_decoder.fuse[0].weight.mul_(1.0)  # an in-place update, as an optimiser step
    assert encoder(patch) is not first
    assert (encoder.hits, encoder.misses) == (1, 3)
    encoder(torch.randn(64, 64, 64))
    encoder(torch.randn(64, 64, 64))
    assert len(encoder._encodings) == 2  # least recently used encodings leave first


def test_correction_clicks_reuse_the_crop_and_equal_a_full_forward(tiny_net):
    torch.manual_seed(1)
    image = torch.randn(100, 100, 100)
    session = InteractionSession(tiny_net, image, "paper")
    session.add_click((50, 50, 50))  # its 64^3 crop, [18, 82) on every axis, lies inside the volume
    session.add_click((54, 45, 55), positive=False)
    probability = session.add_click((40, 60, 48))  # the crop stays where the first click put it
    assert session.encoder.misses == 1
    assert session.encoder.hits == 2
    with torch.no_grad():
        logits = tiny_net(
            image[None, None, 18:82, 18:82, 18:82], (session.points - 18)[None], session.labels[None]
        )
    torch.testing.assert_close(probability[18:82, 18:82, 18:82], logits.softmax(1)[0, 1], rtol=0, atol=0)
    assert not probability[:18].any()
    replay = InteractionSession(tiny_net, image, "paper")
    replay.add_click((50, 50, 50))
    assert torch.equal(session.undo(), replay.add_click((54, 45, 55), positive=False))


def test_full_protocol_corrections_revisit_the_same_crops():
    image, _ = _volume()
    net = ObjectFromIntensity((32, 32, 32))
    session = InteractionSession(net, image, "full")
    first = session.add_click((24, 28, 70))
    calls = net.calls
    again = session.add_click((24, 28, 90))
    assert net.calls == calls  # every crop was encoded for the first click
    assert session.encoder.hits > 0
    torch.testing.assert_close(again, first)


def test_click_session_refuses_bad_clicks(tiny_net):
    session = InteractionSession(tiny_net, torch.randn(40, 40, 40))
    with pytest.raises(Sam3dError, match=r"outside the volume of shape \(40, 40, 40\)"):
        session.add_click((10, 40, 3))
    with pytest.raises(Sam3dError, match="first interaction must be positive"):
        session.add_click((10, 10, 10), positive=False)
    assert not len(session.points)  # refused clicks are not kept
    with pytest.raises(Sam3dError, match="3D float tensor"):
        InteractionSession(tiny_net, torch.zeros(4, 4))


@pytest.mark.parametrize(("protocol", "pad"), [("paper", 0.0), ("full", -3.0)])
def test_test_crop_rounds_its_centre_down_and_pads_as_the_protocol_says(protocol, pad):
    net = ObjectFromIntensity((8, 8, 8))
    patches = []
    encode = net.encode_image
    net.encode_image = lambda image: patches.append(image[0, 0].clone()) or encode(image)
    image = torch.full((20, 20, 20), -1.0)
    image[19, 0, 0] = -3.0  # the volume's minimum, outside the crop
    clicks = torch.tensor([[1.0, 10.0, 16.0], [2.0, 11.0, 17.0]])  # bounding-box midpoint (1.5, 10.5, 16.5)
    InteractionSession(net, image, protocol, cache_size=0).add_clicks(clicks)
    # Centre (1, 10, 16) rounded down as the authors do (not 2 as half-to-even rounding gives), so the
    # crop starts at d = -3: three padded slices, with the dataset mean (0) in the paper's protocol.
    patch = patches[0]
    assert (patch[:3] == pad).all()
    assert (patch[3:] == -1.0).all()


class ClickRecorder(ObjectFromIntensity):
    """Records the clicks each crop's decoding gets, wherever they lie."""

    def __init__(self, crop: tuple[int, int, int]) -> None:
        super().__init__(crop)
        self.points: list[torch.Tensor] = []

    def segment(self, encoding, points, labels=None):
        self.points.append(points[0].clone())
        image = encoding.last_map
        return torch.cat([-self.sharpness * image, self.sharpness * image], 1)


def test_the_paper_protocol_passes_clicks_outside_its_crop_as_the_authors_test():
    image = torch.randn(40, 40, 40)
    clicks = torch.tensor([[5.0, 5.0, 5.0], [5.0, 5.0, 14.0]])  # 9 voxels apart along w, an 8^3 crop
    paper = ClickRecorder((8, 8, 8))
    segment_around_clicks(CropEncoder(paper, 0), image, VolumePrompts.from_clicks(clicks))
    # the crop starts at the midpoint (5, 5, 9) minus 4: the second click lies one voxel past its w edge
    torch.testing.assert_close(paper.points[0], torch.tensor([[4.0, 4.0, 0.0], [4.0, 4.0, 9.0]]))
    full = ClickRecorder((8, 8, 8))
    segment_object(CropEncoder(full, 0), image, VolumePrompts.from_clicks(clicks))
    assert all(((p >= 0) & (p <= 7)).all() for p in full.points)  # crops that follow the object drop them
