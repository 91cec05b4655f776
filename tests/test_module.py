"""The LightningModule's training recipe: optimiser groups, schedule, per-part clipping, checkpoints."""

from __future__ import annotations

import itertools

import pytest
import torch

from sam3d.data.clicks import correction_clicks
from sam3d.models import CheckpointError, build_sam_2d
from sam3d.models.config import VARIANTS
from sam3d.module import VolumetricSamModule


class _Trainer:
    max_epochs = 500


def _optimizer_and_scheduler(module):
    module.trainer = _Trainer()  # type: ignore[assignment]
    config = module.configure_optimizers()
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


@pytest.fixture
def module(monkeypatch):
    monkeypatch.setattr(VolumetricSamModule, "trainer", None, raising=False)
    return VolumetricSamModule(variant="tiny")


def test_prompt_settings_are_hyperparameters_of_the_network(monkeypatch):
    monkeypatch.setattr(VolumetricSamModule, "trainer", None, raising=False)
    module = VolumetricSamModule(
        variant="tiny", click_maps=True, click_encoding="distance", dense_prompts=("box", "mask")
    )
    assert module.hparams["dense_prompts"] == ("box", "mask")
    assert module.hparams["click_encoding"] == "distance"
    assert module.net.config.dense_prompts == ("box", "mask")
    assert module.net.prompt_encoder.click_maps.encoding == "distance"  # type: ignore[union-attr]
    image, points = torch.randn(1, 1, 64, 64, 64), torch.tensor([[[30.0, 30, 30]]])
    boxes = torch.tensor([[[10.0, 10, 10, 20, 20, 20]]])
    assert module(image, points, boxes=boxes).shape == (1, 2, 64, 64, 64)
    in_optimizer = {
        id(p) for group in _optimizer_and_scheduler(module)[0].param_groups for p in group["params"]
    }
    assert id(module.net.prompt_encoder.dense_prompts.project.weight) in in_optimizer  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"'scribble' in VolumetricSamConfig\.dense_prompts"):
        module(image, points, scribbles=torch.zeros(1, 2, 64, 64, 64))


def test_adamw_groups_hold_exactly_the_trainable_parameters(module):
    optimizer, _ = _optimizer_and_scheduler(module)
    assert [group["name"] for group in optimizer.param_groups] == ["encoder", "prompt_encoder", "decoder"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert all(group["lr"] == 4e-4 and group["weight_decay"] == 0.0 for group in optimizer.param_groups)


def test_learning_rate_decays_linearly_to_one_percent(module):
    optimizer, scheduler = _optimizer_and_scheduler(module)
    rates = []
    for _ in range(500):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(4e-4)
    assert rates[250] == pytest.approx(4e-4 * (1 - 0.99 * 250 / 500))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-6)


def test_gradients_are_clipped_per_part(module):
    optimizer, _ = _optimizer_and_scheduler(module)
    encoder, prompt, decoder = (group["params"] for group in optimizer.param_groups)
    for params, value in ((encoder, 10.0), (prompt, 1e-4), (decoder, 10.0)):
        for p in params:
            p.grad = torch.full_like(p, value)
    small_before = torch.cat([p.grad.flatten() for p in prompt]).norm()
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0)
    norms = [torch.cat([p.grad.flatten() for p in params]).norm() for params in (encoder, prompt, decoder)]
    assert norms[0] == pytest.approx(1.0, rel=1e-4)
    assert norms[2] == pytest.approx(1.0, rel=1e-4)
    assert norms[1] == pytest.approx(small_before.item())  # a global clip would have shrunk it too


def _prompt_module(prompt_lr_factor, monkeypatch):
    monkeypatch.setattr(VolumetricSamModule, "trainer", None, raising=False)
    torch.manual_seed(0)
    return VolumetricSamModule(
        variant="tiny", click_maps=True, dense_prompts=("box", "mask"), prompt_lr_factor=prompt_lr_factor
    )


