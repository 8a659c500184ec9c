r"""SupCon ResNet-50 on CIFAR10 (CIFAR stem).

Paper row: Table 2, CIFAR10 SupCon ResNet-50: 96.0% top-1 (cross-entropy 95.0%),
the PyTorch reference's recipe: batch 1024, temperature 0.1, SGD lr 0.5 (base 0.125
per 256), cosine, 1000 epochs; linear stage SGD for 100 epochs.

Command:
  python main.py --config=configs/cifar10_r50.py --workdir=/tmp/supcon_cifar10
  (prepare the data once: tfds build cifar10)

Expected: about 96.0% top-1 on the test split (untested at full length here).
Hardware/time: 8 V100 GPUs about a day; a TPU v3-8 several hours.
"""

import ml_collections


def get_config(arg=None):
    """No arguments: this file is one experiment (override fields with --config.x=y)."""
    if arg is not None:
        raise ValueError(f"configs/cifar10_r50.py takes no argument; got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "supcon"

    # --- data (the PyTorch reference's crops 0.2-1, flips, jitter 0.4)
    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"
    # where `tfds build` put it; gs:// works. A typed None, so --config.data.data_dir=DIR works.
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
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
    config.loss.base_temperature = ml_collections.config_dict.placeholder(float)
    config.loss.variant = "out"
    config.loss.contrast_mode = "all"
    config.loss.block_size = ml_collections.config_dict.placeholder(int)

    # --- optimizer (stage one); lr = base_lr * global_batch / 256
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.base_lr = 0.125
    config.optim.momentum = 0.9
    config.optim.weight_decay = 0.0001
    config.optim.warmup_epochs = 10
    config.optim.schedule = "cosine"
    config.optim.decay_epochs = ()
    config.optim.decay_rate = 0.1

    # --- training loop
    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 1024
    config.train.epochs = 1000
    config.train.steps_per_loop = 50
    config.train.checkpoint_every_steps = 2000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 50
    config.train.jit_compile = "auto"
    config.train.mixed_precision = ml_collections.config_dict.placeholder(str)

    # --- linear stage: SGD for 100 epochs on the frozen encoder
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
