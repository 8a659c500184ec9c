r"""The momentum queue at batch 16 on digits: do stale keys explain why it learns slower?

  python -m supcon_tf.study --study=configs/studies/queue.py --root=runs/studies

configs/digits_small_batch.py (8 epochs, 1024 keys, momentum 0.9) lost 8-11 points of
top-1 to the same run without the queue. Stale keys predict that a faster key encoder
(lower momentum) and a shorter queue (fresher keys) help. Axes, each varied alone:
  momentum    0.0 (the key encoder is the query encoder), 0.5, 0.9, 0.99, 0.999
  queue_size  0 (no queue: the reference), 128, 256, 512, 1024, 2048 keys; a batch
              enqueues 32 keys, so 1024 keys are 32 steps old at the back
Seeds 0-4 (the queue's seeds spread over 0.76-0.88 at 8 epochs).

The other explanation, queue entries of the anchor's class diluting the in-batch
positives, needs a loss option that makes queue entries negatives only; supcon_loss
has none yet, so it is not an axis here.

Points: 10 runs per seed (the recipe is shared by both axes) x 5 seeds = 50 main.py
runs of 30-75 s on the machine alone (configs/digits_small_batch.py): about 45 min
alone, up to 1 h 30 min shared, on the 2-core AMD EPYC (oneDNN on).
"""

MOMENTUMS = (0.0, 0.5, 0.9, 0.99, 0.999)
QUEUE_SIZES = (0, 128, 256, 512, 1024, 2048)


def get_study():
    return {
        "methods": {"supcon_queue": "configs/digits_small_batch.py"},
        "axes": [
            # Both axes evenly spaced on the plot (x: the value's position); the labels
            # give the values.
            {"name": "momentum", "values": [
                {"label": str(m), "x": index, "overrides": {"model.momentum": m}}
                for index, m in enumerate(MOMENTUMS)]},
            {"name": "queue_size", "values": [
                {"label": str(size) if size else "0 (none)", "x": index,
                 "overrides": {"loss.queue_size": size}}
                for index, size in enumerate(QUEUE_SIZES)]},
        ],
        "seeds": [0, 1, 2, 3, 4],
        "plot": {"kind": "line", "title": "digits, batch 16, 8 epochs: SupCon with the "
                                          "momentum queue"},
    }