def test_the_prompt_input_projections_train_at_their_own_rate(monkeypatch):
    plain, fast = _prompt_module(1.0, monkeypatch), _prompt_module(25.0, monkeypatch)
    # factor 1: the paper's three groups, so runs started before the factor existed resume
    assert [g["name"] for g in _optimizer_and_scheduler(plain)[0].param_groups] == [
        "encoder",
        "prompt_encoder",
        "decoder",
    ]
    optimizer, scheduler = _optimizer_and_scheduler(fast)
    groups = {group["name"]: group for group in optimizer.param_groups}
    encoder = fast.net.prompt_encoder
    projections = [encoder.click_maps.project, encoder.dense_prompts.project]  # type: ignore[union-attr]
    expected = {id(p) for module in projections for p in module.parameters()}
    assert {id(p) for p in groups["prompt_inputs"]["params"]} == expected
    assert not expected & {id(p) for p in groups["prompt_encoder"]["params"]}
    assert groups["prompt_inputs"]["lr"] == pytest.approx(25 * 4e-4)
    assert groups["decoder"]["lr"] == pytest.approx(4e-4)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in fast.parameters() if p.requires_grad}
    scheduler.step()  # the linear decay scales every group from its own rate
    assert groups["prompt_inputs"]["lr"] == pytest.approx(25 * 4e-4 * (1 - 0.99 / 500))

    # one Adam step from zero moves each projection weight by about its group's rate
    moved = {}
    for name, module in (("plain", plain), ("fast", fast)):
        optimizer, _ = _optimizer_and_scheduler(module)
        for p in module.parameters():
            p.grad = torch.ones_like(p) if p.requires_grad else None
        optimizer.step()
        moved[name] = module.net.prompt_encoder.dense_prompts.project.weight.abs().max().item()  # type: ignore[union-attr]
    assert moved["plain"] == pytest.approx(4e-4, rel=1e-3)
    assert moved["fast"] == pytest.approx(25 * 4e-4, rel=1e-3)


def test_the_prompt_input_projections_are_clipped_with_the_prompt_encoder(monkeypatch):
    module = _prompt_module(25.0, monkeypatch)
    optimizer, _ = _optimizer_and_scheduler(module)
    groups = {group["name"]: group["params"] for group in optimizer.param_groups}
    for p in groups["prompt_encoder"]:
        p.grad = torch.full_like(p, 1e-4)
    for p in groups["prompt_inputs"]:
        p.grad = torch.full_like(p, 10.0)
    prompt = ("prompt_encoder", "prompt_inputs")
    before = {name: torch.cat([p.grad.flatten() for p in groups[name]]).norm() for name in prompt}
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0)
    after = {name: torch.cat([p.grad.flatten() for p in groups[name]]).norm() for name in prompt}
    joint = torch.cat([p.grad.flatten() for name in prompt for p in groups[name]])
    assert joint.norm() == pytest.approx(1.0, rel=1e-4)  # one norm for both, as with the factor at 1
    ratio = after["prompt_encoder"] / before["prompt_encoder"]
    assert ratio == pytest.approx((after["prompt_inputs"] / before["prompt_inputs"]).item(), rel=1e-4)
    assert ratio < 0.2


def test_bad_optimiser_settings_are_refused():
    with pytest.raises(ValueError, match="final_lr_factor"):
        VolumetricSamModule(variant="tiny", final_lr_factor=0.0)
    with pytest.raises(ValueError, match="prompt_lr_factor must be > 0"):
        VolumetricSamModule(variant="tiny", prompt_lr_factor=0.0)


def test_training_step_gives_a_finite_loss_that_backpropagates(module):
    batch = {
        "image": torch.randn(2, 1, 64, 64, 64),
        "label": (torch.rand(2, 1, 64, 64, 64) > 0.95).float(),
        "points": torch.tensor(
            [[[10.0, 10.0, 10.0], [0.0, 0.0, 0.0]], [[30.0, 31.0, 32.0], [1.0, 2.0, 3.0]]]
        ),
        "point_labels": torch.tensor([[1, -1], [1, 0]]),
        "case_id": ["a", "b"],
    }
    module.log = lambda *args, **kwargs: None  # no trainer attached
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.net.mask_decoder.fuse[-1].weight.grad is not None


