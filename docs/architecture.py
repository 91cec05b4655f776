"""Draw docs/images/architecture.png from the code: the click-to-mask path and the training path.

Everything the picture states about the network is read from a real forward pass of the tiny network
(module classes, tensor shapes through forward hooks, trainable and frozen parameter counts), and what it
states about training from the trainer and the data module (loss, optimiser groups, patch and click
defaults). The numbers are embedded in the PNG (text chunk ``sam3d-architecture``), so
``tests/test_docs.py`` can check that the committed picture still describes the code. Redraw it with

    .venv/bin/python docs/architecture.py
"""

from __future__ import annotations

import argparse
import inspect
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

CROP = (64, 64, 64)  # the tiny network's crop in `make demo`
CLICKS = ((32.0, 30.0, 34.0), (20.0, 40.0, 28.0))  # one positive and one negative click
METADATA_KEY = "sam3d-architecture"
PICTURE = Path(__file__).resolve().parent / "images" / "architecture.png"


def _counts(parameters: list[tuple[str, nn.Parameter]]) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for _, p in parameters if p.requires_grad),
        "frozen": sum(p.numel() for _, p in parameters if not p.requires_grad),
    }


def _layer(module: nn.Module) -> str:
    if isinstance(module, nn.Conv3d):
        depthwise = " depthwise" if module.groups == module.in_channels > 1 else ""
        return f"{'x'.join(map(str, module.kernel_size))}{depthwise} conv"
    if isinstance(module, nn.Linear):
        return f"linear {module.in_features}->{module.out_features}"
    return type(module).__name__


def _shape(value: torch.Tensor) -> list[int]:
    return list(value.shape)


def network_stages(crop: tuple[int, int, int] = CROP) -> dict[str, Any]:
    """The click-to-mask path of the tiny network, frozen as in the paper, from one forward pass.

    Args:
        crop: The crop ``(D, H, W)`` the network is built for.

    Returns:
        ``inputs`` (shapes of the crop and the clicks), ``stages`` (in order: key, module class, output
        shape, trainable and frozen parameters, and a few facts read from the modules), ``outputs`` and
        ``total`` (trainable and frozen parameters of the whole network).
    """
    from sam3d.models import build_volumetric_sam

    torch.manual_seed(0)
    net = build_volumetric_sam("tiny", crop_size=crop).eval()
    encoder, config = net.image_encoder, net.config
    seen: dict[str, Any] = {}

    def keep(name: str, pre: bool = False) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | None = None) -> None:
            seen.setdefault(name, []).append(args[0] if pre else output)

        return hook

    handles = [
        encoder.blocks[0].register_forward_pre_hook(keep("tokens", pre=True)),
        *(block.register_forward_hook(keep("blocks")) for block in encoder.blocks),
        *(neck.register_forward_hook(keep("necks")) for neck in encoder.necks),
        *(level.register_forward_hook(keep("levels")) for level in net.mask_decoder.levels),
        net.prompt_encoder.register_forward_hook(keep("prompt_encoder")),
        net.mask_decoder.register_forward_hook(keep("mask_decoder")),
    ]
    image = torch.randn(1, 1, *crop)
    points = torch.tensor([CLICKS])
    labels = torch.tensor([[1, 0]])
    with torch.no_grad():
        logits = net(image, points, labels)
    for handle in handles:
        handle.remove()

    named = dict(encoder.named_parameters())
    embedding = [(n, p) for n, p in named.items() if not n.startswith(("blocks.", "necks."))]
    blocks = [(n, p) for n, p in named.items() if n.startswith("blocks.")]
    adapters = [(n, p) for n, p in blocks if ".adapter." in n]
    attention_mlp = [(n, p) for n, p in blocks if ".attn." in n or ".mlp." in n]
    block = encoder.blocks[0]
    stages = [
        {
            "key": "embedding",
            "module": f"{type(encoder.patch_embed).__name__} + {type(encoder.slice_embed).__name__}",
            "shape": _shape(seen["tokens"][0]),
            **_counts(embedding),
            "frozen_names": sorted(n for n, p in embedding if not p.requires_grad),
            "trainable_names": sorted(n for n, p in embedding if p.requires_grad),
            "input_scale": config.input_scale,
        },
        {
            "key": "blocks",
            "module": type(block).__name__,
            "shape": _shape(seen["blocks"][-1]),
            **_counts(blocks),
            "count": len(encoder.blocks),
            "adapter": type(block.adapter).__name__,
            "adapter_layers": [_layer(m) for m in block.adapter.children()],
            "adapter_parameters": _counts(adapters),
            "attention_mlp_parameters": _counts(attention_mlp),
            "window": config.window_size,
            "shifted": [b.shift > 0 for b in encoder.blocks],
        },
        {
            "key": "necks",
            "module": type(encoder.necks[0]).__name__,
            "shape": [_shape(x) for x in seen["necks"]],
            **_counts(list(encoder.necks.named_parameters())),
            "after_blocks": list(encoder.neck_after_blocks),
        },
        {
            "key": "prompt_encoder",
            "module": type(net.prompt_encoder).__name__,
            "shape": _shape(seen["prompt_encoder"][0]),
            **_counts(list(net.prompt_encoder.named_parameters())),
            "layers": len(net.prompt_encoder.layers),
        },
        {
            "key": "mask_decoder",
            "module": type(net.mask_decoder).__name__,
            "shape": _shape(seen["mask_decoder"][0]),
            **_counts(list(net.mask_decoder.named_parameters())),
            "levels": [_shape(x) for x in seen["levels"]],
            "merge_grid": list(config.decoder_grid),
        },
    ]
    return {
        "network": f"{type(net).__name__} ({config.variant}, adaptation {config.adaptation})",
        "inputs": {"crop": _shape(image), "points": _shape(points), "labels": _shape(labels)},
        "stages": stages,
        "outputs": {"logits": _shape(logits), "classes": config.num_classes},
        "total": _counts(list(net.named_parameters())),
    }


