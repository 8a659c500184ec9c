r"""Batch size (the paper's Fig. 4b) on digits: SupCon, SupCon with the momentum queue, and
cross-entropy at global batches of 16 to 256, each trained to convergence.

  python -m supcon_tf.study --study=configs/studies/batch_size.py --root=runs/studies

Methods, all from configs/digits_small_batch.py (the queue's 1024 keys, momentum 0.9):
  supcon        --config.loss.queue_size=0
  supcon_queue  the config as it is
  ce            configs/digits_small_batch.py:ce
Every batch size trains 60 epochs (configs/digits.py's length, which converges at
batch 128) with at least 600 steps (train.min_steps), so that batch 256, 5.6 steps an
epoch, gets 600 updates (107 epochs) instead of 338; stage two trains 30 epochs as in
configs/digits.py. This is the "train each batch size to convergence" choice: the
steps are not held fixed (batch 16 takes 5,390 steps). The learning rate scales with
the batch (base lr 0.3 x B / 256), as in every run.

Points: 5 batch sizes x 3 methods x 3 seeds = 45 main.py runs. Batch 128 is a
configs/digits.py run (85 s alone on the machine); a run processes about as many
images at every batch size, but batch 16 takes 8x its steps (about 4 min) and batch
256 1.8x its images: about 2 h alone, 3-4 h shared, on the 2-core AMD EPYC (oneDNN on).
"""

# configs/digits.py's length and stage two, instead of the small-batch config's 8 and 10.
CONVERGED = {"train.epochs": 60, "train.min_steps": 600, "linear.epochs": 30}


def get_study():
    return {
        "methods": {
            "supcon": {"config": "configs/digits_small_batch.py",
                       "overrides": {**CONVERGED, "loss.queue_size": 0}},
            "supcon_queue": {"config": "configs/digits_small_batch.py", "overrides": CONVERGED},
            "ce": {"config": "configs/digits_small_batch.py:ce", "overrides": CONVERGED},
        },
        "axes": [
            {"name": "batch_size", "log_x": True, "values": [
                {"train.global_batch_size": b} for b in (16, 32, 64, 128, 256)]},
        ],
        "seeds": [0, 1, 2],
        "plot": {"kind": "line", "title": "digits: top-1 against the global batch size "
                                          "(60 epochs, >= 600 steps)"},
    }
