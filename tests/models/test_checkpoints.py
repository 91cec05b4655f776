"""Loading SAM's official checkpoints and the authors' 3D checkpoints, and refusing bad files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sam3d.models import CheckpointError, build_sam_2d, build_volumetric_sam, load_reference_checkpoint
from sam3d.models.config import VARIANTS


def _save_random_sam(variant: str, path: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised SAM saved as Meta publishes its checkpoints (a ``Sam`` state dict)."""
    sam = build_sam_2d(VARIANTS[variant])
    with torch.no_grad():
        for name, parameter in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                parameter.normal_()
    state = sam.state_dict()
    torch.save(state, path)
    return state


def _assert_sam_encoder_landed(net, sam_state):
    ours = net.image_encoder.state_dict()
    copied = 0
    for key, value in sam_state.items():
        if key.startswith("image_encoder.") and not key.startswith("image_encoder.neck."):
            torch.testing.assert_close(ours[key.removeprefix("image_encoder.")], value, rtol=0, atol=0)
            copied += 1
    assert copied == sum(1 for k in sam_state if k.startswith("image_encoder.") and ".neck." not in k)
    for index, block in enumerate(net.image_encoder.blocks):
        prefix = f"image_encoder.blocks.{index}.attn."
        expected = 0.5 * (sam_state[prefix + "rel_pos_h"] + sam_state[prefix + "rel_pos_w"])
        torch.testing.assert_close(block.attn.rel_pos_d.detach(), expected)


def test_tiny_sam_checkpoint_round_trip(tmp_path):
    state = _save_random_sam("tiny", tmp_path / "sam_tiny.pth")
    net = build_volumetric_sam("tiny", sam_checkpoint=tmp_path / "sam_tiny.pth")
    _assert_sam_encoder_landed(net, state)
    assert not net.image_encoder.patch_embed.proj.weight.requires_grad


def test_vit_b_sam_checkpoint_round_trip(tmp_path):
    state = _save_random_sam("vit_b", tmp_path / "sam_vit_b.pth")
    net = build_volumetric_sam("vit_b", sam_checkpoint=tmp_path / "sam_vit_b.pth")
    _assert_sam_encoder_landed(net, state)


def test_sam_checkpoint_of_another_variant_is_refused(tmp_path):
    _save_random_sam("tiny", tmp_path / "sam_tiny.pth")
    with pytest.raises(CheckpointError, match=r"sam_tiny\.pth is a SAM tiny checkpoint .* network is vit_b"):
        build_volumetric_sam("vit_b", sam_checkpoint=tmp_path / "sam_tiny.pth")


def test_missing_sam_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist"):
        build_volumetric_sam("tiny", sam_checkpoint=tmp_path / "nope.pth")


