"""One test per trick that checks its math (He et al., "Bag of Tricks"), not just that it runs."""

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EMAWeightAveraging

from mnistlab import schedules, tricks
from mnistlab.checkpoints import existing_checkpoint
from mnistlab.config import compose_run_config
from mnistlab.errors import ConfigError
from mnistlab.tasks.classification import Classifier
from mnistlab.tasks.registry import load_task
from mnistlab.validation import check_config

from .conftest import RecordWeights, classifier, configured, network

MODEL = {"_target_": "mnistlab.models.SeedNet", "num_classes": 10}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


def attach_trainer(module: Classifier, max_epochs: int = 3, epoch: int = 0) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.fit_loop.epoch_progress.current.completed = epoch
    module.trainer = trainer
    return trainer


def batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


# Label smoothing -------------------------------------------------------------------------------------------

def test_label_smoothing_loss_equals_the_closed_form():
    torch.manual_seed(0)
    module = classifier(MODEL, SGD, {}, label_smoothing=0.1)
    x, y = batch()
    loss, logits, labels = module.training_loss(x, y)
    log_p = F.log_softmax(logits, dim=1)
    # (1 - eps) * CE(y) + eps * mean over the K classes of -log p_k
    expected = (0.9 * -log_p.gather(1, y[:, None]).squeeze(1) + 0.1 * -log_p.mean(dim=1)).mean()
    assert torch.allclose(loss, expected, atol=1e-6) and torch.equal(labels, y)


# Mixup and CutMix ------------------------------------------------------------------------------------------

def test_mixup_inputs_and_targets_are_the_documented_convex_combinations():
    x, y = batch()
    torch.manual_seed(3)
    mixed, targets = tricks.batch_mixer(0.2, 0.0, 10)(x, y)
    onehot = F.one_hot(y, 10).float()
    lam = targets[0, y[0]].item() if y[0] != y[-1] else None
    lam = lam if lam is not None else targets[1, y[1]].item()
    assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot.roll(1, 0), atol=1e-6)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(8))


def test_cutmix_pastes_a_box_and_mixes_targets_by_its_area():
    x, y = batch()
    torch.manual_seed(5)
    mixed, targets = tricks.batch_mixer(0.0, 1.0, 10)(x, y)
    from_partner = mixed == x.roll(1, 0)
    from_self = mixed == x
    assert (from_partner | from_self).all()  # every pixel comes from the image or its partner
    box_share = from_partner[0, 0].float().mean().item()
    onehot = F.one_hot(y, 10).float()
    assert torch.allclose(targets, (1 - box_share) * onehot + box_share * onehot.roll(1, 0), atol=1e-6)


def test_mixup_with_label_smoothing_smooths_once_and_scores_the_dominant_label():
    module = classifier(MODEL, SGD, {}, label_smoothing=0.1, mixup_alpha=0.4)
    attach_trainer(module)
    x, y = batch()
    torch.manual_seed(11)
    loss, _, labels = module.training_loss(x, y)
    torch.manual_seed(11)
    torch.rand(())  # the draw that decides whether this batch is mixed
    mixed, targets = module.mixer(x, y)
    log_p = F.log_softmax(module(mixed), dim=1)
    expected = -((0.9 * targets + 0.1 / 10) * log_p).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.equal(labels, targets.argmax(1))


def test_mixing_is_off_in_the_last_epochs_and_follows_its_probability():
    module = classifier(MODEL, SGD, {}, mixup_alpha=0.2, mix_off_last_epochs=1)
    attach_trainer(module, max_epochs=3, epoch=1)
    assert module.mixing_now()
    attach_trainer(module, max_epochs=3, epoch=2)
    assert not module.mixing_now()
    x, y = batch()
    _, _, labels = module.training_loss(x, y)
    assert torch.equal(labels, y)
    half = classifier(MODEL, SGD, {}, mixup_alpha=0.2, mix_prob=0.5)
    attach_trainer(half)
    torch.manual_seed(0)
    share = sum(half.mixing_now() for _ in range(2000)) / 2000
    assert 0.45 < share < 0.55


