"""``InteractionSession``: boxes, scribbles and the previous mask reach the network in crop coordinates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sam3d.errors import Sam3dError
from sam3d.interaction import InteractionSession
from sam3d.models import CropEncoding, build_volumetric_sam


class BoxAndScribbleNet(torch.nn.Module):
    """Stands in for a network with dense prompts: the object is the given boxes plus the positive scribbles.

    Records the keyword inputs of every ``segment`` call (crop coordinates).
    """

    def __init__(
        self, crop: tuple[int, int, int], prompts: tuple[str, ...] = ("box", "scribble", "mask")
    ) -> None:
        super().__init__()
        self.config = SimpleNamespace(crop_size=crop, dense_prompts=prompts)
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls: list[dict[str, torch.Tensor]] = []
        self.fail = False

    def encode_image(self, image: torch.Tensor) -> CropEncoding:
        return CropEncoding(last_map=image, decoder_context=image)

    def segment(self, encoding, points, labels=None, **dense):
        if self.fail:
            raise RuntimeError("out of memory")
        self.calls.append({"points": points, "labels": labels, **dense})
        inside = torch.zeros(self.config.crop_size, dtype=torch.bool)
        for box in dense.get("boxes", torch.zeros(1, 0, 6))[0].long().tolist():
            inside[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1] = True
        if "scribbles" in dense:
            inside |= dense["scribbles"][0, 0] > 0
        logit = torch.where(inside, 10.0, -10.0)
        return torch.stack([-logit, logit])[None]


def test_a_box_is_shifted_into_its_crop_and_segments_there():
    net = BoxAndScribbleNet((16, 16, 16))
    session = InteractionSession(net, torch.zeros(40, 40, 40))
    probability = session.add_box((10, 12, 14), (13, 17, 21))
    # The crop is centred on the box: centre (11, 14, 17) -> start (3, 6, 9).
    assert session.anchor.tolist() == [3, 6, 9]
    assert net.calls[0]["boxes"].tolist() == [[[7, 6, 5, 10, 11, 12]]]
    assert net.calls[0]["points"].shape == (1, 0, 3)  # a box alone: no click
    expected = torch.zeros(40, 40, 40, dtype=torch.bool)
    expected[10:14, 12:18, 14:22] = True
    assert torch.equal(probability > 0.5, expected)


def test_a_box_larger_than_the_crop_is_covered_by_the_full_protocol():
    net = BoxAndScribbleNet((16, 16, 16))
    session = InteractionSession(net, torch.zeros(30, 30, 60), "full")
    probability = session.add_box((10, 10, 5), (18, 18, 50))  # 46 voxels along w, a crop holds 16
    expected = torch.zeros(30, 30, 60, dtype=torch.bool)
    expected[10:19, 10:19, 5:51] = True
    assert torch.equal(probability > 0.5, expected)
    clipped = [call["boxes"][0, 0] for call in net.calls]
    assert all((box[:3] >= 0).all() and (box[3:] <= 15).all() for box in clipped)


def test_scribbles_render_in_their_channel_and_the_previous_mask_follows():
    net = BoxAndScribbleNet((16, 16, 16))
    session = InteractionSession(net, torch.zeros(32, 32, 32))
    first = session.add_scribble([(16, 16, 14), (16, 16, 15), (16, 16, 16)])
    assert not net.calls[0]["previous_mask"].any()  # nothing before
    start = session.anchor
    assert start.tolist() == [8, 8, 7]
    scribbles = net.calls[0]["scribbles"][0]
    assert scribbles[0].nonzero().tolist() == [[8, 8, 7], [8, 8, 8], [8, 8, 9]]
    assert not scribbles[1].any()
    session.add_scribble([(10, 12, 9)], positive=False)
    second = net.calls[1]
    assert second["scribbles"][0, 1].nonzero().tolist() == [[2, 4, 2]]
    assert second["scribbles"][0, 0].sum() == 3  # the first scribble is still there
    torch.testing.assert_close(second["previous_mask"][0, 0], first[8:24, 8:24, 7:23])


def test_undo_restores_the_probability_the_next_interaction_builds_on():
    net = BoxAndScribbleNet((16, 16, 16))
    session = InteractionSession(net, torch.zeros(32, 32, 32))
    first = session.add_box((12, 12, 12), (14, 14, 14))
    session.add_box((16, 16, 16), (20, 20, 20))
    assert torch.equal(session.undo(), first)
    assert [i.kind for i in session.interactions] == ["box"]
    session.add_click((13, 13, 13), positive=False)
    assert session.anchor.tolist() == [5, 5, 5]
    torch.testing.assert_close(net.calls[-1]["previous_mask"][0, 0], first[5:21, 5:21, 5:21])
    assert net.calls[-1]["boxes"].shape == (1, 1, 6)  # the undone box is gone
    assert net.calls[-1]["labels"].tolist() == [[0]]


def test_refused_or_failed_interactions_are_not_kept():
    clicks_only = BoxAndScribbleNet((16, 16, 16), prompts=())
    session = InteractionSession(clicks_only, torch.zeros(32, 32, 32))
    with pytest.raises(Sam3dError, match=r"takes no box prompts.*configs/prompts/box.yaml"):
        session.add_box((1, 1, 1), (3, 3, 3))
    session = InteractionSession(BoxAndScribbleNet((16, 16, 16)), torch.zeros(32, 32, 32))
    with pytest.raises(Sam3dError, match="first interaction must be positive"):
        session.add_scribble([(3, 3, 3)], positive=False)
    with pytest.raises(Sam3dError, match=r"scribble voxel \[3.0, 40.0, 3.0\] lies outside the volume"):
        session.add_scribble([(3, 3, 3), (3, 40, 3)])
    session.encoder.net.fail = True
    with pytest.raises(RuntimeError):
        session.add_box((1, 1, 1), (3, 3, 3))
    assert session.interactions == ()
    assert session.anchor is None


def test_the_session_feeds_a_real_network_what_a_direct_call_would_get():
    torch.manual_seed(0)
    net = build_volumetric_sam("tiny", dense_prompts=("box", "mask")).eval()
    with torch.no_grad():
        for parameter in net.prompt_encoder.dense_prompts.parameters():
            parameter.normal_(0, 0.5)
    image = torch.randn(80, 80, 80)
    session = InteractionSession(net, image, "paper")
    first = session.add_box((30, 30, 30), (45, 40, 50))  # centre (37, 35, 40): crop start (5, 3, 8)
    second = session.add_click((40, 36, 41), positive=False)
    crop = (slice(5, 69), slice(3, 67), slice(8, 72))
    with torch.no_grad():
        logits = net(
            image[crop][None, None],
            torch.tensor([[[35.0, 33.0, 33.0]]]),
            torch.tensor([[0]]),
            boxes=torch.tensor([[[25.0, 27.0, 22.0, 40.0, 37.0, 42.0]]]),
            previous_mask=first[crop][None, None],
        )
    torch.testing.assert_close(second[crop], logits.softmax(1)[0, 1])
    assert not torch.equal(first, second)