def test_truncated_sam_checkpoint(tmp_path):
    _save_random_sam("tiny", tmp_path / "sam.pth")
    data = (tmp_path / "sam.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"cut\.pth could not be read as a PyTorch file \(truncated or corrupt"
    ):
        build_volumetric_sam("tiny", sam_checkpoint=tmp_path / "cut.pth")


def test_file_that_is_not_a_sam_checkpoint(tmp_path):
    torch.save({"model": {"weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth is not a SAM checkpoint"):
        build_volumetric_sam("tiny", sam_checkpoint=tmp_path / "other.pth")


def test_sam_checkpoint_with_a_wrong_tensor(tmp_path):
    state = _save_random_sam("tiny", tmp_path / "sam.pth")
    state["image_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"(?s)bad\.pth does not match .*qkv"):
        build_volumetric_sam("tiny", sam_checkpoint=tmp_path / "bad.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_run(tmp_path, capsys):
    torch.save({"image_encoder.patch_embed.proj.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        build_volumetric_sam("tiny", sam_checkpoint=tmp_path / "evil.pth")
    assert "pickled code ran" not in capsys.readouterr().out


# Our names -> the authors' (the inverse of sam3d.models.reference), to write files in their format.
_TO_REFERENCE = {
    "image_encoder": [
        (r"attn\.rel_pos_scale$", "attn.lr"),
        (r"adapter\.down\.", "adapter.linear1."),
        (r"adapter\.up\.", "adapter.linear2."),
        (r"^necks\.", "neck_3d."),
    ],
    "prompt_encoder": [(r"global_queries$", "global_query"), (r"^layers\.", "transformer.layers.")],
    "mask_decoder": [(r"^fuse\.", "cls.")],
}


def _reference_state(part: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in module.state_dict().items():
        if key.startswith("label_embed."):
            continue
        for pattern, replacement in _TO_REFERENCE[part]:
            key = re.sub(pattern, replacement, key)
        key = re.sub(r"^levels\.(\d)\.", lambda m: f"mlahead.head{int(m.group(1)) + 2}.", key)
        # the authors' maps are (H, W, D): move our leading depth axis of each 3D kernel to the end
        state[key] = value.permute(0, 1, 3, 4, 2).clone() if value.ndim == 5 else value.clone()
    return state


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    torch.manual_seed(3)
    net = build_volumetric_sam("vit_b", freeze=False)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0, 0.02)
    prompt = _reference_state("prompt_encoder", net.prompt_encoder)
    prompt["positional_encoding_gaussian_matrix"] = torch.randn(3, 128)
    for layer in range(2):
        prompt[f"transformer.layers.{layer}.cross_attn_token_to_image.q_proj.weight"] = torch.randn(128, 256)
    encoder = _reference_state("image_encoder", net.image_encoder)
    encoder["blocks.0.attn_mask"] = torch.zeros(64, 512, 512)
    checkpoint = {
        "epoch": 200,
        "best_val_loss": np.float64(0.31),
        "encoder_dict": encoder,
        "decoder_dict": _reference_state("mask_decoder", net.mask_decoder),
        "feature_dict": [{}, {}, {}, prompt],
        "encoder_opt": {"state": {}, "param_groups": [{"lr": 4e-4, "params": [0, 1]}]},
    }
    path = tmp_path_factory.mktemp("reference") / "best.pth.tar"
    torch.save(checkpoint, path)
    return path, net.state_dict(), checkpoint


def test_reference_checkpoint_round_trip(reference_file):
    path, expected, checkpoint = reference_file
    net = load_reference_checkpoint(path)
    loaded = net.state_dict()
    for key, value in expected.items():
        if not key.startswith("prompt_encoder.label_embed"):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    assert (net.prompt_encoder.label_embed.weight == 0).all()
    # the authors' slice embedding is (E, 1, 1, 1, 16) over their trailing depth axis
    slice_kernel = checkpoint["encoder_dict"]["slice_embed.weight"]
    assert slice_kernel.shape == (768, 1, 1, 1, 16)
    torch.testing.assert_close(
        net.image_encoder.slice_embed.weight[:, 0, :, 0, 0], slice_kernel[:, 0, 0, 0, :]
    )
    assert net.image_encoder.blocks[5].adapter.conv.weight.requires_grad


def test_reference_checkpoint_with_missing_parts(tmp_path, reference_file):
    _, _, checkpoint = reference_file
    torch.save({"epoch": 1, "state_dict": {}}, tmp_path / "other.pth.tar")
    with pytest.raises(CheckpointError, match=r"other\.pth\.tar is not a 3DSAM-adapter checkpoint"):
        load_reference_checkpoint(tmp_path / "other.pth.tar")
    broken = dict(
        checkpoint, decoder_dict={k: v for k, v in checkpoint["decoder_dict"].items() if "cls" not in k}
    )
    torch.save(broken, tmp_path / "broken.pth.tar")
    with pytest.raises(CheckpointError, match=r"broken\.pth\.tar do not fit the network \(missing: fuse"):
        load_reference_checkpoint(tmp_path / "broken.pth.tar")


@pytest.mark.slow
def test_import_reference_writes_a_sam3d_checkpoint(reference_file, tmp_path):
    from sam3d.errors import Sam3dError
    from sam3d.module import VolumetricSamModule
    from sam3d.reference_import import import_reference

    path, expected, _ = reference_file
    output = import_reference(str(path), str(tmp_path / "paper.ckpt"))
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["sam3d"]["variant"] == "vit_b"
    module = VolumetricSamModule.load_from_checkpoint(output, weights_only=True)
    for key, value in expected.items():
        if not key.startswith("prompt_encoder.label_embed"):
            torch.testing.assert_close(module.net.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(Sam3dError, match="already exists"):
        import_reference(str(path), output)
