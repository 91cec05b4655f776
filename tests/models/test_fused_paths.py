"""The folded patch embedding, bias-free attention and activation checkpointing equal the direct computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sam3d.models import VolumetricSam, build_volumetric_sam
from sam3d.models.common import LayerNorm, LayerNorm3d
from sam3d.models.patch_embedding import (
    direct_patch_embedding,
    folded_patch_embedding,
    upsampling_weights,
)
from sam3d.models.prompt_encoder import ClickSampler
from sam3d.models.window_attention import (
    WindowAttention3D,
    shifted_window_mask,
    window_partition,
)

# (dtype, tolerance): float32 to rounding, bfloat16 autocast to its 8-bit mantissa.
PRECISIONS = [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)]


def _scaled_error(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    """Largest difference relative to ``scale`` (default: the largest expected magnitude)."""
    expected = expected.detach().float()
    scale = float(expected.abs().max()) if scale is None else scale
    return float((actual.detach().float() - expected).abs().max()) / scale


def _embedding_layers(dim: int = 6) -> tuple[nn.Conv2d, nn.Conv3d]:
    torch.manual_seed(0)
    patch = nn.Conv2d(3, dim, kernel_size=16, stride=16)
    slices = nn.Conv3d(dim, dim, kernel_size=(16, 1, 1), stride=(16, 1, 1), groups=dim)
    patch.requires_grad_(False)  # frozen, as in the paper
    return patch, slices


@pytest.mark.parametrize("scale", [4.0, 16 / 3])
def test_upsampling_weights_reproduce_linear_interpolation_with_clamped_borders(scale):
    tokens = 5
    stride = round(16 / scale)
    signal = torch.randn(1, 1, tokens * stride)
    upsampled = torch.nn.functional.interpolate(signal, scale_factor=scale, mode="linear")[0, 0]
    weights, before, after = upsampling_weights(scale, 16)
    padded = torch.nn.functional.pad(signal, (before, after), mode="replicate")[0, 0].double()
    for token in range(tokens):
        sources = padded[token * stride : token * stride + weights.shape[1]]
        expected = upsampled[token * 16 : (token + 1) * 16].double()
        torch.testing.assert_close(weights @ sources, expected, rtol=1e-6, atol=1e-6)


def _random_embedding_case(seed: int) -> tuple[nn.Conv2d, nn.Conv3d, torch.Tensor, float]:
    """Layers, crop and scale of one random case: integer and non-integer scales, odd sizes, any batch."""
    generator = torch.Generator().manual_seed(seed)

    def pick(options: list) -> object:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    patch_size = pick([8, 16])
    stride = pick([s for s in (1, 2, 3, 4, 5, 8) if s < patch_size])
    scale = patch_size / stride
    slice_kernel = pick([patch_size, 2 * patch_size]) if scale.is_integer() else patch_size
    dim = pick([3, 6, 8])
    torch.manual_seed(seed)
    patch = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size).requires_grad_(False)
    slices = nn.Conv3d(dim, dim, kernel_size=(slice_kernel, 1, 1), stride=(slice_kernel, 1, 1), groups=dim)
    # Sizes that are not multiples of the token stride too: the upsampled edge is then cut off.
    smallest = (int(slice_kernel / scale) + 1, stride + 1, stride + 1)
    shape = [int(torch.randint(low, low + 3 * stride + 2, (1,), generator=generator)) for low in smallest]
    volume = torch.randn(pick([1, 2, 3]), 1, *shape, generator=generator)
    return patch, slices, volume, scale


def _poison_the_allocator(volume: torch.Tensor, dim: int) -> None:
    """Free NaN-filled blocks of the sizes the embedding allocates: a read of unwritten memory shows as NaN."""
    for numel in (volume.numel(), 4 * volume.numel(), 64 * volume.numel(), dim * volume.numel()):
        for dtype in (torch.float32, torch.bfloat16):
            del_me = torch.full((numel,), float("nan"), dtype=dtype)
            del del_me


@pytest.mark.parametrize(("dtype", "tolerance"), PRECISIONS)
def test_folded_patch_embedding_equals_the_direct_path(dtype, tolerance):
    checked_non_integer_scale = checked_cut_edge = False
    for seed in range(50):
        patch, slices, volume, scale = _random_embedding_case(seed)
        results = []
        for embedding in (direct_patch_embedding, folded_patch_embedding):
            slices.zero_grad()
            _poison_the_allocator(volume, slices.out_channels)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                tokens = embedding(volume, patch, slices, scale)
            (tokens.float() * torch.linspace(-1, 1, tokens.numel()).view(tokens.shape)).sum().backward()
            results.append((tokens, slices.weight.grad.clone(), slices.bias.grad.clone()))
        (direct, direct_weight, direct_bias), (folded, folded_weight, folded_bias) = results
        case = f"seed {seed}: crop {tuple(volume.shape)}, scale {scale:.3f}"
        assert folded.shape == direct.shape, case
        assert folded.dtype == direct.dtype == dtype, case
        assert torch.isfinite(folded).all(), case
        assert _scaled_error(folded, direct) < tolerance, case
        assert _scaled_error(folded_weight, direct_weight) < tolerance, case
        assert _scaled_error(folded_bias, direct_bias) < tolerance, case
        checked_non_integer_scale |= not scale.is_integer()
        checked_cut_edge |= any(n * scale % patch.kernel_size[0] for n in volume.shape[3:])
    assert checked_non_integer_scale
    assert checked_cut_edge


def _attention(rel_pos_length: int = 7, dim: int = 12, heads: int = 2, window: int = 4) -> WindowAttention3D:
    torch.manual_seed(1)
    attention = WindowAttention3D(dim, heads, window, rel_pos_length)
    with torch.no_grad():
        for table in (attention.rel_pos_d, attention.rel_pos_h, attention.rel_pos_w):
            table.normal_(0, 0.5)
        attention.rel_pos_scale.fill_(0.8)
    return attention


@pytest.mark.parametrize(("dtype", "tolerance"), PRECISIONS)
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("rel_pos_length", [7, 11])  # SAM's tables: resized or used as they are
def test_fused_attention_equals_the_biased_attention(shifted, rel_pos_length, dtype, tolerance):
    window, grid = 4, (8, 4, 12)
    attention = _attention(rel_pos_length, window=window)
    tokens = torch.randn(2, *grid, 12, requires_grad=True)
    mask = shifted_window_mask(grid, window, window // 2) if shifted else None
    results = []
    for fused in (False, True):
        attention.fused = fused
        attention.zero_grad()
        tokens.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = attention(window_partition(tokens, window), mask)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads = [tokens.grad.clone(), attention.rel_pos_d.grad.clone(), attention.qkv.weight.grad.clone()]
        results.append((out, grads))
    (direct, direct_grads), (fused_out, fused_grads) = results
    assert fused_out.dtype == direct.dtype == dtype
    assert _scaled_error(fused_out, direct) < tolerance
    for fused_grad, direct_grad in zip(fused_grads, direct_grads, strict=True):
        assert _scaled_error(fused_grad, direct_grad) < tolerance


def test_fused_attention_stores_no_bias_for_the_backward_pass():
    """Saved tensors stay at the size of queries, keys and values: no (windows, heads, N, N) tensor."""
    attention = _attention()
    windows = window_partition(torch.randn(1, 8, 8, 8, 12, requires_grad=True), 4)
    mask = shifted_window_mask((8, 8, 8), 4, 2)
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        attention(windows, mask)
    n = 4**3
    full_bias = len(windows) * attention.num_heads * n * n
    assert saved
    assert max(torch.Size(shape).numel() for shape in saved) < full_bias


def _tiny(crop: tuple[int, int, int] = (64, 48, 32), checkpointing: bool = False) -> VolumetricSam:
    torch.manual_seed(2)
    net = build_volumetric_sam("tiny", crop_size=crop)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "rel_pos" in name or "label_embed" in name:
                parameter.normal_(0, 0.1)
    net.activation_checkpointing = checkpointing
    return net.train()


def _step(net: VolumetricSam, image: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, dict]:
    net.zero_grad()
    logits = net(image, points, torch.tensor([[1, 0]]))
    logits.log_softmax(1)[:, 1].mean().backward()
    return logits, {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}


def test_network_fused_and_direct_paths_agree_on_a_non_cubic_crop():
    net = _tiny()
    image = torch.randn(1, 1, 64, 48, 32)
    points = torch.tensor([[[10.0, 20.0, 30.0], [40.0, 7.0, 3.0]]])
    fused_logits, fused_grads = _step(net, image, points)
    net.image_encoder.fused = False
    direct_logits, direct_grads = _step(net, image, points)
    assert fused_logits.shape == (1, 2, 64, 48, 32)
    assert _scaled_error(fused_logits, direct_logits) < 2e-5
    # Relative to the largest gradient: some gradients are zero in exact arithmetic (key biases).
    largest = max(float(g.abs().max()) for g in direct_grads.values())
    for name, grad in fused_grads.items():
        assert _scaled_error(grad, direct_grads[name], largest) < 1e-5, name


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_fewer_tensors():
    image = torch.randn(1, 1, 64, 48, 32)
    points = torch.tensor([[[10.0, 20.0, 30.0], [40.0, 7.0, 3.0]]])
    results = {}
    for checkpointing in (False, True):
        net = _tiny(checkpointing=checkpointing)
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, kept=saved: kept.append(t.numel()) or t, lambda t: t
        ):
            results[checkpointing] = (*_step(net, image, points), sum(saved))
    logits, grads, kept = results[False]
    checkpointed_logits, checkpointed_grads, checkpointed_kept = results[True]
    torch.testing.assert_close(checkpointed_logits, logits, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert checkpointed_kept < kept / 2


def test_activation_checkpointing_is_off_outside_training(monkeypatch):
    """Evaluation, and training steps without gradients, run every block once: nothing is recomputed."""
    from sam3d.models import image_encoder, mask_decoder

    calls: list[str] = []

    def counting(module):
        original = module.checkpoint

        def checkpoint(*args, **kwargs):
            calls.append(module.__name__)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "checkpoint", checkpoint)

    counting(image_encoder)
    counting(mask_decoder)
    net = _tiny(checkpointing=True)
    image, points = torch.randn(1, 1, 64, 48, 32), torch.tensor([[[10.0, 20.0, 30.0]]])
    with torch.no_grad():
        net.eval()(image, points)
        net.train()(image, points)
    net.eval()(image, points).sum().backward()
    assert calls == []
    net.train()(image, points)  # the counter sees the checkpointed training forward
    assert {"sam3d.models.image_encoder", "sam3d.models.mask_decoder"} <= set(calls)


class _Float32Activations(TorchDispatchMode):
    """Records the ops that produce float32 tensors of at least ``min_numel`` elements."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel, self.found, self.inside_norm = min_numel, set(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = out if isinstance(out, tuple | list) else (out,)
        for tensor in tensors:
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.dtype == torch.float32
                and tensor.numel() >= self.min_numel
                and not self.inside_norm
            ):
                self.found.add(str(func))
        return out