def test_checkpoints_leave_out_frozen_sam_weights_and_check_the_sam_file(tmp_path):
    first, second = tmp_path / "sam_a.pth", tmp_path / "sam_b.pth"
    torch.save(build_sam_2d(VARIANTS["tiny"]).state_dict(), first)
    torch.save(build_sam_2d(VARIANTS["tiny"]).state_dict(), second)
    module = VolumetricSamModule(variant="tiny", sam_checkpoint=str(first))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert "net.image_encoder.patch_embed.proj.weight" not in checkpoint["state_dict"]
    assert "net.image_encoder.blocks.0.adapter.down.weight" in checkpoint["state_dict"]
    assert checkpoint["sam3d"]["sam"]["path"] == str(first)
    assert len(checkpoint["sam3d"]["sam"]["sha256"]) == 64

    restored = VolumetricSamModule(variant="tiny", sam_checkpoint=str(first))
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])  # strict: the frozen weights came back
    torch.testing.assert_close(restored.state_dict(), module.state_dict())

    other = VolumetricSamModule(variant="tiny", sam_checkpoint=str(second))
    with pytest.raises(
        CheckpointError, match=r"trained from SAM checkpoint .*sam_a\.pth .* this run uses .*sam_b\.pth"
    ):
        other.on_load_checkpoint(dict(checkpoint, state_dict=dict(checkpoint["state_dict"])))


def test_random_sam_weights_stay_in_the_checkpoint(module):
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert "net.image_encoder.patch_embed.proj.weight" in checkpoint["state_dict"]


def test_foreign_checkpoint_is_refused(module):
    with pytest.raises(CheckpointError, match="not written by sam3d"):
        module.on_load_checkpoint({"state_dict": {}})


def test_file_hash_follows_a_file_rewritten_in_place(tmp_path):
    import os

    from sam3d.volumetric import file_sha256

    path = tmp_path / "sam.pth"
    path.write_bytes(b"first")
    first = file_sha256(str(path))
    path.write_bytes(b"other")  # same path and size, new content
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert file_sha256(str(path)) != first
    assert file_sha256(str(path)) == file_sha256(str(path))


def _ball_batch() -> dict:
    grid = torch.stack(torch.meshgrid(*(torch.arange(64),) * 3, indexing="ij"), -1).float()
    label = torch.stack([((grid - c) ** 2).sum(-1) <= 100 for c in (20.0, 40.0)])[:, None].float()
    return {
        "image": torch.randn(2, 1, 64, 64, 64) + 2 * label,
        "label": label,
        "points": torch.tensor([[[20.0, 20.0, 20.0]], [[40.0, 40.0, 40.0]]]),
        "point_labels": torch.ones(2, 1, dtype=torch.long),
        "case_id": ["a", "b"],
    }


def test_interactive_step_encodes_once_and_trains_on_its_last_correction_round(monkeypatch):
    module = VolumetricSamModule(variant="tiny", click_mode="interactive", correction_rounds=3)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    rounds = [module._correction_rounds(batch_idx) for batch_idx in range(40)]
    assert set(rounds) == {0, 1, 2, 3}
    assert rounds == [module._correction_rounds(batch_idx) for batch_idx in range(40)]  # resumable
    net, encodings, decodings = module.net, [], []
    encode, segment = net.encode_image, net.segment

    def recording_encode(image):
        encodings.append(image)
        return encode(image)

    def recording_segment(encoding, points, labels):
        logits = segment(encoding, points, labels)
        decodings.append((points, labels, logits))
        return logits

    monkeypatch.setattr(net, "encode_image", recording_encode)
    monkeypatch.setattr(net, "segment", recording_segment)
    batch = _ball_batch()
    loss = module.training_step(batch, rounds.index(3))
    assert len(encodings) == 1
    assert [logits.requires_grad for _, _, logits in decodings] == [False, False, False, True]
    target = batch["label"][:, 0] > 0
    for (points, labels, logits), (next_points, next_labels, _) in itertools.pairwise(decodings):
        expected = correction_clicks(logits.argmax(1), target, points, labels)
        assert torch.equal(next_points, expected[0])
        assert torch.equal(next_labels, expected[1])
    final_points, final_labels, _ = decodings[-1]
    assert final_points.shape == (2, 4, 3)
    monkeypatch.undo()
    assert loss.item() == pytest.approx(
        module.loss(module.net(batch["image"], final_points, final_labels), batch["label"]).item(), rel=1e-5
    )
    loss.backward()
    assert all(p.grad is not None for p in module.net.image_encoder.parameters() if p.requires_grad)