# Learning-rate schedules -----------------------------------------------------------------------------------

# The warmup settings of configs/scheduler/_warmup.yaml, off: the schedules have no defaults of their own.
NO_WARMUP = {"warmup_epochs": 0, "warmup_start_factor": 0.01, "warmup_min_steps": 0}


def lrs_of(make, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = make(optimizer)
    lrs = []
    for _ in range(steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return lrs


def test_cosine_with_warmup_follows_the_formula_at_chosen_steps():
    # 10 epochs of 10 steps; 2 epochs of warmup from 0.01 * lr, then cosine over the remaining 80 steps.
    lrs = lrs_of(lambda o: schedules.cosine(o, 100, 10, **{**NO_WARMUP, "warmup_epochs": 2}), 100)
    assert math.isclose(lrs[0], 0.1 * 0.01)                                       # warmup start
    assert math.isclose(lrs[10], 0.1 * (0.01 + 0.99 * 10 / 20))                   # half-way through warmup
    assert math.isclose(lrs[20], 0.1)                                             # end of warmup
    assert math.isclose(lrs[60], 0.1 * (1 + math.cos(math.pi * 40 / 80)) / 2)     # midpoint of the cosine
    assert math.isclose(lrs[70], 0.1 * (1 + math.cos(math.pi * 50 / 80)) / 2)
    assert math.isclose(lrs[100], 0.0, abs_tol=1e-12)                             # last step


def test_cosine_without_warmup_has_no_warmup_wrapper():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert type(schedules.cosine(optimizer, 100, 10, **NO_WARMUP)).__name__ == "CosineAnnealingLR"
    lrs = lrs_of(lambda o: schedules.cosine(o, 100, 10, **NO_WARMUP), 100)
    for t in (0, 25, 50, 100):
        assert math.isclose(lrs[t], 0.1 * (1 + math.cos(math.pi * t / 100)) / 2, abs_tol=1e-12)


def test_step_and_multistep_and_constant_schedules():
    lrs = lrs_of(lambda o: schedules.step(o, 100, 10, step_epochs=3, gamma=0.1, **NO_WARMUP), 100)
    assert math.isclose(lrs[29], 0.1) and math.isclose(lrs[30], 0.01) and math.isclose(lrs[60], 0.001)
    lrs = lrs_of(lambda o: schedules.multistep(o, 100, 10, milestones=(5, 8), gamma=0.5,
                                                      **{**NO_WARMUP, "warmup_epochs": 1}), 100)
    assert math.isclose(lrs[10], 0.1) and math.isclose(lrs[49], 0.1)
    assert math.isclose(lrs[50], 0.05) and math.isclose(lrs[80], 0.025) and math.isclose(lrs[100], 0.025)
    assert lrs_of(lambda o: schedules.constant(o, 100, 10, **NO_WARMUP), 100) == [0.1] * 101  # no scheduler at all
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert schedules.constant(optimizer, 100, 10, **NO_WARMUP) is None
    lrs = lrs_of(lambda o: schedules.constant(o, 100, 10, **{**NO_WARMUP, "warmup_epochs": 1,
                                                             "warmup_start_factor": 0.1}), 100)
    assert math.isclose(lrs[0], 0.01) and math.isclose(lrs[5], 0.1 * (0.1 + 0.9 * 0.5))
    assert all(math.isclose(lr, 0.1) for lr in lrs[10:])


def test_onecycle_rises_to_the_lr_then_anneals():
    lrs = lrs_of(lambda o: schedules.onecycle(o, 100, 10, pct_start=0.25, div_factor=25), 99)
    assert math.isclose(lrs[0], 0.1 / 25) and max(lrs) == lrs[24] and math.isclose(lrs[24], 0.1)
    assert lrs[99] < 1e-5


@pytest.mark.parametrize(("make", "says"), [
    (lambda o: schedules.cosine(o, 100, 10, **{**NO_WARMUP, "warmup_epochs": 10}),
     "scheduler.warmup_epochs=10 is not shorter"),
    (lambda o: schedules.onecycle(o, 100, 10, pct_start=0.25, div_factor=25, warmup_epochs=1),
     "onecycle has its own warmup"),
])
def test_impossible_schedules_are_config_errors(make, says):
    with pytest.raises(ConfigError, match=says):
        make(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))


def test_linear_scaling_rule_sets_the_optimizer_lr_from_the_batch(synthetic_root):
    assert tricks.linear_scaled_lr(0.1, 1024) == pytest.approx(0.4)
    module = classifier(MODEL, SGD, {}, linear_lr_scaling=True)
    trainer = attach_trainer(module)
    trainer.datamodule = configured("data", root=str(synthetic_root), batch_size=512)
    assert module.configure_optimizers().param_groups[0]["lr"] == pytest.approx(0.1 * 512 / 256)


# No bias decay, BatchNorm, stride, kernels ------------------------------------------------------------------

def test_no_bias_decay_puts_every_bias_and_norm_parameter_at_zero_decay():
    module = classifier({**MODEL, "batch_norm": True}, SGD, {}, no_bias_decay=True)
    decay, no_decay = module.configure_optimizers().param_groups
    names = {id(p): n for n, p in module.net.named_parameters()}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "backbone.conv1.weight", "backbone.conv2.weight", "head.fc1.weight", "head.fc2.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "backbone.bn1.bias", "backbone.bn1.weight", "backbone.bn2.bias", "backbone.bn2.weight", "head.bn3.bias",
        "head.bn3.weight", "head.fc2.bias"]
    plain = classifier(MODEL, SGD, {}).configure_optimizers().param_groups
    assert len(plain) == 1 and plain[0]["weight_decay"] == 5e-4 and len(plain[0]["params"]) == 8


