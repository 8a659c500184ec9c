r"""SupCon ResNet-50 on CIFAR-10 (CIFAR stem), the PyTorch reference's recipe.

Paper row: Table 2, CIFAR-10 SupCon ResNet-50: 96.0% top-1. The paper's CIFAR numbers
come from HobbitLong/SupContrast (the google-research README says so), so this row
follows it value by value (docs/recipes.md):
  stage one   `main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine`:
              1000 epochs, SGD momentum 0.9, lr 0.5 (base 0.125 per 256), warmup over 10
              epochs from 0.01, cosine per epoch to lr * 1e-3, weight decay 1e-4 on every
              parameter (batch norm too); SupCon L_out at T 0.1 scaled by T/0.07;
              ResNet-50 with the 3x3 stem, kaiming fan-out init, last BN gamma 1; head
              2048-ReLU-128 with biases on the raw embedding; crops 0.2-1, flips, colour
              jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2; CIFAR-10 mean/std.
  stage two   `main_linear.py --batch_size 512 --learning_rate 5`: 100 epochs, SGD 0.9,
              lr 5 (base 2.5), x0.2 after epochs 60, 75 and 90, no warmup, no decay,
              a Linear(2048, 10) on the raw embedding, crops and flips, encoder in eval mode.
Deviations (docs/recipes.md): the last epoch is reported where the reference
reports its best test epoch; batch norm is per replica as on the reference's GPUs.

Command:
  python main.py --config=configs/cifar10_r50.py --workdir=/tmp/supcon_cifar10
  (prepare the data once: tfds build cifar10)

Expected: about 96.0% top-1 on the test split (reference; not run at full length here).
Hardware/time: 8 GPUs (the reference), or a TPU v3-8; about a day.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    """No arguments: this file is one experiment (override fields with --config.x=y)."""
    if arg is not None:
        raise ValueError(f"configs/cifar10_r50.py takes no argument; got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "supcon"
    # Start from other weights: a workdir, a checkpoint or an export (supcon_tf/init_from.py).
    config.init_from = config_dict.placeholder(str)
    config.init_from_required = False  # True: configs that only transfer (configs/transfer.py)

    # --- data: torchvision's RandomResizedCrop(32, (0.2, 1)), flip, ColorJitter, grayscale
    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"
    # where `tfds build` put it; gs:// works. A typed None, so --config.data.data_dir=DIR works.
    config.data.data_dir = config_dict.placeholder(str)
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.image_size = 32
    config.data.num_views = 2
    config.data.augment = "simaugment"
    config.data.crop_area_min = 0.2
    config.data.color_strength = 0.5  # ColorJitter(0.4, 0.4, 0.4, 0.1)
    config.data.color_jitter_style = "pytorch"
    config.data.hflip = True
    config.data.blur = False
    config.data.blur_probability = 0.5
    config.data.randaugment_layers = 2
    config.data.randaugment_magnitude = 10
    config.data.shuffle_buffer = 50000
    # Class-balanced batches: each batch holds B / M classes with M images each;
    # None: batches drawn uniformly, as in the paper.
    config.data.samples_per_class = config_dict.placeholder(int)

    # --- model: networks/resnet_big.py's ResNet-50 and SupConResNet head
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"
    config.model.width_multiplier = 1.0
    config.model.cifar_stem = True
    config.model.sync_bn = False  # DataParallel: BN statistics per GPU
    config.model.zero_init_last_bn = False
    config.model.conv_init = "fan_out_normal"
    config.model.input_mean = (0.4914, 0.4822, 0.4465)
    config.model.input_std = (0.2023, 0.1994, 0.2010)
    config.model.normalize_embedding = False
    config.model.projection_dims = (2048, 128)
    config.model.projection_bn = False
    config.model.projection_output_bias = True
    config.model.head_init = "pytorch_default"
    config.model.classifier_init = "pytorch_default"
    # EMA rate of the momentum key encoder; used only when loss.queue_size > 0
    config.model.momentum = 0.999

    # --- loss: SupConLoss(temperature=0.1), base_temperature 0.07
    config.loss = ml_collections.ConfigDict()
    config.loss.temperature = 0.1
    config.loss.base_temperature = 0.07
    config.loss.variant = "out"
    config.loss.contrast_mode = "all"
    config.loss.denominator_mode = "all"
    config.loss.positives_cap = config_dict.placeholder(int)
    config.loss.block_size = config_dict.placeholder(int)
    config.loss.label_smoothing = 0.0
    config.loss.cross_entropy_views = "all"
    # MoCo-style queue of momentum-encoder keys as extra contrasts (0: off)
    config.loss.queue_size = 0
    # weight of a cross-entropy through the encoder (0: the classifier is a stop-gradient monitor)
    config.loss.cross_entropy_weight = 0.0

    # --- optimizer (stage one); lr = base_lr * global_batch / 256
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.base_lr = 0.125  # lr 0.5 at batch 1024
    config.optim.momentum = 0.9
    config.optim.rho = 0.9
    config.optim.epsilon = 1.0
    config.optim.weight_decay = 1e-4
    config.optim.weight_decay_form = "l2"
    config.optim.decay_batch_norm = True
    config.optim.warmup_epochs = 10
    config.optim.warmup_start_lr = 0.01
    config.optim.schedule = "cosine_epoch"
    config.optim.min_lr_ratio = 1e-3  # eta_min = lr * lr_decay_rate ** 3
    config.optim.decay_epochs = ()
    config.optim.decay_every_epochs = 2.4
    config.optim.decay_rate = 0.1

    # --- training loop
    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 1024
    config.train.epochs = 1000
    config.train.min_steps = 0  # a floor on the steps, for small datasets (0: epochs alone)
    config.train.steps_per_loop = 50
    config.train.checkpoint_every_steps = 2000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 50
    config.train.jit_compile = "auto"
    config.train.mixed_precision = config_dict.placeholder(str)

    # --- stage two: main_linear.py, a classifier through the frozen encoder
    config.linear = ml_collections.ConfigDict()
    config.linear.protocol = "augmented"
    config.linear.bn_mode = "inference"
    config.linear.data = ml_collections.ConfigDict()
    config.linear.data.augment = "crop_flip"
    config.linear.data.num_views = 1
    config.linear.epochs = 100
    config.linear.min_steps = 0
    config.linear.global_batch_size = 512
    config.linear.label_smoothing = 0.0
    config.linear.optim = ml_collections.ConfigDict()
    config.linear.optim.name = "sgd"
    config.linear.optim.base_lr = 2.5  # lr 5 at batch 512
    config.linear.optim.momentum = 0.9
    config.linear.optim.rho = 0.9
    config.linear.optim.epsilon = 0.001
    config.linear.optim.weight_decay = 0.0
    config.linear.optim.weight_decay_form = "l2"
    config.linear.optim.decay_batch_norm = True
    config.linear.optim.warmup_epochs = 0
    config.linear.optim.warmup_start_lr = 0.0
    config.linear.optim.schedule = "piecewise"
    config.linear.optim.min_lr_ratio = 0.0
    config.linear.optim.decay_epochs = (60, 75, 90)
    config.linear.optim.decay_every_epochs = 2.4
    config.linear.optim.decay_rate = 0.2

    # --- evaluation (top-1/top-5 over the whole split; padding masked)
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000
    return config