def test_interactive_settings_are_checked():
    with pytest.raises(ValueError, match="correction_rounds"):
        VolumetricSamModule(variant="tiny", click_mode="interactive", correction_rounds=-1)
    with pytest.raises(ValueError, match="click_mode"):
        VolumetricSamModule(variant="tiny", click_mode="boxes")  # type: ignore[arg-type]


def test_clicks_that_are_all_padding_run_forward_and_backward(module):
    image, points = torch.randn(2, 1, 64, 64, 64), torch.zeros(2, 3, 3)
    logits = module(image, points, torch.full((2, 3), -1))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert module.net.mask_decoder.fuse[-1].weight.grad is not None


def _plan(module, batch_idx):
    """The (rounds, first interaction) the module draws for ``batch_idx``."""
    generator = module._simulation_generator(batch_idx)
    return module._correction_rounds(batch_idx, generator), module._first_interaction_type(generator)


def _dense_module(dense_prompts, monkeypatch):
    monkeypatch.setattr(VolumetricSamModule, "trainer", None, raising=False)
    module = VolumetricSamModule(
        variant="tiny", click_mode="interactive", correction_rounds=2, dense_prompts=dense_prompts
    )
    module.log = lambda *args, **kwargs: None  # no trainer attached
    return module


def _recorded_step(module, batch, batch_idx, monkeypatch):
    """Runs one training step; returns its loss and each network call's (points, labels, dense, logits)."""
    net, calls = module.net, []
    segment = net.segment

    def recording_segment(encoding, points, labels, **dense):
        logits = segment(encoding, points, labels, **dense)
        calls.append((points, labels, dense, logits))
        return logits

    monkeypatch.setattr(net, "segment", recording_segment)
    loss = module.training_step(batch, batch_idx)
    monkeypatch.setattr(net, "segment", segment)
    return loss, calls


def _batch_with_an_empty_sample() -> dict:
    batch = _ball_batch()
    batch["label"][1] = 0
    batch["point_labels"] = torch.tensor([[1], [0]])  # the datamodule's negative click without target
    return batch


def test_a_box_start_passes_boxes_and_padding_clicks_and_the_mask_rounds_pass_the_previous_probability(
    monkeypatch,
):
    module = _dense_module(("box", "mask"), monkeypatch)
    plans = [_plan(module, batch_idx) for batch_idx in range(40)]
    assert {start for _, start in plans} == {"click", "box"}
    batch_idx = plans.index((2, "box"))
    batch = _batch_with_an_empty_sample()
    loss, calls = _recorded_step(module, batch, batch_idx, monkeypatch)
    assert len(calls) == 3  # two simulated rounds, then the trained call
    _, first_labels, first_dense, _ = calls[0]
    assert first_labels.tolist() == [[-1], [0]]  # the box replaces the click; no target: the negative stays
    assert first_dense["box_valid"].tolist() == [[True], [False]]
    box = first_dense["boxes"][0, 0]
    ball = batch["label"][0, 0] > 0
    voxels = torch.nonzero(ball)
    assert (box[:3] >= voxels.min(0).values - 3).all()  # drawn from the target, widened by <= 3 voxels
    assert (box[3:] <= voxels.max(0).values + 3).all()
    d0, h0, w0, _, h1, w1 = box.tolist()
    assert ball[d0].any()
    assert not ball[d0, :h0].any()  # it covers the target on its first slice
    assert not ball[d0, h1 + 1 :].any()
    assert not ball[d0, :, :w0].any()
    assert not ball[d0, :, w1 + 1 :].any()
    assert torch.equal(first_dense["previous_mask"], torch.zeros(2, 1, 64, 64, 64))
    for (_, _, _, logits), (_, _, dense, _) in itertools.pairwise(calls):
        assert torch.equal(dense["boxes"], first_dense["boxes"])  # the box stays through the rounds
        probability = torch.softmax(logits.float(), 1)[:, 1:2]
        torch.testing.assert_close(dense["previous_mask"], probability)
        assert not dense["previous_mask"].requires_grad
    assert [logits.requires_grad for *_, logits in calls] == [False, False, True]
    loss.backward()
    assert module.net.prompt_encoder.dense_prompts.project.weight.grad is not None  # type: ignore[union-attr]


