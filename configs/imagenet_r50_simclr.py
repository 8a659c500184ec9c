r"""SimCLR (self-supervised contrastive) baseline, ResNet-50 on ImageNet.

Paper row: the SimCLR ResNet-50 reference in Table 2 (the SimCLR paper reports 69.3%).
Labels are withheld from the contrastive loss (NT-Xent); SimCLR's augmentation
(crops, flips, strong colour distortion, blur), LARS base lr 0.3, weight decay 1e-6,
temperature 0.1, batch 4096, 1000 epochs.

Command:
  python main.py --config=configs/imagenet_r50_simclr.py --tpu=my-tpu --workdir=gs://bucket/simclr_r50

Expected: about 69% top-1 after the linear stage (untested here; no TPU).
Hardware/time: TPU v3-128, a few days.
"""

import ml_collections


def get_config(arg=None):
    """No arguments: this file is one experiment (override fields with --config.x=y)."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r50_simclr.py takes no argument; got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "simclr"

    # --- data (records read per host; see `tfds build imagenet2012 --manual_dir=...`)
    config.data = ml_collections.ConfigDict()
    config.data.name = "imagenet2012"
    config.data.data_dir = None  # where `tfds build` put it; gs:// works
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.num_views = 2
    config.data.augment = "simaugment"
    config.data.crop_area_min = 0.08
    config.data.color_strength = 1.0
    config.data.hflip = True
    config.data.blur = True
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
    config.loss.base_temperature = None
    config.loss.variant = "out"
    config.loss.contrast_mode = "all"
    config.loss.block_size = None

    # --- optimizer (stage one); lr = base_lr * global_batch / 256
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "lars"
    config.optim.base_lr = 0.3
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-06
    config.optim.warmup_epochs = 10
    config.optim.schedule = "cosine"
    config.optim.decay_epochs = ()
    config.optim.decay_rate = 0.1

    # --- training loop
    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 4096
    config.train.epochs = 1000
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
