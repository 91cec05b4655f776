"""Behaviour of the volumetric SAM network: shapes, freezing, gradients, batching, clicks."""

from __future__ import annotations

import pytest
import torch

from sam3d.models import (
    VARIANTS,
    VolumetricSam,
    build_volumetric_sam,
    freeze_like_paper,
    trainable_parameter_groups,
)
from sam3d.models.prompt_encoder import QueryAttention

TINY_CROP = VARIANTS["tiny"].crop_size


@pytest.fixture(scope="module")
def tiny_net() -> VolumetricSam:
    torch.manual_seed(0)
    net = build_volumetric_sam("tiny")
    # Give every zero-initialised tensor a value so no path is trivially inert.
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "rel_pos" in name or "label_embed" in name:
                parameter.normal_(0, 0.1)
    return net.eval()


def _image(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, *TINY_CROP)


def test_token_grids_follow_crop_size():
    assert VARIANTS["vit_b"].token_grid == (32, 32, 32)
    assert VARIANTS["tiny"].token_grid == (16, 16, 16)
    assert VARIANTS["vit_b"].with_crop_size(64).token_grid == (16, 16, 16)
    assert VARIANTS["vit_b"].with_crop_size((128, 96, 64)).token_grid == (32, 24, 16)


@pytest.mark.parametrize("crop", [100, (128, 128, 120)])
def test_crop_size_the_network_cannot_take(crop):
    with pytest.raises(ValueError, match=r"crop size .* cannot be taken .* multiple of 32 voxels"):
        VARIANTS["vit_b"].with_crop_size(crop)


def test_output_shape(tiny_net):
    logits = tiny_net(_image(2), torch.tensor([[[5.0, 6.0, 7.0]], [[30.0, 31.0, 32.0]]]))
    assert logits.shape == (2, 2, *TINY_CROP)
    assert torch.isfinite(logits).all()


def test_vit_b_parameter_counts_match_the_paper():
    with torch.device("meta"):
        net = freeze_like_paper(VolumetricSam(VARIANTS["vit_b"]))
    groups = trainable_parameter_groups(net)
    counts = {part: sum(p.numel() for p in params) for part, params in groups.items()}
    assert counts["encoder"] == 15_209_984  # paper: 15.21M
    assert counts["decoder"] == 7_088_256  # paper: 7.09M
    # The authors' prompt encoder also builds a token-to-image attention per layer that it never calls
    # (so it never trains); we do not build it, and we add a 2 x 256 click-label embedding.
    dead = 2 * sum(p.numel() for p in QueryAttention(256, 8, downsample_rate=2).parameters())
    label_embedding = net.prompt_encoder.label_embed.weight.numel()
    assert counts["prompt_encoder"] + dead - label_embedding == 3_164_160  # paper: 3.16M
    trainable_as_paper_counts = sum(counts.values()) + dead - label_embedding
    assert round(trainable_as_paper_counts / 1e6, 2) == 25.46
    total = sum(p.numel() for p in net.parameters())
    assert 113.5e6 < total < 114.5e6  # paper: about 114M in all


def test_only_the_papers_parts_train():
    net = build_volumetric_sam("tiny")
    trainable = {n for n, p in net.image_encoder.named_parameters() if p.requires_grad}
    frozen = {n for n, p in net.image_encoder.named_parameters() if not p.requires_grad}
    assert {
        "slice_embed.weight",
        "depth_embed",
        "blocks.0.adapter.conv.weight",
        "blocks.3.attn.rel_pos_d",
    } <= trainable
    assert {"necks.0.0.weight", "blocks.1.norm1.weight", "blocks.2.norm2.bias"} <= trainable
    assert {
        "patch_embed.proj.weight",
        "pos_embed",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.bias",
    } <= frozen
    assert {"blocks.1.attn.rel_pos_h", "blocks.1.attn.rel_pos_w", "blocks.2.mlp.lin1.weight"} <= frozen
    assert all(p.requires_grad for p in net.prompt_encoder.parameters())
    assert all(p.requires_grad for p in net.mask_decoder.parameters())