def test_a_scribble_start_passes_scribbles_and_no_previous_mask_without_the_mask_prompt(monkeypatch):
    module = _dense_module(("scribble",), monkeypatch)
    plans = [_plan(module, batch_idx) for batch_idx in range(40)]
    batch = _batch_with_an_empty_sample()
    _, calls = _recorded_step(module, batch, plans.index((1, "scribble")), monkeypatch)
    assert len(calls) == 2
    for _, _, dense, _ in calls:
        assert set(dense) == {"scribbles"}
        positive, negative = dense["scribbles"][0]
        target = batch["label"][0, 0] > 0
        assert positive.any()
        assert target[positive].all()
        assert not target[negative].any()
        assert not dense["scribbles"][1].any()  # no target, no scribbles
    assert calls[0][1].tolist() == [[-1], [0]]
    _, calls = _recorded_step(module, batch, plans.index((0, "click")), monkeypatch)
    assert [(labels.tolist(), dense) for _, labels, dense, _ in calls] == [([[1], [0]], {})]


def test_the_simulated_user_is_a_function_of_seed_epoch_batch_and_rank(monkeypatch):
    module = _dense_module(("box", "scribble", "mask"), monkeypatch)
    batch = _batch_with_an_empty_sample()
    plans = [_plan(module, batch_idx) for batch_idx in range(40)]
    assert {start for _, start in plans} == {"click", "box", "scribble"}
    assert plans == [_plan(module, batch_idx) for batch_idx in range(40)]
    batch_idx = plans.index((0, "box"))
    boxes = [_recorded_step(module, batch, batch_idx, monkeypatch)[1][0][2]["boxes"] for _ in range(2)]
    assert torch.equal(*boxes)  # the same box when the step is replayed
    for name, value in (("current_epoch", 1), ("global_rank", 1)):
        with monkeypatch.context() as patched:
            patched.setattr(VolumetricSamModule, name, property(lambda self, v=value: v))
            assert [_plan(module, batch_idx) for batch_idx in range(40)] != plans, name
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert [_plan(module, batch_idx) for batch_idx in range(40)] != plans


@pytest.mark.parametrize("click_mode", ["reference", "labelled"])
def test_the_click_label_embedding_trains_only_where_clicks_have_labels(click_mode, monkeypatch, tmp_path):
    """The authors' network has no click labels: ``reference`` mode (every click positive) leaves it at zero."""
    monkeypatch.setattr(VolumetricSamModule, "trainer", None, raising=False)
    torch.manual_seed(0)
    module = VolumetricSamModule(variant="tiny", click_mode=click_mode)
    embedding = module.net.prompt_encoder.label_embed.weight
    optimizer, _ = _optimizer_and_scheduler(module)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert (id(embedding) in in_optimizer) is (click_mode != "reference")
    batch = {
        "image": torch.randn(1, 1, 64, 64, 64),
        "label": (torch.rand(1, 1, 64, 64, 64) > 0.9).float(),
        "points": torch.tensor([[[30.0, 30, 30], [10, 20, 30]]]),
        "point_labels": torch.tensor([[1, 1 if click_mode == "reference" else 0]]),
    }
    module.training_loss(batch, 0).backward()
    optimizer.step()
    assert bool(embedding.abs().sum() == 0) is (click_mode == "reference")
    # a checkpoint keeps it either way (it is not a SAM weight that the SAM file would restore)
    sam = tmp_path / "sam.pth"
    torch.save(build_sam_2d(VARIANTS["tiny"]).state_dict(), sam)
    with_sam = VolumetricSamModule(variant="tiny", click_mode=click_mode, sam_checkpoint=str(sam))
    checkpoint = {"state_dict": with_sam.state_dict()}
    with_sam.on_save_checkpoint(checkpoint)
    assert "net.prompt_encoder.label_embed.weight" in checkpoint["state_dict"]
