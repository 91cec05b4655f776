"""The five adaptations of SAM's encoder: what each adds, what trains, parameter counts at vit_b."""

from __future__ import annotations

import pytest
import torch

from sam3d.errors import Sam3dError
from sam3d.models import ADAPTATIONS, VARIANTS, VolumetricSam, build_sam_2d, build_volumetric_sam
from sam3d.models.adapters import BottleneckAdapter, LowRankLinear

CROP = (32, 32, 32)  # the smallest crop the tiny network takes: fast on CPUs


def _trainable(net: VolumetricSam) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _vit_b(adaptation: str, lora_rank: int = 4) -> VolumetricSam:
    with torch.device("meta"):  # shapes only: no vit_b weights are allocated
        return build_volumetric_sam("vit_b", adaptation=adaptation, lora_rank=lora_rank)  # type: ignore[arg-type]


def test_vit_b_trainable_parameter_counts():
    config = VARIANTS["vit_b"]
    dim, depth, hidden = config.embed_dim, config.depth, int(config.embed_dim * config.adapter_ratio)
    counts = {adaptation: _trainable(_vit_b(adaptation)) for adaptation in ADAPTATIONS}
    assert counts["frozen"] < counts["bottleneck"] < counts["spatial"] < counts["full"]
    assert counts["spatial"] == 25_199_488  # the paper's network (see test_network for the paper's split)
    # per block: the bottleneck's two projections; the spatial adapter's depthwise 3x3x3 convolution on top
    assert counts["bottleneck"] - counts["frozen"] == depth * (2 * dim * hidden + hidden + dim)
    assert counts["spatial"] - counts["bottleneck"] == depth * (27 * hidden + hidden)
    # full trains every weight of the network without adapters
    assert counts["full"] == sum(p.numel() for p in _vit_b("frozen").parameters())
    # LoRA: rank x (in + out) per qkv projection (in = dim, out = 3 dim), on top of the frozen set
    for rank in (1, 4, 16):
        assert _trainable(_vit_b("lora", rank)) - counts["frozen"] == depth * rank * (dim + 3 * dim)


@pytest.mark.parametrize("adaptation", ADAPTATIONS)
def test_each_adaptation_trains_what_it_says(adaptation):
    torch.manual_seed(0)
    net = build_volumetric_sam("tiny", crop_size=CROP, adaptation=adaptation, lora_rank=2).train()
    with torch.no_grad():  # zero-initialised tensors would leave paths without gradient
        for name, parameter in net.named_parameters():
            if "rel_pos" in name or "label_embed" in name or "lora_up" in name:
                parameter.normal_(0, 0.1)
    logits = net(torch.randn(1, 1, *CROP), torch.tensor([[[10.0, 20.0, 30.0]]]))
    assert logits.shape == (1, 2, *CROP)
    logits.log_softmax(1)[:, 1].mean().backward()
    trainable = {n for n, p in net.image_encoder.named_parameters() if p.requires_grad}
    for name, parameter in net.named_parameters():
        assert (parameter.grad is not None and parameter.grad.abs().sum() > 0) == parameter.requires_grad, (
            name
        )
    block = net.image_encoder.blocks[0]
    if adaptation in ("spatial", "bottleneck"):
        assert isinstance(block.adapter, BottleneckAdapter)
        assert (block.adapter.conv is not None) == (adaptation == "spatial")
    else:
        assert isinstance(block.adapter, torch.nn.Identity)
    assert isinstance(block.attn.qkv, LowRankLinear) == (adaptation == "lora")
    assert ("blocks.0.attn.qkv.weight" in trainable) == (adaptation == "full")
    assert ("blocks.0.attn.qkv.lora_up" in trainable) == (adaptation == "lora")
    assert {"slice_embed.weight", "depth_embed", "necks.0.0.weight", "blocks.1.norm1.weight"} <= trainable


def test_lora_starts_as_the_frozen_network():
    torch.manual_seed(0)
    frozen = build_volumetric_sam("tiny", crop_size=CROP, adaptation="frozen").eval()
    lora = build_volumetric_sam("tiny", crop_size=CROP, adaptation="lora", lora_rank=3).eval()
    missing, unexpected = lora.load_state_dict(frozen.state_dict(), strict=False)
    assert unexpected == []
    assert missing
    assert all(k.endswith(("lora_down", "lora_up")) for k in missing)
    image, points = torch.randn(1, 1, *CROP), torch.tensor([[[10.0, 20.0, 30.0]]])
    with torch.no_grad():
        torch.testing.assert_close(lora(image, points), frozen(image, points), rtol=0, atol=0)
        lora.image_encoder.blocks[0].attn.qkv.lora_up.normal_()
        assert not torch.allclose(lora(image, points), frozen(image, points))


@pytest.mark.parametrize("adaptation", ["bottleneck", "lora", "frozen", "full"])
def test_sam_weights_load_into_every_adaptation(tmp_path, adaptation):
    sam = build_sam_2d(VARIANTS["tiny"])
    torch.save(sam.state_dict(), tmp_path / "sam_tiny.pth")
    net = build_volumetric_sam("tiny", sam_checkpoint=tmp_path / "sam_tiny.pth", adaptation=adaptation)
    torch.testing.assert_close(
        net.image_encoder.blocks[1].attn.qkv.weight, sam.image_encoder.blocks[1].attn.qkv.weight
    )


def test_unknown_adaptation_and_bad_rank_are_refused():
    with pytest.raises(Sam3dError, match="unknown adaptation 'adapterz'; choose one of spatial, bottleneck"):
        build_volumetric_sam("tiny", adaptation="adapterz")  # type: ignore[arg-type]
    with pytest.raises(Sam3dError, match="lora_rank must be at least 1, got 0"):
        build_volumetric_sam("tiny", adaptation="lora", lora_rank=0)