def test_batch_norm_variant_has_no_conv_bias_and_a_norm_after_each_layer():
    net = network("SeedNet", batch_norm=True)
    assert net.backbone.conv1.bias is None and net.backbone.conv2.bias is None and net.head.fc1.bias is None
    assert net.head.fc2.bias is not None  # the classifier keeps its bias: no BatchNorm follows it
    norms = (net.backbone.bn1, net.backbone.bn2, net.head.bn3)
    assert [type(m).__name__ for m in norms] == ["BatchNorm2d", "BatchNorm2d", "BatchNorm1d"]
    assert net.head.fc1.in_features == 800
    # The blank probe that sized fc1 left BatchNorm's statistics untouched.
    bn1 = net.backbone.bn1
    assert torch.equal(bn1.running_mean, torch.zeros(20)) and torch.equal(bn1.running_var, torch.ones(20))
    assert net.training


def test_stride_and_pool_variants_give_the_same_shapes_and_different_values():
    torch.manual_seed(0)
    pool, stride = network("SeedNet", downsample="pool"), network("SeedNet", downsample="stride")
    stride.load_state_dict(pool.state_dict())
    x = torch.randn(64, 1, 28, 28)
    after_pool = F.max_pool2d(F.relu(pool.backbone.conv1(x)), 2)
    after_stride = F.relu(stride.backbone.conv1(x))
    assert after_pool.shape == after_stride.shape == (64, 20, 12, 12)
    assert not torch.allclose(after_pool, after_stride)
    assert pool.backbone(x).shape == stride.backbone(x).shape == (64, 50, 4, 4)
    assert stride(x).shape == (64, 10)


