r"""Cross-entropy baseline, ResNet-50 (CIFAR stem) on CIFAR10.

Paper row: Table 2, CIFAR10 cross-entropy ResNet-50: 95.0% top-1. The model's own
classifier is evaluated. PyTorch reference recipe: batch 1024, SGD lr 0.8 (base 0.2
per 256), cosine, 500 epochs; each of the two views counts as an example.

Command:
  python main.py --config=configs/cifar10_r50_ce.py --workdir=/tmp/ce_cifar10

Expected: about 95.0% top-1 on the test split (untested at full length here).
Hardware/time: 8 V100 GPUs about half a day.
"""

import ml_collections


def get_config(arg=None):
    """No arguments: this file is one experiment (override fields with --config.x=y)."""
    if arg is not None:
        raise ValueError(f"configs/cifar10_r50_ce.py takes no argument; got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "ce"

    # --- data (the PyTorch reference's crops 0.2-1, flips, jitter 0.4)
    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"
    config.data.data_dir = None  # where `tfds build` put it; gs:// works
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.image_size = 32
    config.data.num_views = 2
    config.data.augment = "simaugment"
    config.data.crop_area_min = 0.2
    config.data.color_strength = 0.5
    config.data.hflip = True
    config.data.blur = False
    config.data.randaugment_layers = 2
    config.data.randaugment_magnitude = 9
    config.data.shuffle_buffer = 50000

    # --- model
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"
    config.model.width_multiplier = 1.0
    config.model.cifar_stem = True
    config.model.sync_bn = True  # BN statistics over the global batch
    config.model.zero_init_last_bn = True
    config.model.projection_dims = (2048, 128)
    config.model.projection_bn = False

    # --- loss
    config.loss = ml_collections.ConfigDict()
    config.loss.temperature = 0.1
    config.loss.base_temperature = None
    config.loss.variant = "out"
    config.loss.contrast_mode = "all"
    config.loss.block_size = None

    # --- optimizer (stage one); lr = base_lr * global_batch / 256
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.base_lr = 0.2
    config.optim.momentum = 0.9
    config.optim.weight_decay = 0.0005
    config.optim.warmup_epochs = 10
    config.optim.schedule = "cosine"
    config.optim.decay_epochs = ()
    config.optim.decay_rate = 0.1

    # --- training loop
    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 1024
    config.train.epochs = 500
    config.train.steps_per_loop = 50
    config.train.checkpoint_every_steps = 2000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 50
    config.train.jit_compile = "auto"
    config.train.mixed_precision = None

    # --- linear stage (unused by ce; kept so every config has the full schema)
    config.linear = ml_collections.ConfigDict()
    config.linear.epochs = 100
    config.linear.global_batch_size = 512
    config.linear.optim = ml_collections.ConfigDict()
    config.linear.optim.name = "sgd"
    config.linear.optim.base_lr = 0.25
    config.linear.optim.momentum = 0.9
    config.linear.optim.weight_decay = 0.0
    config.linear.optim.warmup_epochs = 0
    config.linear.optim.schedule = "cosine"
    config.linear.optim.decay_epochs = ()
    config.linear.optim.decay_rate = 0.1

    # --- evaluation (top-1/top-5 over the whole split; padding masked)
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000
    return config
