r"""Temperature and training length (the paper's Fig. 4c and 4d) on digits: SupCon top-1
against the loss temperature and against the stage-one epochs, from configs/digits.py.

  python -m supcon_tf.study --study=configs/studies/temperature_length.py --root=runs/studies

Axes, each varied alone from the recipe (temperature 0.2, 60 epochs):
  temperature  0.03, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0 (loss.base_temperature stays None:
               the paper's loss, unscaled, so its gradient grows as 1 / tau)
  epochs       8, 15, 30, 60, 120 stage-one epochs (warm-up 2 epochs, cosine to 0 at
               the end of each); stage two stays 30 epochs
Seeds 0-2.

Points: 11 runs per seed (the recipe is shared by both axes) x 3 seeds = 33 main.py
runs. A 60-epoch run took 85 s on the machine alone (configs/digits.py), 120 epochs
about twice that, 8 epochs about a third: about 50 min alone, up to 1 h 30 min
shared, on the 2-core AMD EPYC (oneDNN on).
"""


def get_study():
    return {
        "methods": {"supcon": "configs/digits.py"},
        "axes": [
            {"name": "temperature", "log_x": True, "values": [
                {"loss.temperature": t} for t in (0.03, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0)]},
            {"name": "epochs", "log_x": True, "values": [
                {"train.epochs": e} for e in (8, 15, 30, 60, 120)]},
        ],
        "seeds": [0, 1, 2],
        "plot": {"kind": "line", "title": "digits: SupCon top-1 against temperature and "
                                          "stage-one epochs"},
    }
