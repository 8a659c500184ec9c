r"""SupCon on the embedded digits dataset: the README's first command.

Paper row: none; a minutes-long, offline, CPU-only check of the whole recipe
(SupCon stage one with an online classifier, then the frozen-encoder linear stage)
on scikit-learn's 8x8 handwritten digits (1,437 train / 360 test, 10 classes).

Command:
  python main.py --config=configs/digits.py --workdir=/tmp/supcon_digits
  python main.py --config=configs/digits.py:tiny --workdir=/tmp/digits_tiny   # seconds, for tests

Expected: test top-1 0.983 for seed 0 (seeds 0-4: 0.983, 0.978, 0.986, 0.975, 0.981;
mean 0.981, on an AMD EPYC with AVX2, oneDNN off; an AVX-512 machine with oneDNN on
read 0.983, 0.986, 0.986, 0.981, 0.986), stage two's classifier, last epoch. Compare
with configs/digits_ce.py.
Recipe: the official mechanics where they apply (L2 weight decay before the
momentum, batch norm not decayed, the TF conv init, [-1, 1] inputs, the classifier
on the normalized embedding, stage two through the frozen encoder on augmented
views); 60 epochs of 128 images x 2 views, then 30 epochs of the classifier.
Hardware/time: 2 CPU cores, no accelerator, no network; 104 s wall for seed 0,
start-up included, on the AVX2 machine (85 s with oneDNN on; target: 3 minutes).
"""

import ml_collections


def get_config(arg=None):
    """arg: None for the real run, "tiny" for a few steps at minimal size (tests)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "supcon"
    # Start from other weights: a workdir, a checkpoint or an export (supcon_tf/init_from.py).
    config.init_from = ml_collections.config_dict.placeholder(str)
    config.init_from_required = False  # True: configs that only transfer (configs/transfer.py)

    # --- data: native 8x8 digits; no flips (a flipped 2 is not a 2)
    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"
    # None means ~/tensorflow_datasets; a typed None, so --config.data.data_dir=DIR works.
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.image_size = 8
    config.data.num_views = 2
    config.data.augment = "simaugment"
    config.data.crop_area_min = 0.7
    config.data.color_strength = 0.5
    config.data.color_jitter_style = "pytorch"
    config.data.hflip = False
    config.data.blur = False
    config.data.blur_probability = 0.5
    config.data.randaugment_layers = 2
    config.data.randaugment_magnitude = 10
    config.data.shuffle_buffer = 2048
    # Class-balanced batches: each batch holds B / M classes with M images each;
    # None: batches drawn uniformly, as in the paper.
    config.data.samples_per_class = ml_collections.config_dict.placeholder(int)

    # --- model: a narrow ResNet-18 with the CIFAR stem
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.width_multiplier = 0.25
    config.model.cifar_stem = True
    config.model.sync_bn = False
    config.model.zero_init_last_bn = True
    config.model.conv_init = "fan_in_truncated_normal"
    config.model.input_mean = (0.5, 0.5, 0.5)
    config.model.input_std = (0.5, 0.5, 0.5)
    config.model.normalize_embedding = True
    config.model.projection_dims = (128, 64)
    config.model.projection_bn = False
    # The official TF head init (N(0, 0.01), no output bias) on this 128-d embedding
    # let the ReLU layer die at lr 0.15: the loss stuck at log(255), top-1 0.46.
    config.model.projection_output_bias = True
    config.model.head_init = "pytorch_default"
    config.model.classifier_init = "glorot_uniform"
    # EMA rate of the momentum key encoder; used only when loss.queue_size > 0
    config.model.momentum = 0.99

    # --- loss
    config.loss = ml_collections.ConfigDict()
    config.loss.temperature = 0.2  # chosen over 0.1 on 3 seeds in an earlier session
    config.loss.base_temperature = ml_collections.config_dict.placeholder(float)
    config.loss.variant = "out"
    config.loss.contrast_mode = "all"
    config.loss.denominator_mode = "all"
    config.loss.positives_cap = ml_collections.config_dict.placeholder(int)
    config.loss.block_size = ml_collections.config_dict.placeholder(int)
    config.loss.label_smoothing = 0.0
    config.loss.cross_entropy_views = "all"
    # MoCo-style queue of momentum-encoder keys as extra contrasts (0: off)
    config.loss.queue_size = 0
    # weight of a cross-entropy through the encoder (0: the classifier is a stop-gradient monitor)
    config.loss.cross_entropy_weight = 0.0

    # --- optimizer (stage one)
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.base_lr = 0.3
    config.optim.momentum = 0.9
    config.optim.rho = 0.9
    config.optim.epsilon = 1.0
    config.optim.weight_decay = 1e-4
    config.optim.weight_decay_form = "l2"
    config.optim.decay_batch_norm = False
    config.optim.warmup_epochs = 2
    config.optim.warmup_start_lr = 0.0
    config.optim.schedule = "cosine"
    config.optim.min_lr_ratio = 0.0
    config.optim.decay_epochs = ()
    config.optim.decay_every_epochs = 2.4
    config.optim.decay_rate = 0.1

    # --- training loop
    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 128
    config.train.epochs = 60
    config.train.min_steps = 0  # a floor on the steps, for small datasets (0: epochs alone)
    config.train.steps_per_loop = 5
    config.train.checkpoint_every_steps = 100
    config.train.keep_checkpoints = 2
    config.train.log_every_steps = 25
    # "auto": XLA on a TPU, not on this CPU, where it made this model's step 1.9x slower
    # (benchmarks/step_bench.py: 120 against 62 ms, oneDNN on). The tests still compile
    # the whole step with XLA, as a TPU requires.
    config.train.jit_compile = "auto"
    config.train.mixed_precision = ml_collections.config_dict.placeholder(str)

    # --- linear stage: a classifier on the frozen embedding, final epoch reported
    config.linear = ml_collections.ConfigDict()
    config.linear.protocol = "augmented"
    config.linear.bn_mode = "inference"
    config.linear.data = ml_collections.ConfigDict()
    config.linear.data.num_views = 1  # the classifier reads view 1 only
    config.linear.epochs = 30
    config.linear.min_steps = 0
    config.linear.global_batch_size = 128
    config.linear.label_smoothing = 0.0
    config.linear.optim = ml_collections.ConfigDict()
    config.linear.optim.name = "sgd"
    config.linear.optim.base_lr = 0.1
    config.linear.optim.momentum = 0.9
    config.linear.optim.rho = 0.9
    config.linear.optim.epsilon = 0.001
    config.linear.optim.weight_decay = 0.0
    config.linear.optim.weight_decay_form = "l2"
    config.linear.optim.decay_batch_norm = False
    config.linear.optim.warmup_epochs = 0
    config.linear.optim.warmup_start_lr = 0.0
    config.linear.optim.schedule = "cosine"
    config.linear.optim.min_lr_ratio = 0.0
    config.linear.optim.decay_epochs = ()
    config.linear.optim.decay_every_epochs = 2.4
    config.linear.optim.decay_rate = 0.1

    # --- evaluation
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 256

    if arg == "tiny":
        config.data.image_size = 8
        config.model.width_multiplier = 0.125
        config.model.projection_dims = (16,)
        config.train.global_batch_size = 128
        config.train.epochs = 1
        config.train.steps_per_loop = 2
        config.train.checkpoint_every_steps = 4
        config.train.log_every_steps = 2
        config.linear.epochs = 2
        config.linear.global_batch_size = 64
        config.eval.batch_size = 64
    elif arg is not None:
        raise ValueError(f"configs/digits.py takes no argument or 'tiny'; got {arg!r}")
    return config
