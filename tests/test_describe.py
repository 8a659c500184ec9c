"""`--mode=describe` of every paper row against the official recipe, written by hand.

OFFICIAL holds the values of docs/recipes.md (google-research supcon/ scripts for
the ImageNet rows, HobbitLong/SupContrast for the CIFAR rows), typed in from the
tables there; the learning rates at 25/50/75 % of each stage are recomputed here from
the official schedule formulas, not taken from supcon_tf.optim.
"""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_config

from supcon_tf import describe

IMAGENET_TRAIN, CIFAR_TRAIN = 1_281_167, 50_000
# torchvision's ResNet-50 / ResNet-101 (bias-free convolutions) less their fc layers.
R50_ENCODER_PARAMS = 25_557_032 - 2_049_000
R101_ENCODER_PARAMS = 44_549_160 - 2_049_000


def gr_imagenet_supcon(**changes):
    """docs/recipes.md, ImageNet ResNet-50, with the ResNet-101/200 changes."""
    row = {
        "method": "supcon", "train_examples": IMAGENET_TRAIN, "num_classes": 1000,
        "s1": dict(optimizer="lars", momentum=0.9, batch=6144, epochs=350, base_lr=0.4,
                   warmup_epochs=12, schedule="cosine", weight_decay=1e-3,
                   weight_decay_form="lars", decay_batch_norm=False),
        "loss": dict(labels=True, temperature=0.1, scale=0.1, variant="out",
                     contrast_mode="all", denominator_mode="all", positives_cap=None),
        "model": dict(projection_dims=[128], projection_bn=False, projection_output_bias=False,
                      normalize_embedding=True, zero_init_last_bn=True,
                      conv_init="fan_in_truncated_normal", head_init="normal_0.01",
                      classifier_init="glorot_uniform", sync_bn=True,
                      input_mean=[0.5] * 3, input_std=[0.5] * 3),
        "aug": dict(augment="autoaugment", num_views=2, crop_area_min=0.08, hflip=True,
                    blur=False, image_size=224),
        "s2": dict(optimizer="rmsprop", momentum=0.9, rho=0.9, epsilon=0.001, batch=6144,
                   epochs=90, base_lr=0.05, warmup_epochs=12, schedule="exponential",
                   decay_rate=0.97, decay_every_epochs=0.5, weight_decay=1e-6,
                   weight_decay_form="l2", label_smoothing=0.05, bn_mode="batch_stats",
                   protocol="augmented", augment="autoaugment", num_views=2),
        "encoder_params": R50_ENCODER_PARAMS,
        "mixed_precision": "mixed_bfloat16",
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            row[section][field] = value
        else:
            row[section] = value
    return row


def sc_cifar(dataset, **changes):
    """docs/recipes.md: what every SC row shares, CIFAR-10 and CIFAR-100 (PyTorch)."""
    cifar100 = dataset == "cifar100"
    row = {
        "method": "supcon", "train_examples": CIFAR_TRAIN, "num_classes": 100 if cifar100 else 10,
        "s1": dict(optimizer="sgd", momentum=0.9, batch=1024, epochs=1000, base_lr=0.5 / 4,
                   warmup_epochs=10, warmup_start_lr=0.01, min_lr_ratio=1e-3,
                   schedule="cosine_epoch", weight_decay=1e-4, weight_decay_form="l2",
                   decay_batch_norm=True),
        "loss": dict(labels=True, temperature=0.1, scale=0.1 / 0.07, variant="out",
                     contrast_mode="all", denominator_mode="all", positives_cap=None),
        "model": dict(projection_dims=[2048, 128], projection_bn=False,
                      projection_output_bias=True, normalize_embedding=False,
                      zero_init_last_bn=False, conv_init="fan_out_normal",
                      head_init="pytorch_default", classifier_init="pytorch_default",
                      sync_bn=False,
                      input_mean=[0.5071, 0.4867, 0.4408] if cifar100 else [0.4914, 0.4822, 0.4465],
                      input_std=[0.2675, 0.2565, 0.2761] if cifar100 else [0.2023, 0.1994, 0.2010]),
        "aug": dict(augment="simaugment", num_views=2, crop_area_min=0.2, hflip=True, blur=False,
                    color_strength=0.5, color_jitter_style="pytorch", image_size=32),
        "s2": dict(optimizer="sgd", momentum=0.9, batch=512, epochs=100, base_lr=5.0 / 2,
                   warmup_epochs=0, schedule="piecewise", decay_epochs=[60, 75, 90],
                   decay_rate=0.2, weight_decay=0.0, label_smoothing=0.0, bn_mode="inference",
                   protocol="augmented", augment="crop_flip", num_views=1),
        "encoder_params": R50_ENCODER_PARAMS - 64 * 3 * (7 * 7 - 3 * 3),  # the 3x3 stem
        "mixed_precision": None,
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        row[section][field] = value
    return row


def ce(row, **s1):
    row = dict(row, method="ce", s2=None, loss=None)
    row["s1"] = dict(row["s1"], **s1)
    return row


OFFICIAL = {
    "imagenet_r50": gr_imagenet_supcon(),
    "imagenet_r101": gr_imagenet_supcon(
        s1__batch=4096, s1__weight_decay=1e-4, s2__batch=4096, encoder_params=R101_ENCODER_PARAMS),
    "imagenet_r200": gr_imagenet_supcon(
        s1__batch=4096, s1__epochs=700, s1__base_lr=0.2, s1__weight_decay=1e-4, s2__batch=4096,
        aug__augment="stacked_randaugment", aug__color_strength=1.0,
        aug__color_jitter_style="tf", aug__randaugment_layers=2, aug__randaugment_magnitude=10,
        aug__blur=True, aug__blur_probability=0.5, s2__augment="stacked_randaugment",
        encoder_params=None),
    "imagenet_r50_ce": ce(
        gr_imagenet_supcon(model__normalize_embedding=False), optimizer="nesterov", epochs=200,
        base_lr=0.1, weight_decay=1e-4, weight_decay_form="l2",
        label_smoothing=0.05, ce_views="first"),
    "imagenet_r50_simclr": gr_imagenet_supcon(
        method="simclr", s1__epochs=100, s1__base_lr=0.3, s1__weight_decay=1e-4,
        loss__labels=False, loss__scale=1.0,
        model__projection_dims=[2048, 2048, 128], model__projection_bn=True,
        model__normalize_embedding=False, model__classifier_init="zeros",
        aug__augment="simaugment", aug__color_strength=1.0, aug__color_jitter_style="tf",
        aug__blur=True, aug__blur_probability=0.5,
        s2=dict(optimizer="nesterov", momentum=0.9, batch=6144, epochs=90, base_lr=0.1,
                warmup_epochs=12, schedule="cosine", weight_decay=1e-6, weight_decay_form="l2",
                label_smoothing=0.05, bn_mode="batch_stats", protocol="augmented",
                augment="simaugment", num_views=2)),
}
for _dataset in ("cifar10", "cifar100"):
    OFFICIAL[f"{_dataset}_r50"] = sc_cifar(_dataset)
    OFFICIAL[f"{_dataset}_r50_simclr"] = sc_cifar(
        _dataset, loss__labels=False, loss__temperature=0.5, loss__scale=0.5 / 0.07,
        s2__base_lr=1.0 / 2)
    OFFICIAL[f"{_dataset}_r50_simclr"]["method"] = "simclr"
    _ce = ce(sc_cifar(_dataset), epochs=500, base_lr=0.8 / 4, label_smoothing=0.0,
             ce_views="all")
    _ce["aug"] = dict(_ce["aug"], augment="crop_flip", num_views=1)
    OFFICIAL[f"{_dataset}_r50_ce"] = _ce


def official_lr(stage, examples, step):
    """The official schedule at `step`, from docs/recipes.md ("Learning rate", SC rows)."""
    peak = stage["base_lr"] * stage["batch"] / 256
    per_epoch = examples / stage["batch"]
    total = int(stage["epochs"] * per_epoch)
    warmup = int(stage["warmup_epochs"] * per_epoch)
    schedule = stage["schedule"]
    if schedule == "cosine_epoch":  # SupContrast: per epoch e = 1..E, per-step warmup
        floor = peak * stage["min_lr_ratio"]
        epoch = int(step // per_epoch) + 1
        def cosine(e):
            return floor + (peak - floor) * (1 + math.cos(math.pi * e / stage["epochs"])) / 2
        if epoch <= stage["warmup_epochs"]:
            progress = step / (stage["warmup_epochs"] * per_epoch)
            return stage["warmup_start_lr"] + progress * (
                cosine(stage["warmup_epochs"]) - stage["warmup_start_lr"])
        return cosine(epoch)
    if step < warmup:
        return peak * step / warmup
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    if schedule == "exponential":
        return peak * stage["decay_rate"] ** math.floor(
            (step - warmup) / (stage["decay_every_epochs"] * per_epoch))
    if schedule == "piecewise":
        passed = sum(step >= int(b * per_epoch) for b in stage["decay_epochs"])
        return peak * stage["decay_rate"] ** passed
    raise AssertionError(schedule)


def check_stage(actual, official, examples):
    peak = official["base_lr"] * official["batch"] / 256
    per_epoch = examples / official["batch"]
    total = int(official["epochs"] * per_epoch)
    assert actual["optimizer"] == official["optimizer"]
    assert actual["momentum"] == official["momentum"]
    assert actual["global_batch_size"] == official["batch"]
    assert actual["epochs"] == official["epochs"]
    assert actual["total_steps"] == total
    assert actual["peak_lr"] == pytest.approx(peak)
    assert actual["warmup_steps"] == int(official["warmup_epochs"] * per_epoch)
    assert actual["schedule"] == official["schedule"]
    assert actual["weight_decay"] == official["weight_decay"]
    if official["weight_decay"]:
        assert actual["weight_decay_form"] == official["weight_decay_form"]
        assert actual["decayed_variables"] > 0
    else:
        assert actual["decayed_variables"] == 0
    for key in ("rho", "epsilon"):
        if key in official:
            assert actual[key] == official[key]
    for fraction in ("25%", "50%", "75%"):
        step = int(float(fraction[:-1]) / 100 * total)
        assert actual["lr_at"][fraction] == pytest.approx(
            official_lr(official, examples, step), rel=1e-5), fraction


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_describe_matches_the_official_recipe(name):
    official = OFFICIAL[name]
    recipe = describe.describe(load_config(f"{name}.py"))
    json.dumps(recipe)  # one JSON object
    assert recipe["method"] == official["method"]
    assert recipe["dataset"]["num_train_examples"] == official["train_examples"]
    assert recipe["dataset"]["num_classes"] == official["num_classes"]
    assert recipe["mixed_precision"] == official["mixed_precision"]

    s1 = recipe["stages"]["stage_one"]
    check_stage(s1, official["s1"], official["train_examples"])
    if official["method"] == "ce":
        assert recipe["loss"]["label_smoothing"] == official["s1"]["label_smoothing"]
        assert recipe["loss"]["views"] == official["s1"]["ce_views"]
        assert "stage_two" not in recipe["stages"]
    else:
        for key, value in official["loss"].items():
            expected = pytest.approx(value) if isinstance(value, float) else value
            assert recipe["loss"][key] == expected, key
        s2 = recipe["stages"]["stage_two"]
        check_stage(s2, official["s2"], official["train_examples"])
        for key in ("label_smoothing", "bn_mode", "protocol"):
            assert s2[key] == official["s2"][key], key
        assert s2["augmentation"]["augment"] == official["s2"]["augment"]
        assert s2["augmentation"]["num_views"] == official["s2"]["num_views"]

    model = recipe["model"]
    for key, value in official["model"].items():
        assert model[key] == value, key
    if official["encoder_params"] is not None:
        assert model["encoder_params"] == official["encoder_params"]
    for key, value in official["aug"].items():
        assert recipe["augmentation"][key] == value, key


@pytest.mark.slow
def test_main_describe_prints_one_json_line_without_data(tmp_path):
    """The command a user runs: no dataset prepared, no TPU, the recipe on the last line."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "main.py"), "--config=configs/cifar10_r50.py",
         "--mode=describe", f"--config.data.data_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    recipe = json.loads(result.stdout.strip().splitlines()[-1])
    assert recipe["dataset"]["sizes_from"] == "published sizes"
    assert recipe["stages"]["stage_one"]["peak_lr"] == pytest.approx(0.5)