def test_gradients_reach_only_trainable_tensors():
    torch.manual_seed(1)
    net = build_volumetric_sam("tiny").train()
    with torch.no_grad():
        net.prompt_encoder.label_embed.weight.normal_()
    logits = net(_image(), torch.tensor([[[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]]), torch.tensor([[1, 0]]))
    logits.log_softmax(1)[:, 1].mean().backward()
    for name, parameter in net.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_batch_of_two_equals_two_batches_of_one(tiny_net):
    images = _image(2)
    first = torch.tensor([[3.0, 4.0, 5.0], [60.0, 2.0, 33.0], [20.0, 20.0, 20.0]])
    second = torch.tensor([[40.0, 41.0, 42.0]])
    padded = torch.zeros(2, 3, 3)
    padded[0], padded[1, :1] = first, second
    labels = torch.tensor([[1, 0, 1], [1, -1, -1]])
    batched = tiny_net(images, padded, labels)
    alone_0 = tiny_net(images[:1], first[None], labels[:1])
    alone_1 = tiny_net(images[1:], second[None], labels[1:, :1])
    torch.testing.assert_close(batched[0], alone_0[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1], alone_1[0], atol=1e-5, rtol=1e-5)


def test_labels_default_to_positive_and_negative_clicks_differ(tiny_net):
    image, points = _image(), torch.tensor([[[30.0, 30.0, 30.0], [10.0, 50.0, 12.0]]])
    default = tiny_net(image, points)
    torch.testing.assert_close(default, tiny_net(image, points, torch.ones(1, 2, dtype=torch.long)))
    assert not torch.allclose(default, tiny_net(image, points, torch.tensor([[1, 0]])))


def test_label_embedding_starts_at_zero():
    net = build_volumetric_sam("tiny").eval()
    image, points = _image(), torch.tensor([[[30.0, 30.0, 30.0], [10.0, 50.0, 12.0]]])
    torch.testing.assert_close(net(image, points, torch.tensor([[1, 0]])), net(image, points))


def test_clicks_move_the_output(tiny_net):
    image = _image()
    near = tiny_net(image, torch.tensor([[[5.0, 5.0, 5.0]]]))
    far = tiny_net(image, torch.tensor([[[60.0, 60.0, 60.0]]]))
    assert not torch.allclose(near, far)


def test_no_clicks_and_all_padding_do_not_crash(tiny_net):
    image = _image()
    empty = tiny_net(image, torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.long))
    padding = tiny_net(image, torch.zeros(1, 2, 3), torch.full((1, 2), -1))
    torch.testing.assert_close(empty, padding, atol=1e-5, rtol=1e-5)


def test_click_outside_the_crop_is_refused(tiny_net):
    with pytest.raises(ValueError, match=r"click 1 of sample 0 .* outside the crop"):
        tiny_net(_image(), torch.tensor([[[1.0, 2.0, 3.0], [1.0, 64.0, 3.0]]]))
    # padding entries may hold any coordinate
    tiny_net(_image(), torch.tensor([[[1.0, 2.0, 3.0], [-5.0, 99.0, 3.0]]]), torch.tensor([[1, -1]]))


@pytest.mark.parametrize(
    ("shape", "message"), [((1, 1, 32, 64, 64), r"\(B, 1, 64, 64, 64\)"), ((1, 3, 64, 64, 64), r"\(B, 1, 64")]
)
def test_wrong_image_shape_is_refused(tiny_net, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_net(torch.zeros(shape), torch.zeros(1, 1, 3))


def test_bad_labels_are_refused(tiny_net):
    with pytest.raises(ValueError, match="labels must be 1"):
        tiny_net(_image(), torch.zeros(1, 1, 3), torch.tensor([[2]]))
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 1\)"):
        tiny_net(_image(), torch.zeros(1, 1, 3), torch.tensor([[1, 1]]))


def test_features_can_be_reused_across_click_sets(tiny_net):
    image, points = _image(), torch.tensor([[[12.0, 30.0, 50.0]]])
    encoding = tiny_net.encode_image(image)
    torch.testing.assert_close(tiny_net.segment(encoding, points), tiny_net(image, points), rtol=0, atol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_have_their_parameters_strides(fused):
    """DDP copies gradients into buckets laid out like the parameters and warns (and slows) on a mismatch."""
    net = build_volumetric_sam("tiny", freeze=False).train()
    net.image_encoder.fused = fused
    net.activation_checkpointing = True
    net(_image(), torch.tensor([[[10.0, 20.0, 30.0]]])).mean().backward()
    mismatched = {
        name: (p.stride(), p.grad.stride())
        for name, p in net.named_parameters()
        if p.grad.stride() != p.stride()
    }
    assert mismatched == {}
