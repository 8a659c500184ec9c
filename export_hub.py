r"""Exports a trained supcon_tf workdir as TF Hub Reusable SavedModels.

    python export_hub.py --workdir=W --export_dir=E [--checkpoint=PATH] [--overwrite]

Reads W/config.json, restores the latest checkpoint in W/checkpoints (or
--checkpoint) and, if stage two ran, the linear head in W/linear, then writes
E/encoder, E/projection and E/classifier (see supcon_tf/export.py). Load them with

    hub.KerasLayer("E/encoder", trainable=True)      # inside a tf_keras model
    keras.layers.TFSMLayer("E/encoder")               # Keras 3
    tf.saved_model.load("E/encoder")(images)          # images float32 [B, H, W, 3] in [0, 1]

H and W may be any size for a ResNet (a ViT takes only its training size);
E/export_info.json's "recommended_image_size" is the size the model was trained at.

Fails with a one-line error and a nonzero exit code if W has no checkpoint, the
checkpoint does not match W/config.json, or E exists and --overwrite is not given.
"""

from absl import app, flags, logging

from supcon_tf import cli

cli.quiet_tensorflow_startup()  # before TensorFlow loads; see supcon_tf/cli.py

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (has config.json, checkpoints/).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Directory to write the SavedModels into.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint to export; default: the latest in workdir/checkpoints."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing export_dir.")
flags.mark_flags_as_required(["workdir", "export_dir"])


def main(argv):
    del argv  # cli.parse_flags refused positional arguments
    cli.show_library_info_off(__file__)
    cli.import_tensorflow_quietly()  # its start-up lines are dropped; see supcon_tf/cli.py
    from supcon_tf import export  # after the flags parse: a bad flag fails before TF loads

    try:
        info = export.export_from_workdir(
            _WORKDIR.value, _EXPORT_DIR.value,
            checkpoint=_CHECKPOINT.value, overwrite=_OVERWRITE.value,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        cli.fail(e, 1)  # one line instead of a traceback: these are all user-fixable
    logging.info(
        "Exported %s (classifier head: %s) to %s",
        info["checkpoint"], info["classifier_head"], _EXPORT_DIR.value,
    )
    print(f"exported {', '.join(info['exports'])} to {_EXPORT_DIR.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
