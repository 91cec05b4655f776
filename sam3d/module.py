"""``VolumetricSamModule``: trains and validates the promptable volumetric SAM as the paper does."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from sam3d.data.clicks import ClickMode, checked_click_mode, correction_clicks
from sam3d.data.prompts import batch_boxes, batch_scribbles
from sam3d.data.scans.evaluation_cases import EvaluationCase, SkippedCase
from sam3d.data.scans.prediction_cases import PredictionCase
from sam3d.errors import Sam3dError
from sam3d.evaluation import evaluate_case
from sam3d.models import ClickEncoding, CropEncoding, DensePrompt
from sam3d.models.prompt_encoder import PADDING
from sam3d.objects import ObjectSessions
from sam3d.task import Batch, CaseResult
from sam3d.volumetric import VolumetricSamTask

# The click-label embedding's weight in the prompt encoder (zero-initialised; frozen in ``reference`` mode).
LABEL_EMBEDDING = "label_embed.weight"


class VolumetricSamModule(VolumetricSamTask):
    """The paper's training recipe around the promptable :class:`sam3d.models.VolumetricSam`.

    DiceCE loss (0.5/0.5, softmax, Dice without background), AdamW on the trainable parameters only with
    one group per part (encoder, prompt encoder, decoder), linear learning-rate decay per epoch, gradient
    norms clipped per part (see :class:`sam3d.volumetric.VolumetricSamTask`). Each crop comes with the
    clicks ``data.click_mode`` draws.

    ``data.click_mode: interactive`` (beyond the paper) trains corrections as SAM-Med3D and nnInteractive
    do: each step encodes its crops once, then simulates a user for a random number of rounds (0 to
    ``correction_rounds``): the network predicts from the prompts so far and a click is added at the
    deepest point of each sample's largest error region (positive where the tumour is missed, negative
    where the prediction spills over). Only the last prediction is backpropagated; the simulation rounds
    run without gradients, as in RITM's iterative training. They reach the loss only through where the
    clicks land and the previous mask they hand on (thresholded or detached), so backpropagating them
    would only add losses on shorter prompt sequences, which the random number of rounds trains anyway,
    at one decoder's activation memory instead of one per round.

    With ``dense_prompts`` the simulated user also starts with other prompts: each step draws its first
    interaction uniformly among ``click`` and the enabled ``box`` and ``scribble``
    (:mod:`sam3d.data.prompts` draws them from the label); a box or scribble start replaces the clicks of
    samples with a target by padding, and the box or scribbles stay through the correction rounds. With
    ``mask`` every network call also gets the previous call's foreground probability (zeros for the
    first). The step's draws are a function of (run seed, epoch, batch, rank), so a resumed run replays them.

    Args:
        click_mode: The training clicks. Not a setting of its own: the CLI links it from
            ``data.click_mode``, the one click-mode setting; ``interactive`` adds the simulated correction
            rounds above.
        correction_rounds: ``interactive`` only: the most correction clicks simulated in one step.
        click_maps: Beyond the paper: the prompt encoder also gets Gaussian maps of where the positive and
            negative clicks are (the paper's clicks carry only the features under them, so a correction
            cannot say which of two look-alike regions it means); see ``build_volumetric_sam``.
        click_encoding: How the click maps encode a click: ``gaussian`` (the default) or ``distance``
            (``exp(-d / sigma)``, a distance-transform encoding); ``distance`` needs ``click_maps``.
        dense_prompts: Beyond the paper: dense prompt types the network takes, among ``box``, ``scribble``
            and ``mask`` (its previous prediction), each added to the prompt encoder's map through a
            zero-initialised projection. Training feeds them only with ``data.click_mode: interactive``
            (the simulated user above); the sam3d commands refuse them with another click mode.
        prompt_lr_factor: Beyond the paper: learning-rate factor of the zero-initialised projections that
            bring the click maps and dense prompts into the prompt encoder (their own optimiser group,
            clipped with the prompt encoder). Adam moves a weight by about ``lr`` per step whatever its
            gradient, so at 1 these projections stay near zero for a short run.
        **kwargs: The network and recipe (:class:`sam3d.volumetric.VolumetricSamTask`: ``variant``,
            ``sam_checkpoint``, ``crop_size``, ``lr``, ...).
    """

    takes_clicks = True

    def __init__(
        self,
        click_mode: ClickMode = "reference",
        correction_rounds: int = 4,
        click_maps: bool = False,
        click_encoding: ClickEncoding = "gaussian",
        dense_prompts: tuple[DensePrompt, ...] = (),
        prompt_lr_factor: float = 1.0,
        **kwargs: Any,
    ) -> None:
        checked_click_mode(click_mode)
        if not isinstance(correction_rounds, int) or correction_rounds < 0:
            raise Sam3dError(f"correction_rounds must be an integer >= 0, got {correction_rounds!r}")
        if not prompt_lr_factor > 0:
            raise Sam3dError(f"prompt_lr_factor must be > 0, got {prompt_lr_factor!r}")
        super().__init__(**kwargs)
        self.net = self.build_network(
            click_maps=click_maps, click_encoding=click_encoding, dense_prompts=tuple(dense_prompts)
        )
        if click_mode == "reference":
            # The authors' network has no click labels: every reference click is labelled positive, so a
            # trained label embedding would only add a learned constant to every click, which theirs lacks.
            self.net.prompt_encoder.label_embed.requires_grad_(False)
        adaptation = self.hparams["adaptation"]
        name = f"sam-lora-r{self.hparams['lora_rank']}" if adaptation == "lora" else f"sam-{adaptation}"
        # The method's name in test summaries and comparison reports, e.g. sam-spatial, sam-lora-r4.
        self.method = name if self.hparams["freeze_sam"] or adaptation == "full" else f"{name}-unfrozen"

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The paper's parts; with ``prompt_lr_factor`` != 1 the prompt input projections are a part of their own."""
        groups = super().parameter_groups()
        if self.hparams["prompt_lr_factor"] == 1:
            return groups  # the same groups as before the factor existed, so older runs resume
        inputs = {id(p) for p in self.net.prompt_encoder.input_projections() if p.requires_grad}
        groups["prompt_inputs"] = [p for p in groups["prompt_encoder"] if id(p) in inputs]
        groups["prompt_encoder"] = [p for p in groups["prompt_encoder"] if id(p) not in inputs]
        return groups

    def _frozen_keys(self) -> set[str]:
        """Frozen SAM weights only: the click-label embedding is not SAM's, so checkpoints always keep it."""
        return super()._frozen_keys() - {f"net.prompt_encoder.{LABEL_EMBEDDING}"}

    def learning_rate_factors(self) -> dict[str, float]:
        """``prompt_lr_factor`` for the prompt input projections."""
        return {"prompt_inputs": self.hparams["prompt_lr_factor"]}

    def clipped_with(self) -> dict[str, str]:
        """The prompt input projections are clipped as part of the prompt encoder, as with the factor at 1."""
        return {"prompt_inputs": "prompt_encoder"}

    def forward(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor | None = None,
        **dense_prompts: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits ``(B, 2, D, H, W)`` of the network (see :class:`sam3d.models.VolumetricSam`).

        ``dense_prompts``: the network's keyword arguments ``boxes``, ``box_valid``, ``scribbles`` and
        ``previous_mask``, for a network built with ``dense_prompts``.
        """
        return self.net(image, points, labels, **dense_prompts)

    def _logits(self, batch: Batch) -> torch.Tensor:
        # Losses and metrics in float32 whatever the autocast precision.
        return self(batch["image"], batch["points"], batch["point_labels"]).float()

    def _corrected_logits(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Logits after this step's first interaction and simulated correction clicks, on one encoding."""
        generator = self._simulation_generator(batch_idx)
        rounds = self._correction_rounds(batch_idx, generator)
        target = batch["label"][:, 0] > 0
        points, labels, dense = self._first_interaction(batch, target, generator)
        encoding = self.net.encode_image(batch["image"])
        previous = self._no_previous_mask(target)
        for _ in range(rounds):
            with torch.no_grad():
                logits = self._decode(encoding, points, labels, dense, previous)
            previous = self._previous_mask(logits, previous)
            points, labels = correction_clicks(logits.argmax(1), target, points, labels)
        return self._decode(encoding, points, labels, dense, previous).float()

    def _decode(
        self,
        encoding: CropEncoding,
        points: torch.Tensor,
        labels: torch.Tensor,
        dense: dict[str, torch.Tensor],
        previous: torch.Tensor | None,
    ) -> torch.Tensor:
        """One network call on the prompts so far (dense keywords only for a network that takes them)."""
        if previous is not None:
            dense = {**dense, "previous_mask": previous}
        return self.net.segment(encoding, points, labels, **dense)

    def _no_previous_mask(self, target: torch.Tensor) -> torch.Tensor | None:
        """The first call's ``previous_mask``: zeros with ``mask`` enabled, else None (the network takes none)."""
        if "mask" not in self.hparams["dense_prompts"]:
            return None
        return torch.zeros(len(target), 1, *target.shape[1:], device=target.device)

    @staticmethod
    def _previous_mask(logits: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor | None:
        """The next call's ``previous_mask``: this call's foreground probability, detached (None: no mask)."""
        if previous is None:
            return None
        return torch.softmax(logits.detach().float(), 1)[:, 1:2]

    def _first_interaction(
        self, batch: Batch, target: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The step's first prompts: the clicks, or a simulated box or scribbles (see :mod:`sam3d.data.prompts`).

        A box or scribble start replaces the datamodule's clicks by padding in samples with a target (one
        without keeps its negative click; its box is invalid, its scribbles empty).
        """
        points, labels = batch["points"], batch["point_labels"]
        start = self._first_interaction_type(generator)
        if start == "click":
            return points, labels, {}
        if start == "box":
            boxes, box_valid = batch_boxes(target, generator)
            dense = {"boxes": boxes, "box_valid": box_valid}
        else:
            dense = {"scribbles": batch_scribbles(target, generator)}
        has_target = target.flatten(1).any(1)[:, None]
        return points, labels.masked_fill(has_target, PADDING), dense

    def _first_interaction_type(self, generator: torch.Generator) -> str:
        """``click``, ``box`` or ``scribble``, uniform among the types the network takes (a draw of ``generator``)."""
        starts = ["click", *(name for name in self.hparams["dense_prompts"] if name != "mask")]
        return starts[int(torch.randint(len(starts), (), generator=generator))]

    def _simulation_generator(self, batch_idx: int) -> torch.Generator:
        """The step's source of simulated-user randomness.

        Seeded by (run seed, epoch, batch, rank), so a resumed run simulates the user of an uninterrupted one.
        """
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        key = ((seed * 1_000_003 + self.current_epoch) * 1_000_003 + batch_idx) * 1_009 + self.global_rank
        return torch.Generator().manual_seed(key % 2**63)

    def _correction_rounds(self, batch_idx: int, generator: torch.Generator | None = None) -> int:
        """This step's number of rounds, uniform in 0..correction_rounds (the first draw of its generator)."""
        generator = generator or self._simulation_generator(batch_idx)
        return int(torch.randint(self.hparams["correction_rounds"] + 1, (), generator=generator))

    def training_loss(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The loss of the batch's clicks; ``interactive``: after this step's simulated correction rounds."""
        if self.hparams["click_mode"] != "interactive":
            return super().training_loss(batch, batch_idx)
        return self.loss(self._corrected_logits(batch, batch_idx), batch["label"])

    def evaluate_test_case(self, case: EvaluationCase) -> CaseResult:
        """Click the case with the configured protocol (see :func:`sam3d.evaluation.evaluate_case`)."""
        return evaluate_case(self.net, case, self.evaluation)

    def predict_step(self, case: PredictionCase | SkippedCase, batch_idx: int) -> dict[str, Any]:
        """Foreground probability of each object of a new scan: its clicks file's steps replayed in order.

        With the `evaluation` settings' protocol, one session per object sharing the crop encodings; a scan
        whose steps a session refuses (a box for a network without the box prompt, ...) is skipped, with why.
        Returns ``probabilities`` by object id, and ``probability`` too for a scan with one object.
        """
        if isinstance(case, SkippedCase):
            return {"case": case}
        start = time.perf_counter()
        settings = self.evaluation
        objects = ObjectSessions(
            self.net, case.scan.image, settings.crops, settings.threshold, cache_size=settings.cache_size
        )
        try:
            for each in case.objects:
                objects.add(each.name, each.id)
                for step in each.steps:
                    objects.session.add(*step)
        except Sam3dError as error:
            reason = f"clicks file {case.clicks_file}, scan {case.scan.path}: {error}"
            return {"case": SkippedCase(case.case_id, reason)}
        probabilities = {each.id: each.session.probability for each in objects.objects}
        prediction = {"case": case, "probabilities": probabilities, "seconds": time.perf_counter() - start}
        if len(probabilities) == 1:
            prediction["probability"] = next(iter(probabilities.values()))
        return prediction