def float32_recorder(net: VolumetricSam, min_numel: int) -> _Float32Activations:
    """A recorder of large float32 activations that looks away inside the float32-by-design modules."""
    recorder = _Float32Activations(min_numel)

    def enter(*_):
        recorder.inside_norm += 1

    def leave(*_):
        recorder.inside_norm -= 1

    for module in net.modules():
        if isinstance(module, LayerNorm | LayerNorm3d | ClickSampler):  # float32 by design
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)
    return recorder


def test_bf16_autocast_leaves_no_float32_activations_outside_norms_and_click_sampling():
    net = _tiny(crop=(64, 64, 64))
    image = torch.randn(1, 1, 64, 64, 64)
    # Activations only: weights may be sliced or folded in float32 before autocast casts them.
    largest_parameter = max(p.numel() for p in net.parameters())
    tokens = net.config.token_grid
    assert tokens[0] * tokens[1] * tokens[2] * net.config.embed_dim > 2 * largest_parameter
    recorder = float32_recorder(net, min_numel=largest_parameter + 1)
    with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
        logits = net(image, torch.tensor([[[10.0, 20.0, 30.0], [40.0, 7.0, 3.0]]]), torch.tensor([[1, 0]]))
    assert logits.dtype == torch.bfloat16
    assert recorder.found == set()