@pytest.mark.parametrize(("kernel", "dilation", "side"), [(3, 1, 5), (5, 1, 4), (3, 2, 4), (5, 2, 1)])
def test_kernel_size_and_dilation_keep_fc1_derived(kernel, dilation, side):
    net = network("SeedNet", kernel_size=kernel, dilation=dilation)
    span = dilation * (kernel - 1) + 1  # the receptive field of one dilated kernel
    assert (((28 - span + 1) // 2) - span + 1) // 2 == side
    assert net.head.fc1.in_features == 50 * side * side
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_dropout_zeroes_that_share_of_fc1_outputs_in_training_only():
    torch.manual_seed(0)
    net, plain = network("SeedNet", dropout=0.5), network("SeedNet")
    plain.load_state_dict(net.state_dict())  # no parameters of its own: the same checkpoint keys
    x = torch.randn(256, 1, 28, 28)
    seen = {}
    net.head.fc2.register_forward_hook(lambda module, inputs, output: seen.update(hidden=inputs[0]))
    hidden = F.relu(net.head.fc1(net.backbone(x).flatten(1)))
    net(x)
    dropped = seen["hidden"] == 0
    assert 0.45 < (dropped & (hidden > 0)).sum() / (hidden > 0).sum() < 0.55
    kept = ~dropped
    assert torch.allclose(seen["hidden"][kept], 2 * hidden[kept])  # survivors scaled by 1 / (1 - p)
    net.eval(), plain.eval()
    assert torch.equal(net(x), plain(x))


def test_a_conv_stack_too_large_for_the_image_is_a_config_error():
    with pytest.raises(ConfigError, match="the conv stack leaves nothing of a 28x28 image"):
        network("SeedNet", kernel_size=7, dilation=3)


def test_channels_last_puts_the_convolutions_in_nhwc():
    module = classifier(MODEL, SGD, {}, channels_last=True)
    # conv2's weights, [50, 20, 5, 5]: with one input channel, conv1's are contiguous in both formats
    assert module.net.backbone.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not classifier(MODEL, SGD, {}, channels_last=False).net.backbone.conv2.weight.is_contiguous(
        memory_format=torch.channels_last)
    assert module(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# Knowledge distillation ------------------------------------------------------------------------------------

def test_distillation_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    teacher = torch.tensor([[1.0, 1.0, -2.0], [0.0, 3.0, 1.0]])
    hard = torch.tensor(0.7)
    w, t = 0.3, 2.0
    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        ps = [math.exp(v / t) / sum(math.exp(u / t) for u in s_row) for v in s_row]
        pt = [math.exp(v / t) / sum(math.exp(u / t) for u in t_row) for v in t_row]
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    expected = (1 - w) * 0.7 + w * t * t * kl / 2
    assert tricks.distillation_loss(student, teacher, hard, w, t).item() == pytest.approx(expected, rel=1e-6)


def save_checkpoint(module: Classifier, path) -> str:
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


def test_the_teacher_is_frozen_in_eval_mode_and_not_saved_with_the_student(tmp_path):
    teacher_path = save_checkpoint(classifier({**MODEL, "batch_norm": True}, SGD, {}), tmp_path / "teacher.ckpt")
    student = classifier(MODEL, SGD, {}, distill_teacher=teacher_path, distill_weight=0.5, distill_temperature=4)
    student.train()
    assert not student.teacher.training and not any(p.requires_grad for p in student.teacher.parameters())
    x, y = batch()
    loss, logits, _ = student.training_loss(x, y)
    loss.backward()
    assert all(p.grad is None for p in student.teacher.parameters())
    assert all(p.grad is not None for p in student.net.parameters())
    hard = F.cross_entropy(logits, y)
    assert torch.allclose(loss, tricks.distillation_loss(logits, student.teacher(x), hard, 0.5, 4.0))
    saved = torch.load(save_checkpoint(student, tmp_path / "student.ckpt"), weights_only=True)["state_dict"]
    assert not any("teacher" in name for name in saved) and "net.backbone.conv1.weight" in saved


def test_a_missing_teacher_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"tricks.distill_teacher=.*nope.ckpt: no such checkpoint file"):
        classifier(MODEL, SGD, {}, distill_teacher=str(tmp_path / "nope.ckpt"))


def test_several_teachers_are_one_ensemble_whose_logits_are_their_mean(tmp_path):
    torch.manual_seed(0)
    paths = [save_checkpoint(classifier({**MODEL, "batch_norm": bn}, SGD, {}), tmp_path / f"teacher{i}.ckpt")
             for i, bn in enumerate((True, False))]
    student = classifier(MODEL, SGD, {}, distill_teacher=paths, channels_last=True)
    members = [load_task(path, "test").net.eval() for path in paths]
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = (members[0](x) + members[1](x)) / 2
        assert torch.allclose(student.teacher(x), expected, atol=1e-6)
    assert not student.teacher.training and not any(p.requires_grad for p in student.teacher.parameters())
    assert student.teacher.members[1].backbone.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any("teacher" in name for name in student.state_dict())


@pytest.mark.parametrize(("teacher", "says"), [
    ("[]", "tricks.distill_teacher=[] must be null, a checkpoint path, or a list of them"),
    ("3", "tricks.distill_teacher=3 must be null, a checkpoint path, or a list of them"),
])
def test_a_teacher_that_is_not_a_path_or_a_list_of_paths_is_a_config_error(teacher, says):
    with pytest.raises(ConfigError) as info:
        check_config(compose_run_config([f"tricks.distill_teacher={teacher}"]))
    assert str(info.value).startswith(says)


def test_a_missing_member_of_a_teacher_ensemble_is_named(tmp_path):
    good = save_checkpoint(classifier(MODEL, SGD, {}), tmp_path / "good.ckpt")
    with pytest.raises(ConfigError, match=r"^tricks.distill_teacher=.*gone.ckpt: no such checkpoint file$"):
        classifier(MODEL, SGD, {}, distill_teacher=[good, str(tmp_path / "gone.ckpt")])


# Transfer learning -----------------------------------------------------------------------------------------

def test_transfer_copies_matching_weights_sizes_a_new_head_and_can_freeze_the_convs(tmp_path):
    source = classifier(MODEL, SGD, {})
    path = save_checkpoint(source, tmp_path / "mnist.ckpt")
    target = classifier({**MODEL, "num_classes": 5}, SGD, {}, init_from=path, freeze_conv=True)
    for name in ("backbone.conv1.weight", "backbone.conv2.bias", "head.fc1.weight"):
        assert torch.equal(target.net.state_dict()[name], source.net.state_dict()[name])
    assert target.net.head.fc2.weight.shape == (5, 500)
    assert not target.net.backbone.conv1.weight.requires_grad and target.net.head.fc1.weight.requires_grad
    trained = {id(p) for g in target.configure_optimizers().param_groups for p in g["params"]}
    assert id(target.net.backbone.conv1.weight) not in trained and id(target.net.head.fc2.weight) in trained
    with pytest.raises(ConfigError, match="its backbone does not fit"):
        classifier({**MODEL, "kernel_size": 3}, SGD, {}, init_from=path)


def test_a_teacher_trains_at_a_true_half_precision_with_its_student(tmp_path, synthetic_root):
    # Lightning converts only submodules to bf16-true; the teacher (not one) must follow, or its fp32 weights meet
    # bf16 inputs.
    teacher = save_checkpoint(classifier(MODEL, SGD, {}), tmp_path / "teacher.ckpt")
    student = classifier(MODEL, SGD, {}, distill_teacher=teacher)
    # A Lightning step per batch: Lightning converts a batch to bf16, not a group of them (runs take no bf16-true).
    data = configured("data", root=str(synthetic_root), val_size=200, batch_size=50, download=False,
                      steps_per_execution=1)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-true", max_epochs=1, limit_train_batches=2,
                         limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(student, datamodule=data)
    assert student.net.head.fc2.weight.dtype == torch.bfloat16
    assert student.teacher.head.fc2.weight.dtype == torch.bfloat16
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


def test_a_list_where_one_checkpoint_is_taken_is_one_line():
    with pytest.raises(ConfigError, match=r"^tricks.init_from=\['a.ckpt'\] must be null or one checkpoint path$"):
        check_config(compose_run_config(["tricks.init_from=[a.ckpt]"]))
    with pytest.raises(ConfigError, match=r"^ckpt_path=\['a.ckpt', 'b.ckpt'\]: takes one checkpoint path$"):
        existing_checkpoint(["a.ckpt", "b.ckpt"], "ckpt_path")


def test_a_distilled_or_transferred_checkpoint_loads_without_its_teacher_or_source(tmp_path):
    earlier = save_checkpoint(classifier(MODEL, SGD, {}), tmp_path / "earlier.ckpt")
    student = classifier(MODEL, SGD, {}, distill_teacher=earlier)
    transferred = classifier(MODEL, SGD, {}, init_from=earlier, freeze_conv=True)
    paths = [save_checkpoint(module, tmp_path / f"{name}.ckpt")
             for name, module in (("student", student), ("transferred", transferred))]
    (tmp_path / "earlier.ckpt").unlink()  # tools, and teachers, need only the checkpoint's own weights
    for module, path in zip((student, transferred), paths, strict=True):
        loaded = load_task(path, "ckpt_path")
        assert loaded.teacher is None
        assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in module.net.state_dict().items())


# Weight averaging ------------------------------------------------------------------------------------------

def test_ema_weights_equal_the_recurrence_and_are_what_training_leaves(synthetic_root):
    module = classifier(MODEL, SGD, {})
    record, ema = RecordWeights(), EMAWeightAveraging(decay=0.9)
    # One optimizer step per Lightning step: the recording callback sees every step's weights.
    data = configured("data", root=str(synthetic_root), val_size=200, batch_size=50, download=False,
                      steps_per_execution=1)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=6, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[record, ema])
    trainer.fit(module, datamodule=data)
    average = record.after_step[0]  # the first update copies the weights
    for weights in record.after_step[1:]:
        average = 0.9 * average + 0.1 * weights
    assert len(record.after_step) == 6
    assert torch.allclose(module.net.head.fc2.weight, average, atol=1e-6)  # training ends on the averaged weights
    assert not torch.allclose(module.net.head.fc2.weight, record.after_step[-1])


