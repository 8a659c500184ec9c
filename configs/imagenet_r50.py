r"""SupCon ResNet-50 on ImageNet: the paper's headline row.

Paper row: Table 2 (ImageNet top-1), SupCon ResNet-50 with AutoAugment: 78.7%
(cross-entropy: 78.2%). Recipe from the official scripts: global batch 6144,
AutoAugment, LARS (base lr 0.4 per 256 images, weight decay 1e-3), temperature 0.1,
350 epochs, then a linear classifier with RMSProp for 90 epochs.

Command:
  python main.py --config=configs/imagenet_r50.py --tpu=my-tpu --workdir=gs://bucket/supcon_r50
  (--workdir defaults to ./runs/imagenet_r50, which only a TPU VM --tpu=local can write)

Expected: top-1 about 78.7% on the validation split (untested here; no TPU).
Hardware/time: a TPU v3-256 pod slice (6144 = 24 per core), roughly a day for
350 epochs. The 10 warmup epochs are our choice (the paper gives none).
"""

import ml_collections


def get_config(arg=None):
    """No arguments: this file is one experiment (override fields with --config.x=y)."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r50.py takes no argument; got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "supcon"

    # --- data (records read per host; see `tfds build imagenet2012 --manual_dir=...`)
    config.data = ml_collections.ConfigDict()
    config.data.name = "imagenet2012"
    # where `tfds build` put it; gs:// works. A typed None, so --config.data.data_dir=DIR works.
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.num_views = 2
    config.data.augment = "autoaugment"
    config.data.crop_area_min = 0.08
    config.data.color_strength = 1.0
    config.data.hflip = True
    config.data.blur = False
    config.data.randaugment_layers = 2
    config.data.randaugment_magnitude = 9
    config.data.shuffle_buffer = 10000

    # --- model
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"
    config.model.width_multiplier = 1.0
    config.model.cifar_stem = False
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
    config.optim.name = "lars"
    config.optim.base_lr = 0.4
    config.optim.momentum = 0.9
    config.optim.weight_decay = 0.001
    config.optim.warmup_epochs = 10
    config.optim.schedule = "cosine"
    config.optim.decay_epochs = ()
    config.optim.decay_rate = 0.1

    # --- training loop
    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 6144
    config.train.epochs = 350
    config.train.steps_per_loop = 200
    config.train.checkpoint_every_steps = 5000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 200
    config.train.jit_compile = "auto"
    config.train.mixed_precision = "mixed_bfloat16"

    # --- linear stage: RMSProp for 90 epochs on the frozen encoder, as in the paper;
    # its lr is not given there, so this one is ours
    config.linear = ml_collections.ConfigDict()
    config.linear.epochs = 90
    config.linear.global_batch_size = 4096
    config.linear.optim = ml_collections.ConfigDict()
    config.linear.optim.name = "rmsprop"
    config.linear.optim.base_lr = 0.0005
    config.linear.optim.momentum = 0.9
    config.linear.optim.weight_decay = 0.0
    config.linear.optim.warmup_epochs = 5
    config.linear.optim.schedule = "cosine"
    config.linear.optim.decay_epochs = ()
    config.linear.optim.decay_rate = 0.1

    # --- evaluation (top-1/top-5 over the whole split; padding masked)
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1024
    return config
