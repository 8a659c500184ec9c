r"""Transfer a trained encoder to a new dataset: a linear classifier, or fine-tuning.

Paper row: none reproduced; the paper's transfer study, on the dataset you choose.
":linear" fits a linear classifier on the frozen encoder's fixed, un-augmented
embeddings (no stage one): a multinomial logistic regression on the standardized
embeddings, fitted to convergence by L-BFGS, its L2 penalty chosen by 5-fold
cross-validation on the train split alone (supcon_tf/probe.py; the eval split is never
looked at), the usual linear-transfer protocol. ":finetune" trains the whole encoder
with a fresh classifier by cross-entropy (method "ce", starting from the loaded
weights) for 10 epochs, or FINETUNE_MIN_STEPS steps when that is more: a folder of
240 images at batch 64 is 3 steps an epoch, and 30 steps leave it underfit.

Command: (docs/transfer.md; the folder: supcon_tf/data/write_shapes_folder.py)
  python main.py --config=configs/digits.py --workdir=/tmp/supcon_digits
  python export_hub.py --workdir=/tmp/supcon_digits --export_dir=/tmp/supcon_digits_hub
  python -m supcon_tf.data.write_shapes_folder /tmp/shapes_folder
  python main.py --config=configs/transfer.py:linear --config.init_from=/tmp/supcon_digits_hub \
      --config.data.name=image_folder --config.data.data_dir=/tmp/shapes_folder \
      --workdir=/tmp/transfer_linear
  python main.py --config=configs/transfer.py:finetune --config.init_from=/tmp/supcon_digits_hub \
      --config.data.name=image_folder --config.data.data_dir=/tmp/shapes_folder \
      --workdir=/tmp/transfer_ft
  python main.py --config=configs/transfer.py:tiny_linear --config.init_from=W   # tests
--config.init_from takes a main.py workdir, a checkpoint prefix W/checkpoints/ckpt-N
(with W/config.json, or a config.json beside it), or an export_hub.py export E or
E/encoder (supcon_tf/init_from.py). Another dataset: --config.data.name=image_folder
--config.data.data_dir=DIR, or a TFDS name with --config.data.train_split=... and
--config.data.eval_split=...; for natural images add --config.data.hflip=True.

The architecture (config.model) and the image size are the source's, read from its
config.json or export_info.json; the values below are placeholders (configs/digits.py's,
the default source's). Only the encoder's weights load; the classifier is fresh.
workdir/checkpoints/ckpt-0 holds the loaded encoder, so the same command resumes
from the run's own checkpoints, never from the source again.

Images: the folder's files are used as they are, at any size and in any of PNG, JPEG,
GIF or BMP. Each is decoded to 3 channels (a grey image replicated, an alpha channel
dropped) and resized, bilinear, to the source's training size (the whole image for
evaluation and for :linear's embeddings, random crops of it for :finetune's
training). The digits encoder was trained on 8x8 grey digits replicated to 3
channels, so a 32x32 folder is downscaled 4x. The run logs this once at start
(init_from.conversion_summary), with the sizes and channels of a few of the folder's
files.

Expected, on the shapes folder (3 classes, 240 train / 300 test images, 32x32, PNG and
JPEG, a third grey) from the digits export, seed 0: :linear test top-1 0.710 (train
0.925; CV top-1 0.692 at penalty 0.0126, 94 L-BFGS iterations); :finetune 0.973 (train
0.996, 1000 steps). FINETUNE_BASE_LR and FINETUNE_MIN_STEPS were chosen on a 180/60
split of the training folder (docs/transfer.md): lr 0.1/0.2/0.4/0.8 at 1000 steps
read 0.950/0.983/0.967/0.933, lr 0.4 at 300 and 3000 steps 0.917 and 0.983.
Hardware/time: 2 CPU cores (AMD EPYC, AVX-512, oneDNN on), no accelerator, no network;
measured while other jobs shared the CPU: :linear 10 s wall, :finetune 50 s wall.
"""

import os
import runpy

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")
MODES = ("linear", "finetune", "tiny_linear", "tiny_finetune")
# :finetune's length floor and learning rate (x 64/256 at batch 64), chosen on a split of
# the training folder of docs/transfer.md (see the docstring).
FINETUNE_MIN_STEPS = 1000
FINETUNE_BASE_LR = 0.2


def get_config(arg=None):
    """arg: "linear" (the default), "finetune", or "tiny_linear"/"tiny_finetune" (tests)."""
    arg = arg or "linear"
    if arg not in MODES:
        raise ValueError(f"configs/transfer.py takes one of {', '.join(MODES)}; got {arg!r}")
    # Everything not set here (augmentation fields, optimizer details, ...) as in digits.py.
    config = runpy.run_path(BASE)["get_config"]()
    # main.py stops with one line when --config.init_from=PATH is missing.
    config.init_from_required = True

    # --- data: small datasets; digits runs offline (set data.name / data_dir for yours)
    config.data.num_views = 2
    config.linear.data.num_views = 1
    config.train.global_batch_size = 64
    config.eval.batch_size = 128
    config.train.steps_per_loop = 10
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 200

    if arg.endswith("linear"):
        # No stage one: the encoder stays as loaded (workdir/checkpoints/ckpt-0). Its
        # optimizer is still built and never steps; "piecewise" is a schedule defined
        # for zero steps.
        config.method = "supcon"
        config.train.epochs = 0
        config.optim.schedule = "piecewise"
        config.optim.warmup_epochs = 0
        # A logistic regression on fixed, un-augmented embeddings of the frozen encoder,
        # fitted to convergence by L-BFGS with its L2 penalty chosen by 5-fold CV on the
        # train split (supcon_tf/probe.py): the usual linear transfer protocol.
        # config.linear's optimizer, epochs and batch size serve "augmented" only.
        config.linear.protocol = "cached"
        config.linear.bn_mode = "inference"
    else:
        # Cross-entropy through the encoder from the loaded weights, fresh classifier.
        config.method = "ce"
        config.data.num_views = 1
        config.loss.cross_entropy_views = "all"
        config.train.epochs = 10
        # A floor on the length, so that a small folder trains long enough (240 images
        # at batch 64 are 3 steps an epoch); a large dataset's 10 epochs exceed it.
        config.train.min_steps = FINETUNE_MIN_STEPS
        config.optim.base_lr = FINETUNE_BASE_LR
        config.optim.warmup_epochs = 1
        config.optim.weight_decay = 1e-4

    if arg.startswith("tiny"):
        config.train.epochs = min(config.train.epochs, 1)
        config.train.min_steps = 0
        config.train.steps_per_loop = 2
        config.train.checkpoint_every_steps = 4
        config.train.log_every_steps = 2
        config.train.keep_checkpoints = 50  # tests read ckpt-0, the loaded encoder
        config.eval.batch_size = 64
    return config