# Bad values stop before training ---------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "says"), [
    ("label_smoothing=1.0", "tricks.label_smoothing=1.0 must be in [0, 1)"),
    ("label_smoothing=-0.1", "tricks.label_smoothing=-0.1 must be in [0, 1)"),
    ("mixup_alpha=-0.2", "tricks.mixup_alpha=-0.2 must be >= 0"),
    ("cutmix_alpha=-1", "tricks.cutmix_alpha=-1 must be >= 0"),
    ("mix_prob=1.5", "tricks.mix_prob=1.5 must be in [0, 1]"),
    ("distill_temperature=0", "tricks.distill_temperature=0 must be > 0"),
])
def test_out_of_range_tricks_are_config_errors(setting, says):
    with pytest.raises(ConfigError) as info:
        check_config(compose_run_config([f"tricks.{setting}"]))
    assert str(info.value).startswith(says)


def test_freezing_without_a_transfer_source_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^tricks.freeze_conv=true freezes transferred weights: it needs "
                                          r"tricks.init_from=CKPT$"):
        classifier(MODEL, SGD, {}, freeze_conv=True)


def test_a_checkpoints_tricks_pass_the_rules_a_runs_do(tmp_path):
    """The Classifier takes its settings as given: a run's are checked with its config, a checkpoint's as it loads."""
    saved = torch.load(save_checkpoint(classifier(MODEL, SGD, {}), tmp_path / "m.ckpt"), weights_only=True)
    saved["hyper_parameters"]["label_smoothing"] = 1.5
    torch.save(saved, tmp_path / "edited.ckpt")
    with pytest.raises(ConfigError, match=rf"^ckpt_path={tmp_path / 'edited.ckpt'}: its tricks.label_smoothing=1.5 "
                                          r"must be in \[0, 1\)$"):
        load_task(tmp_path / "edited.ckpt", "ckpt_path")
