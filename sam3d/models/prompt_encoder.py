"""Click prompt encoder: point features sampled from the last map, learned global queries, two-way updates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from torch import nn

from sam3d.models.common import LayerNorm
from sam3d.models.config import ClickEncoding, VolumetricSamConfig
from sam3d.models.dense_prompts import DenseInputs, DensePrompts

# Click labels: positive, negative, and padding for batches with unequal click counts.
POSITIVE, NEGATIVE, PADDING = 1, 0, -1


class QueryAttention(nn.Module):
    """Multi-head attention whose projections may narrow the channels (SAM's downsampled attention)."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the attention width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend ``q (B, Nq, C)`` to ``k, v (B, Nk, C)``; ``key_mask (B, Nk)`` is True for keys to use."""
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
            attn_mask=mask,
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayQueryBlock(nn.Module):
    """Global queries and clicks attend to each other, then every image token attends to the queries."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, num_queries: int, attention_downsample_rate: int
    ) -> None:
        super().__init__()
        self.global_queries = nn.Parameter(0.1 * torch.randn(1, num_queries, dim))
        self.self_attn = QueryAttention(dim, num_heads)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = LayerNorm(dim)
        self.cross_attn_image_to_token = QueryAttention(dim, num_heads, attention_downsample_rate)
        self.norm4 = LayerNorm(dim)

    def forward(
        self, image_tokens: torch.Tensor, click_tokens: torch.Tensor, click_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``image_tokens (B, L, C)`` from ``click_tokens (B, N, C)``; ``click_mask (B, N)`` marks real clicks."""
        b, num_queries = image_tokens.shape[0], self.global_queries.shape[1]
        # Indexed, not expanded: for one sample an expand would hand back a view of the concatenation's
        # gradient, with strides other than the parameter's (which DDP's gradient buckets expect).
        queries = self.global_queries[0].expand(b, -1, -1).to(click_tokens.dtype)
        tokens = torch.cat([queries, click_tokens], dim=1)
        key_mask = torch.cat([click_mask.new_ones(b, num_queries), click_mask], dim=1)
        tokens = self.norm2(tokens + self.norm1(self.self_attn(tokens, tokens, tokens, key_mask)))
        queries, click_tokens = tokens[:, :num_queries], tokens[:, num_queries:]
        queries = self.norm3(queries + self.mlp(queries))
        image_tokens = self.norm4(
            image_tokens + self.cross_attn_image_to_token(image_tokens, queries, queries)
        )
        return image_tokens, click_tokens


class ClickSampler(nn.Module):
    """Features of a map at clicks given in crop voxels, interpolated trilinearly.

    Sampling runs in float32 under any autocast: bfloat16 grid coordinates would move a click by up to a
    sixteenth of a token. Only the map is copied (the clicks' features are tiny).
    """

    crop_size: torch.Tensor

    def __init__(self, crop_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.register_buffer("crop_size", torch.tensor(crop_size, dtype=torch.float32), persistent=False)

    def forward(self, image_map: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` map and ``(B, N, 3)`` clicks (d, h, w) -> ``(B, N, C)`` in the map's dtype."""
        # Voxel centres to grid_sample's [-1, 1] (align_corners=False), axes reversed to (w, h, d).
        grid = ((points.float() + 0.5) * 2 / self.crop_size - 1).flip(-1)
        with torch.autocast(image_map.device.type, enabled=False):
            sampled = F.grid_sample(image_map.float(), grid[:, :, None, None, :], align_corners=False)
        return sampled.flatten(2).transpose(1, 2).to(image_map.dtype)


class ClickMaps(nn.Module):
    """Where the clicks are: maps of the positive and of the negative clicks on the token grid.

    One map per label and width, the maximum over that label's clicks of ``exp(-d^2 / (2 sigma^2))``
    (``gaussian``) or ``exp(-d / sigma)`` (``distance``, a distance-transform encoding) with ``d`` the
    distance in crop voxels from a token's centre, projected to the map's channels by a zero-initialised
    1x1 convolution (a network that has not trained it behaves as without the maps). Computed in float32
    from the click coordinates directly (a few clicks against a small grid).
    """

    crop_size: torch.Tensor

    def __init__(
        self,
        crop_size: tuple[int, int, int],
        sigmas: tuple[float, ...],
        dim: int,
        encoding: ClickEncoding = "gaussian",
    ) -> None:
        super().__init__()
        self.sigmas = sigmas
        self.encoding = encoding
        self.register_buffer("crop_size", torch.tensor(crop_size, dtype=torch.float32), persistent=False)
        self.project = nn.Conv3d(2 * len(sigmas), dim, 1)
        for parameter in self.project.parameters():
            nn.init.zeros_(parameter)

    def maps(self, points: torch.Tensor, labels: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """``(B, 2 * len(sigmas), *grid)`` float32: the positive then the negative clicks' map, per width."""
        maps = points.new_zeros(len(points), 2 * len(self.sigmas), *grid, dtype=torch.float32)
        if not points.shape[1]:
            return maps
        step = self.crop_size / self.crop_size.new_tensor(grid)
        squared = points.new_zeros(*points.shape[:2], *grid, dtype=torch.float32)
        for axis, size in enumerate(grid):
            centres = (torch.arange(size, device=points.device) + 0.5) * step[axis] - 0.5
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = size
            squared = squared + (centres.view(shape) - points[..., axis, None, None, None].float()) ** 2
        for index, sigma in enumerate(self.sigmas):
            encoded = self._encode(squared, sigma)  # (B, N, *grid)
            for offset, label in enumerate((POSITIVE, NEGATIVE)):
                chosen = (labels == label)[..., None, None, None]
                maps[:, 2 * index + offset] = (encoded * chosen).amax(1)
        return maps

    def _encode(self, squared: torch.Tensor, sigma: float) -> torch.Tensor:
        """Squared distances ``d^2`` to ``exp(-d / sigma)`` (``distance``) or ``exp(-d^2 / (2 sigma^2))``."""
        if self.encoding == "distance":
            return torch.exp(-squared.sqrt() / sigma)
        return torch.exp(-squared / (2 * sigma**2))

    def forward(self, points: torch.Tensor, labels: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """The maps projected to ``(B, dim, *grid)``, in the projection's dtype."""
        return self.project(self.maps(points, labels, grid).to(self.project.weight.dtype))


class ClickPromptEncoder(nn.Module):
    """Turns clicks into an updated last feature map.

    Click features are sampled (trilinear) from the map at the clicks; a zero-initialised label embedding
    distinguishes positive from negative clicks (the paper has no labels, so imported weights behave as
    the paper's network). The paper's code also computes random-Fourier positional encodings here but its
    layers never read them; they are therefore not computed. With ``config.click_map_sigmas`` (beyond the
    paper), :class:`ClickMaps` add where the clicks are to the map before the two-way layers; with
    ``config.dense_prompts``, :class:`DensePrompts` add boxes, scribbles and the previous mask there too.
    """

    def __init__(self, config: VolumetricSamConfig) -> None:
        super().__init__()
        dim = config.neck_dim
        self.sample_clicks = ClickSampler(config.crop_size)
        self.label_embed = nn.Embedding(2, dim)
        nn.init.zeros_(self.label_embed.weight)
        self.layers = nn.ModuleList(
            TwoWayQueryBlock(
                dim,
                config.prompt_num_heads,
                config.prompt_mlp_dim,
                config.num_global_queries,
                config.prompt_attention_downsample,
            )
            for _ in range(config.prompt_depth)
        )
        # Zero-initialised, so they draw nothing: building them leaves the random stream (and so every
        # other initial weight of a seeded run) as for the paper's network.
        with torch.random.fork_rng(devices=[]):
            self.click_maps = (
                ClickMaps(config.crop_size, config.click_map_sigmas, dim, config.click_encoding)
                if config.click_map_sigmas
                else None
            )
            self.dense_prompts = (
                DensePrompts(config.crop_size, config.dense_prompts, dim) if config.dense_prompts else None
            )

    def input_projections(self) -> list[nn.Parameter]:
        """The zero-initialised projections of the click maps and dense prompts (empty for the paper's)."""
        inputs = [module for module in (self.click_maps, self.dense_prompts) if module is not None]
        return [parameter for module in inputs for parameter in module.project.parameters()]

    def dense_embedding(
        self,
        image_map: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        dense: DenseInputs | None = None,
    ) -> torch.Tensor:
        """The map the two-way layers read: ``image_map`` plus the click maps and dense prompts enabled."""
        grid = tuple(image_map.shape[2:])
        if self.click_maps is not None:
            image_map = image_map + self.click_maps(points, labels, grid).to(image_map.dtype)
        if self.dense_prompts is not None:
            prompts = self.dense_prompts(dense or DenseInputs(), len(image_map), grid)
            image_map = image_map + prompts.to(image_map.dtype)
        return image_map

    def forward(
        self,
        image_map: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        dense: DenseInputs | None = None,
    ) -> torch.Tensor:
        """Condition ``image_map (B, C, D, H, W)`` on ``points (B, N, 3)`` (crop voxels, d/h/w) and ``labels``.

        ``dense`` holds the dense prompts (checked by the caller) of a network built with ``dense_prompts``.
        """
        click_tokens = self.sample_clicks(image_map, points)
        real = labels != PADDING
        label_embedding = self.label_embed(labels.clamp(min=0)).to(click_tokens.dtype)
        click_tokens = click_tokens + label_embedding * real[..., None]
        image_map = self.dense_embedding(image_map, points, labels, dense)
        image_tokens = image_map.flatten(2).transpose(1, 2)
        for layer in self.layers:
            image_tokens, click_tokens = layer(image_tokens, click_tokens, real)
        return image_tokens.transpose(1, 2).reshape(image_map.shape)
