"""Loading SAM's official checkpoints and the authors' 3D checkpoints, and refusing bad files."""

from __future__ import annotations

import json
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


# The keys and shapes of the authors' best.pth.tar; files in their format are written from it, not from us.
REFERENCE_LAYOUT = json.loads(
    (Path(__file__).parent / "fixtures" / "reference_checkpoint_keys.json").read_text()
)
# What the import leaves out: attention masks (recomputed), and prompt-encoder tensors their code never reads.
NOT_IMPORTED = (r"attn_mask$", r"^positional_encoding_gaussian_matrix$", r"\.cross_attn_token_to_image\.")
USED_PROMPT_ENCODER = 3  # the authors' code runs the last of its four prompt encoders


def _reference_tensors(layout: dict[str, list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values in every tensor of one of the authors' state dicts (left-out ones as zero views)."""
    state = {}
    for key, shape in layout.items():
        if any(re.search(pattern, key) for pattern in NOT_IMPORTED):
            state[key] = torch.zeros(1).expand(shape)  # saved as one value: the masks are 64x512x512 each
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    generator = torch.Generator().manual_seed(3)
    checkpoint = {
        "epoch": 200,
        "best_val_loss": np.float64(0.31),
        "encoder_dict": _reference_tensors(REFERENCE_LAYOUT["encoder_dict"], generator),
        "decoder_dict": _reference_tensors(REFERENCE_LAYOUT["decoder_dict"], generator),
        "feature_dict": [_reference_tensors(REFERENCE_LAYOUT["feature_dict"], generator) for _ in range(4)],
        "encoder_opt": {"state": {}, "param_groups": [{"lr": 4e-4, "params": [0, 1]}]},
    }
    path = tmp_path_factory.mktemp("reference") / "best.pth.tar"
    torch.save(checkpoint, path)
    return path, checkpoint


def _fingerprint(tensor: torch.Tensor) -> tuple[int, float, float]:
    """Identifies a random tensor whatever the order of its axes."""
    values = tensor.detach().double()
    return tensor.numel(), round(float(values.sum()), 6), round(float(values.square().sum()), 6)


def test_reference_checkpoint_fills_every_tensor_from_the_authors_file(reference_file):
    path, checkpoint = reference_file
    sources = {
        "image_encoder": "encoder_dict",
        "mask_decoder": "decoder_dict",
        "prompt_encoder": "feature_dict",
    }
    files = {
        "encoder_dict": checkpoint["encoder_dict"],
        "decoder_dict": checkpoint["decoder_dict"],
        "feature_dict": checkpoint["feature_dict"][USED_PROMPT_ENCODER],
    }
    by_fingerprint = {
        _fingerprint(t): (part, key) for part, state in files.items() for key, t in state.items()
    }
    loaded = load_reference_checkpoint(path).state_dict()
    origin = {}  # our key -> the authors' (part, key) whose values it holds
    for key, value in loaded.items():
        if key.startswith("prompt_encoder.label_embed."):
            assert (value == 0).all()  # beyond the paper: starts at zero, so outputs equal the authors'
            continue
        assert _fingerprint(value) in by_fingerprint, f"{key} holds no tensor of the file"
        origin[key] = by_fingerprint[_fingerprint(value)]
        assert origin[key][0] == sources[key.split(".")[0]], key
    imported = [
        (part, key)
        for part, state in files.items()
        for key in state
        if not any(re.search(pattern, key) for pattern in NOT_IMPORTED)
    ]
    assert sorted(origin.values()) == sorted(imported)  # each of the authors' tensors used exactly once
    # Where both name a tensor alike, it is the same tensor (no block, level or neck taken for another).
    for key, (part, source) in origin.items():
        ours = key.split(".", 1)[1]
        if ours in files[part]:
            assert source == ours, key
    # The renamed ones, by hand from the authors' modules.
    expected = {
        "image_encoder.blocks.4.attn.rel_pos_scale": "blocks.4.attn.lr",
        "image_encoder.blocks.4.adapter.down.weight": "blocks.4.adapter.linear1.weight",
        "image_encoder.blocks.11.adapter.up.bias": "blocks.11.adapter.linear2.bias",
        "image_encoder.necks.2.0.weight": "neck_3d.2.0.weight",
        "mask_decoder.levels.0.0.weight": "mlahead.head2.0.weight",
        "mask_decoder.levels.3.3.weight": "mlahead.head5.3.weight",
        "mask_decoder.fuse.0.weight": "cls.0.weight",
        "prompt_encoder.layers.1.global_queries": "transformer.layers.1.global_query",
        "prompt_encoder.layers.0.cross_attn_image_to_token.v_proj.weight": (
            "transformer.layers.0.cross_attn_image_to_token.v_proj.weight"
        ),
    }
    for ours, theirs in expected.items():
        assert origin[ours][1] == theirs, ours
    # Their token maps are (H, W, D), ours (D, H, W): 3D kernels move their last axis to the front.
    fuse = files["decoder_dict"]["cls.0.weight"]
    torch.testing.assert_close(
        loaded["mask_decoder.fuse.0.weight"], fuse.permute(0, 1, 4, 2, 3), rtol=0, atol=0
    )
    slices = files["encoder_dict"]["slice_embed.weight"]  # (E, 1, 1, 1, 16): depthwise over their last axis
    torch.testing.assert_close(
        loaded["image_encoder.slice_embed.weight"][:, 0, :, 0, 0], slices[:, 0, 0, 0, :]
    )


def test_reference_checkpoint_with_missing_parts(tmp_path, reference_file):
    _, checkpoint = reference_file
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

    path, _ = reference_file
    expected = load_reference_checkpoint(path).state_dict()
    output = import_reference(str(path), str(tmp_path / "paper.ckpt"))
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["sam3d"]["variant"] == "vit_b"
    module = VolumetricSamModule.load_from_checkpoint(output, weights_only=True)
    for key, value in expected.items():
        if not key.startswith("prompt_encoder.label_embed"):
            torch.testing.assert_close(module.net.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(Sam3dError, match="already exists"):
        import_reference(str(path), output)