def paper_size_counts() -> dict[str, int]:
    """Trainable and frozen parameters of the paper's ``vit_b`` network (built on the meta device)."""
    from sam3d.models import build_volumetric_sam

    with torch.device("meta"):
        net = build_volumetric_sam("vit_b")
    return _counts(list(net.named_parameters()))


def training_path(crop: tuple[int, int, int] = CROP) -> dict[str, Any]:
    """What ``sam3d fit`` does with a batch, read from the data module, the trainer and its optimiser."""
    import lightning as L

    from sam3d.data.datamodule import VolumeDataModule
    from sam3d.data.training.queue import EpochQueue
    from sam3d.module import VolumetricSamModule

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(VolumeDataModule.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    queue_base = next(c for c in EpochQueue.__mro__[1:] if c.__module__.startswith("torchio"))
    task = VolumetricSamModule(variant="tiny", crop_size=crop)
    task.trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    optimiser = task.configure_optimizers()["optimizer"]
    loss = task.loss
    return {
        "queue": f"{EpochQueue.__name__} (torchio.{queue_base.__name__})",
        "samples_per_volume": defaults["samples_per_volume"],
        "pos_neg_ratio": list(defaults["pos_neg_ratio"]),
        "click_mode": defaults["click_mode"],
        "positive_clicks": defaults["num_positive_clicks"],
        "context_clicks": defaults["num_context_clicks"],
        "loss": type(loss).__name__,
        "loss_weights": {"dice": float(loss.lambda_dice), "ce": float(loss.lambda_ce)},
        "optimiser": type(optimiser).__name__,
        "groups": {g["name"]: sum(p.numel() for p in g["params"]) for g in optimiser.param_groups},
        "frozen_in_optimiser": sum(
            p.numel() for g in optimiser.param_groups for p in g["params"] if not p.requires_grad
        ),
        # reference clicks are all positive: the click-label embedding stays at zero, as the authors' has none
        "label_embedding_frozen": sum(
            p.numel() for p in task.net.prompt_encoder.label_embed.parameters() if not p.requires_grad
        ),
    }


def describe() -> dict[str, Any]:
    """The picture's source data: both paths and the paper-size parameter counts."""
    return {
        "click_to_mask": network_stages(),
        "training": training_path(),
        "vit_b": paper_size_counts(),
    }


def embedded_description(picture: Path = PICTURE) -> dict[str, Any]:
    """The source data a drawn picture was made from (its PNG text chunk)."""
    from PIL import Image

    with Image.open(picture) as png:
        return json.loads(png.text[METADATA_KEY])


# Drawing ------------------------------------------------------------------------------------------------
DATA, FROZEN, TRAINABLE, TRAINING = "#e8e8e8", "#cfe2f3", "#fde4c8", "#d9ead3"


def _grid(shape: list[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _params(counts: dict[str, int]) -> str:
    trainable, frozen = counts["trainable"], counts["frozen"]
    if not frozen:
        return f"{trainable:,} trainable"
    if not trainable:
        return f"{frozen:,} frozen"
    return f"{trainable:,} trainable\n{frozen:,} frozen"


def draw(description: dict[str, Any], output: Path = PICTURE) -> None:
    """Draw both paths of ``description`` (from :func:`describe`) into ``output`` (PNG, data embedded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    net, train, paper = description["click_to_mask"], description["training"], description["vit_b"]
    stages = {s["key"]: s for s in net["stages"]}
    fig = plt.figure(figsize=(17, 8.6), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 17)
    ax.set_ylim(0.8, 9.4)
    ax.axis("off")

    def box(x: float, y: float, w: float, h: float, colour: str, title: str, body: str = "") -> None:
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=colour,
                edgecolor="#555555",
                linewidth=1.2,
            )
        )
        ax.text(x, y + h / 2 - 0.14, title, ha="center", va="top", fontsize=10.5, weight="bold")
        if body:
            ax.text(x, y + h / 2 - 0.45, body, ha="center", va="top", fontsize=8.6, linespacing=1.35)

    def arrow(
        start: tuple[float, float],
        end: tuple[float, float],
        label: str = "",
        style: str = "-|>",
        colour: str = "#333333",
        dashed: bool = False,
        bend: float = 0.0,
        label_at: tuple[float, float] | None = None,
    ) -> None:
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle=style,
                mutation_scale=14,
                color=colour,
                linewidth=1.3,
                linestyle="--" if dashed else "-",
                connectionstyle=f"arc3,rad={bend}",
            )
        )
        if label:
            x, y = label_at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12)
            ax.text(x, y, label, ha="center", va="bottom", fontsize=8, color=colour, style="italic")

    ax.text(0.25, 9.15, "Click-to-mask path", fontsize=14, weight="bold", va="top")
    ax.text(
        0.25,
        8.78,
        f"{net['network']}, shapes from a forward pass on a {_grid(net['inputs']['crop'][2:])} crop "
        "(sam3d test, predict and serve run this path)",
        fontsize=9.5,
        va="top",
        color="#444444",
    )

    y, h = 6.1, 2.3
    emb, blocks, necks = stages["embedding"], stages["blocks"], stages["necks"]
    prompt, decoder = stages["prompt_encoder"], stages["mask_decoder"]
    box(1.2, y, 1.9, h, DATA, "CT crop", f"{_grid(net['inputs']['crop'])}\nwindowed, z-scored")
    box(
        3.55,
        y,
        2.3,
        h,
        FROZEN,
        "patch embedding",
        f"x{emb['input_scale']:g} upsampling, SAM's 16x16\npatch conv (frozen),\nslice + depth embedding\n"
        f"-> tokens {_grid(emb['shape'])}\n{_params(emb)}",
    )
    shifted = sum(blocks["shifted"])
    box(
        6.25,
        y,
        2.6,
        h,
        FROZEN,
        f"{blocks['count']} ViT blocks + 3D adapters",
        f"3D windows of {blocks['window']}^3 tokens ({shifted} shifted);\n"
        f"SAM's attention + MLP: {blocks['attention_mlp_parameters']['frozen']:,} frozen\n"
        f"-> tokens {_grid(blocks['shape'])}",
    )
    ax.add_patch(
        FancyBboxPatch(
            (6.25 - 1.17, y - h / 2 + 0.1),
            2.34,
            0.98,
            boxstyle="round,pad=0.01,rounding_size=0.08",
            facecolor=TRAINABLE,
            edgecolor="#555555",
        )
    )
    ax.text(
        6.25,
        y - h / 2 + 0.59,
        f"{blocks['adapter']} (trainable):\n{textwrap.fill(', '.join(blocks['adapter_layers']), 34)}\n"
        f"with norms, depth tables: {blocks['trainable']:,}",
        ha="center",
        va="center",
        fontsize=7.6,
        linespacing=1.3,
    )
    box(
        8.95,
        y,
        2.2,
        h,
        TRAINABLE,
        f"{len(necks['shape'])} necks",
        f"after blocks {', '.join(str(i + 1) for i in necks['after_blocks'])}\n"
        f"-> {len(necks['shape'])} maps {_grid(necks['shape'][-1])};\nthe last one to the prompt "
        f"encoder\n{_params(necks)}",
    )
    box(
        11.65,
        y,
        2.5,
        h,
        TRAINABLE,
        "click prompt encoder",
        f"samples the last map at\nthe clicks; {prompt['layers']} two-way layers\n"
        f"-> map {_grid(prompt['shape'])}\n{_params(prompt)}",
    )
    box(
        14.4,
        y,
        2.3,
        h,
        TRAINABLE,
        "3D mask decoder",
        f"{len(decoder['levels'])} levels merged at\n{_grid(decoder['merge_grid'])} + the crop\n"
        f"-> logits {_grid(decoder['shape'])}\n{_params(decoder)}",
    )
    box(16.35, y, 1.0, 1.4, DATA, "mask", "softmax\ntumour\n> 0.5")
    box(
        11.65,
        8.2,
        2.5,
        0.8,
        DATA,
        "clicks",
        f"points {_grid(net['inputs']['points'])}, labels 1 / 0\n(positive / negative)",
    )

    arrow((2.15, y), (2.4, y))
    arrow((4.7, y), (4.95, y))
    arrow((7.55, y), (7.85, y))
    arrow((10.05, y + 0.35), (10.4, y + 0.35))
    arrow((12.9, y + 0.35), (13.25, y + 0.35))
    arrow((15.55, y), (15.85, y))
    arrow((11.65, 7.8), (11.65, y + h / 2))
    arrow(
        (9.5, y - h / 2),
        (14.0, y - h / 2),
        f"maps 1-{len(necks['shape']) - 1} + crop: encoded once per crop, reused by every click",
        bend=0.18,
        label_at=(11.75, y - h / 2 - 0.72),
    )

    # The training path ------------------------------------------------------------------------------
    ax.text(0.25, 3.85, "Training path (sam3d fit)", fontsize=14, weight="bold", va="top")
    groups = "\n".join(f"{name} {count:,}" for name, count in train["groups"].items())
    yt, ht = 2.2, 1.45
    box(
        1.75,
        yt,
        3.0,
        ht,
        TRAINING,
        "TorchIO patch queue",
        f"{train['queue']}\n{train['samples_per_volume']} patches per volume, centres\n"
        f"target : background = {train['pos_neg_ratio'][0]:g} : {train['pos_neg_ratio'][1]:g}, "
        "augmented",
    )
    box(
        4.95,
        yt,
        2.8,
        ht,
        TRAINING,
        "simulated clicks",
        f"click_mode {train['click_mode']}:\n{train['positive_clicks']} from the tumour + "
        f"{train['context_clicks']}\nfrom the patch\n(interactive: + correction\nrounds)",
    )
    box(
        8.3,
        yt,
        3.0,
        ht,
        DATA,
        "the network above",
        "patches as crops, their clicks\n-> logits (training mode)",
    )
    box(
        11.6,
        yt,
        2.8,
        ht,
        TRAINING,
        train["loss"],
        f"{train['loss_weights']['dice']:g} Dice + {train['loss_weights']['ce']:g} cross-entropy\n"
        "against the patch's label",
    )
    box(
        14.85,
        yt,
        3.0,
        ht,
        TRAINING,
        f"{train['optimiser']}, trainable only",
        f"parameter groups:\n{groups}\nfrozen SAM weights in it: {train['frozen_in_optimiser']}\n"
        f"click-label embedding left at zero: {train['label_embedding_frozen']}",
    )
    arrow((3.25, yt), (3.55, yt))
    arrow((6.35, yt), (6.8, yt))
    arrow((9.8, yt), (10.2, yt))
    arrow((13.0, yt), (13.35, yt))
    arrow(
        (14.85, yt + ht / 2),
        (14.4, y - h / 2 - 0.05),
        "updates adapters, norms, necks,\nprompt encoder, decoder",
        colour="#b45f06",
        dashed=True,
        label_at=(15.95, 3.55),
    )
    arrow((7.6, yt + ht / 2), (6.25, y - h / 2 - 0.05), colour="#888888", dashed=True)

    total = net["total"]
    ax.text(
        0.25,
        1.05,
        f"Tiny network: {total['trainable']:,} trainable of {total['trainable'] + total['frozen']:,} "
        f"parameters.  Paper's vit_b (128^3 crops, 32^3 tokens): {paper['trainable']:,} trainable of "
        f"{paper['trainable'] + paper['frozen']:,}.",
        fontsize=9.5,
        va="center",
        color="#333333",
    )
    ax.legend(
        handles=[
            Patch(facecolor=FROZEN, edgecolor="#555555", label="SAM's weights, frozen"),
            Patch(facecolor=TRAINABLE, edgecolor="#555555", label="trained"),
            Patch(facecolor=TRAINING, edgecolor="#555555", label="training only"),
            Patch(facecolor=DATA, edgecolor="#555555", label="data"),
        ],
        loc="upper right",
        bbox_to_anchor=(0.995, 0.995),
        ncol=4,
        fontsize=9,
        frameon=False,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, metadata={METADATA_KEY: json.dumps(description, sort_keys=True), "Software": None})
    plt.close(fig)


def main() -> None:
    """Redraw the picture (default: docs/images/architecture.png)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output", type=Path, default=PICTURE)
    args = parser.parse_args()
    draw(describe(), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
