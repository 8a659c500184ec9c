r"""SupCon ResNet-50 on ImageNet: the paper's headline row.

Paper row: Table 2 (ImageNet top-1), SupCon ResNet-50 with AutoAugment: 78.7%.
Official recipe: google-research `supcon/scripts/supcon_imagenet_resnet50.sh` with
the SUPCON / CONTRASTIVE / IMAGENET / TPU groups of `configs.sh`, value by value
(docs/recipes.md):
  stage one   350 epochs, global batch 6144, LARS (momentum 0.9, eta 0.001), base lr 0.4
              (peak 9.6), 12 warmup epochs, cosine to 0, weight decay 1e-3 inside LARS on
              the encoder and projection head (biases yes, batch norm no); SupCon L_out at
              T 0.1 scaled by T; projection: the L2-normalized 2048-d embedding through one
              bias-free Dense(128), L2-normalized; AutoAugment v0, crops 0.08-1, flips.
  stage two   90 epochs, the same augmented two-view batches through the frozen encoder
              (BN on batch statistics, moving averages frozen), a Dense(1000) on the
              normalized embedding, cross-entropy on view 1 with label smoothing 0.05,
              RMSProp (rho 0.9, momentum 0.9, eps 0.001), base lr 0.05 (peak 1.2), 12
              warmup epochs, x0.97 every 0.5 epoch, L2 1e-6 on the classifier.
Deviations (docs/recipes.md): the blur-free AutoAugment row has none in the
recipe; eval scores every validation image (the official drops the last partial batch
of 128: 49,920 of 50,000).

Command:
  python main.py --config=configs/imagenet_r50.py --tpu=my-tpu --workdir=gs://bucket/supcon_r50
  python main.py --config=configs/imagenet_r50.py --mode=describe   # the recipe, no data

Expected: about 78.7% top-1 on the validation split (paper; not run here: no TPU).
Hardware/time: 128 TPU v3 cores (48 images each), the official setup; about a day.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    """No arguments: this file is one experiment (override fields with --config.x=y)."""
    if arg is not None:
        raise ValueError(f"configs/imagenet_r50.py takes no argument; got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "supcon"
    # Start from other weights: a workdir, a checkpoint or an export (supcon_tf/init_from.py).
    config.init_from = config_dict.placeholder(str)
    config.init_from_required = False  # True: configs that only transfer (configs/transfer.py)

    # --- data (records read per host; see `tfds build imagenet2012 --manual_dir=...`)
    config.data = ml_collections.ConfigDict()
    config.data.name = "imagenet2012"
    # where `tfds build` put it; gs:// works. A typed None, so --config.data.data_dir=DIR works.
    config.data.data_dir = config_dict.placeholder(str)
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.num_views = 2
    config.data.augment = "autoaugment"
    config.data.crop_area_min = 0.08
    config.data.color_strength = 1.0
    config.data.color_jitter_style = "tf"
    config.data.hflip = True
    config.data.blur = False
    config.data.blur_probability = 0.5
    config.data.randaugment_layers = 2
    config.data.randaugment_magnitude = 10
    config.data.shuffle_buffer = 10000
    # Class-balanced batches: each batch holds B / M classes with M images each;
    # None: batches drawn uniformly, as in the paper.
    config.data.samples_per_class = config_dict.placeholder(int)

    # --- model: ResNet v1 as the official resnet.py / blocks.py build it
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"
    config.model.width_multiplier = 1.0
    config.model.cifar_stem = False
    config.model.sync_bn = True  # use_global_batch_norm: BN statistics over the global batch
    config.model.zero_init_last_bn = True
    config.model.conv_init = "fan_in_truncated_normal"
    config.model.input_mean = (0.5, 0.5, 0.5)  # images to [-1, 1]
    config.model.input_std = (0.5, 0.5, 0.5)
    config.model.normalize_embedding = True  # both heads see the L2-normalized embedding
    config.model.projection_dims = (128,)
    config.model.projection_bn = False
    config.model.projection_output_bias = False
    config.model.head_init = "normal_0.01"
    config.model.classifier_init = "glorot_uniform"
    # EMA rate of the momentum key encoder; used only when loss.queue_size > 0
    config.model.momentum = 0.999

    # --- loss
    config.loss = ml_collections.ConfigDict()
    config.loss.temperature = 0.1
    config.loss.base_temperature = 1.0  # scale_by_temperature: loss x T
    config.loss.variant = "out"
    config.loss.contrast_mode = "all"
    config.loss.denominator_mode = "all"
    config.loss.positives_cap = config_dict.placeholder(int)
    config.loss.block_size = config_dict.placeholder(int)
    config.loss.label_smoothing = 0.05  # the CE of method "ce" and of stage two
    config.loss.cross_entropy_views = "first"
    # MoCo-style queue of momentum-encoder keys as extra contrasts (0: off)
    config.loss.queue_size = 0
    # weight of a cross-entropy through the encoder (0: the classifier is a stop-gradient monitor)
    config.loss.cross_entropy_weight = 0.0

    # --- optimizer (stage one); lr = base_lr * global_batch / 256
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "lars"
    config.optim.base_lr = 0.4
    config.optim.momentum = 0.9
    config.optim.rho = 0.9
    config.optim.epsilon = 1.0
    config.optim.weight_decay = 1e-3
    config.optim.weight_decay_form = "l2"
    config.optim.decay_batch_norm = False
    config.optim.warmup_epochs = 12
    config.optim.warmup_start_lr = 0.0
    config.optim.schedule = "cosine"
    config.optim.min_lr_ratio = 0.0
    config.optim.decay_epochs = ()
    config.optim.decay_every_epochs = 2.4
    config.optim.decay_rate = 0.1

    # --- training loop
    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 6144
    config.train.epochs = 350
    config.train.min_steps = 0  # a floor on the steps, for small datasets (0: epochs alone)
    config.train.steps_per_loop = 200
    config.train.checkpoint_every_steps = 5000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 200
    config.train.jit_compile = "auto"
    config.train.mixed_precision = "mixed_bfloat16"

    # --- stage two: a classifier through the frozen encoder on the stage-one views
    config.linear = ml_collections.ConfigDict()
    config.linear.protocol = "augmented"
    config.linear.bn_mode = "batch_stats"
    config.linear.data = ml_collections.ConfigDict()  # stage one's augmentation unchanged
    config.linear.epochs = 90
    config.linear.min_steps = 0
    config.linear.global_batch_size = 6144
    config.linear.label_smoothing = 0.05
    config.linear.optim = ml_collections.ConfigDict()
    config.linear.optim.name = "rmsprop"
    config.linear.optim.base_lr = 0.05
    config.linear.optim.momentum = 0.9
    config.linear.optim.rho = 0.9
    config.linear.optim.epsilon = 0.001
    config.linear.optim.weight_decay = 1e-6
    config.linear.optim.weight_decay_form = "l2"
    config.linear.optim.decay_batch_norm = False
    config.linear.optim.warmup_epochs = 12
    config.linear.optim.warmup_start_lr = 0.0
    config.linear.optim.schedule = "exponential"
    config.linear.optim.min_lr_ratio = 0.0
    config.linear.optim.decay_epochs = ()
    config.linear.optim.decay_every_epochs = 0.5
    config.linear.optim.decay_rate = 0.97

    # --- evaluation (top-1/top-5 over the whole split; padding masked)
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1024
    return config
