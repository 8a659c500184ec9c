r"""Runs a study: many main.py runs that vary a base config, one table, one figure.

    python -m supcon_tf.study --study=configs/studies/stability.py [--root=runs/studies]
    python -m supcon_tf.study --study=configs/studies/stability.py --list   # for a cluster

A study file is a Python file whose get_study() returns a dict (or ConfigDict):

    methods  {name: "configs/X.py[:arg]"} or {name: {"config": ..., "overrides": {...}}}:
             each method's base config and the --config.FIELD=VALUE overrides of all
             its points (paths relative to the repository)
    axes     [{"name": ..., "values": [...], "log_x": False}]; each value a dict of
             overrides {"FIELD": VALUE}, or {"label": ..., "overrides": {...}, "x": ...}
             (x: where a line plot puts it; by default the label read as a number)
    seeds    [0, 1, 2]
    plot     {"kind": "box" | "line", "title": ..., "x": axis name (a grid's line plot)}
    grid     False (default): each axis varied alone from the base, as the paper's
             Fig. 4a; True: every combination of the axes' values
    name     the study's directory under --root (default: the file's name)

Each point is `python main.py --config=C --workdir=ROOT/<study>/<point> --config.seed=S
--config.FIELD=VALUE ...`, run from the repository root, one after another, with its
output in <workdir>/main.log. Points whose overrides are the same (the base value of
two axes) share one workdir and run once. A point whose workdir holds results.json is
finished and skipped; any other runs again with the same command, and main.py resumes
from its checkpoints. SIGTERM or Ctrl-C stops the running point with a checkpoint
(main.py's own SIGTERM handling) and exits with status 143: rerun the same command.

Writes ROOT/<study>/results.csv and results.json (a row per finished point: method,
axis, value, seed, top1, wall_s, workdir; rewritten after every point) and
ROOT/<study>/<study>.png:
    box   a panel per axis, a box per method over the axis's values and seeds
    line  a panel per axis (or one for a grid), test top-1 against the axis's numeric
          value, a line per method (and per value of a grid's other axes), the mean
          over seeds with their range as error bars
Exit status: 0 when every point finished, 1 when some failed (their main.log is
named), 143 when interrupted, 2 for a bad study file or flag.

This module imports no TensorFlow until it writes the table, so --list and the
checks of a study file take a fraction of a second.
"""

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import runpy
import shlex
import signal
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

from supcon_tf import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_COLUMNS = ("method", "axis", "value", "seed", "top1", "wall_s", "workdir")
PLOT_KINDS = ("box", "line")
_STUDY_KEYS = {"methods", "axes", "seeds", "plot"}
_OPTIONAL_KEYS = {"grid", "name"}
_AXIS_KEYS = {"name", "values", "log_x"}
_VALUE_KEYS = {"label", "overrides", "x"}
_PLOT_KEYS = {"kind", "title", "x"}
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")
INTERRUPTED_STATUS = 143

_STUDY = flags.DEFINE_string("study", None, "Study file, e.g. configs/studies/stability.py.")
_ROOT = flags.DEFINE_string(
    "root", "runs/studies", "Directory of the studies: each point's workdir is "
    "ROOT/<study>/<point>, the table and the figure ROOT/<study>/.")
_LIST = flags.DEFINE_bool(
    "list", False, "Print each point's main.py command, one per line, and run nothing.")
flags.mark_flag_as_required("study")


class StudyError(ValueError):
    """A study file that cannot be run; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Axis:
    name: str
    labels: tuple  # one per value
    overrides: tuple  # one tuple of (field, value) pairs per value
    xs: tuple  # one number (or None) per value
    log_x: bool


@dataclasses.dataclass(frozen=True)
class Method:
    config: str  # main.py's --config argument
    overrides: tuple  # (field, value) pairs of every point of the method
    base: dict  # field -> its value as a flag spells it, for every field an axis sets


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    methods: dict  # name -> Method
    axes: tuple
    seeds: tuple
    grid: bool
    plot: dict


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of main.py; several rows of the table may share it."""

    method: str
    config: str
    overrides: tuple  # (field, value) pairs, the method's then the axis values'
    seed: int
    workdir: str

    def arguments(self):
        """main.py's arguments, without the interpreter and the script."""
        return ([f"--config={self.config}", f"--workdir={self.workdir}",
                 f"--config.seed={self.seed}"]
                + [f"--config.{field}={_flag_text(value)}" for field, value in self.overrides])

    def command(self):
        """The command a person or a cluster runs from the repository root."""
        return shlex.join(["python", "main.py", *self.arguments()])

    @property
    def name(self):
        return os.path.basename(self.workdir)

    @property
    def results_path(self):
        return os.path.join(self.workdir, "results.json")


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: a point as seen from one axis (or the grid)."""

    method: str
    axis: str
    value: str
    seed: int
    labels: tuple  # (axis name, label) of every axis this row varies
    xs: tuple  # the matching numbers, None where a label is no number
    point: Point


# ---------------------------------------------------------------- the study file


def load_study(path):
    """The checked Study of a study file; StudyError (one line) if it cannot run."""
    if not os.path.isfile(path):
        raise StudyError(f"--study={path}: no such file; give a study file such as "
                         "configs/studies/stability.py")
    try:
        namespace = runpy.run_path(path)
    except Exception as error:  # the file's own error, whatever it is, in one line
        raise StudyError(f"{path} failed to load: {type(error).__name__}: {error}") from None
    if not callable(namespace.get("get_study")):
        raise StudyError(f"{path} has no get_study(); define one that returns the study dict")
    try:
        spec = _plain(namespace["get_study"]())
    except Exception as error:
        raise StudyError(f"{path}: get_study() raised {type(error).__name__}: "
                         f"{error}") from None
    if not isinstance(spec, dict):
        raise StudyError(f"{path}: get_study() returned {type(spec).__name__}; return a dict "
                         "with keys methods, axes, seeds and plot")
    _check_keys(spec, _STUDY_KEYS, _OPTIONAL_KEYS, f"{path}: the study")
    name = spec.get("name") or os.path.splitext(os.path.basename(path))[0]
    if _SAFE.search(str(name)):
        raise StudyError(f"{path}: name={name!r} must use only letters, digits and ._=+-")
    methods = _checked_methods(spec["methods"], path)
    axes = _checked_axes(spec["axes"], path)
    seeds = spec["seeds"]
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise StudyError(f"{path}: seeds={seeds!r} must be a non-empty list of ints")
    grid = spec.get("grid", False)
    if not isinstance(grid, bool):
        raise StudyError(f"{path}: grid={grid!r} must be True or False")
    plot = _checked_plot(spec["plot"], axes, grid, path)
    axis_fields = sorted({f for axis in axes for pairs in axis.overrides for f, _ in pairs})
    for method, (config, overrides) in methods.items():
        where = f"{path}: method {method!r}"
        base = _base_values(config, [f for f, _ in overrides] + axis_fields, where)
        base.update((field, _flag_text(value)) for field, value in overrides)
        methods[method] = Method(config, overrides, {f: base[f] for f in axis_fields})
    return Study(str(name), methods, axes, tuple(seeds), grid, plot)


def _plain(value):
    """value with every ConfigDict in it, at any depth (lists too), a dict."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _check_keys(spec, required, optional, where):
    if not isinstance(spec, dict):
        raise StudyError(f"{where} must be a dict; got {spec!r}")
    missing = sorted(required - set(spec))
    if missing:
        raise StudyError(f"{where} lacks {', '.join(missing)}; see supcon_tf/study.py's "
                         "docstring for the keys")
    unknown = sorted(set(spec) - required - optional)
    if unknown:
        raise StudyError(f"{where} has unknown keys {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(required | optional))}")


def _checked_overrides(overrides, where):
    if not isinstance(overrides, dict):
        raise StudyError(f"{where}: overrides must be a dict {{'FIELD': VALUE}}; got {overrides!r}")
    for field in overrides:
        if not isinstance(field, str) or not field or field.startswith(("-", "config.")):
            raise StudyError(f"{where}: override {field!r} must be a field path such as "
                             "'optim.base_lr' (without --config.)")
    return tuple(overrides.items())


def _checked_methods(methods, path):
    if not isinstance(methods, dict) or not methods:
        raise StudyError(f"{path}: methods must be a non-empty dict {{name: 'configs/X.py'}}")
    checked = {}
    for name, spec in methods.items():
        where = f"{path}: method {name!r}"
        if not isinstance(name, str) or _SAFE.search(name) or not name:
            raise StudyError(f"{where}: a method's name must use only letters, digits and ._=+-")
        if isinstance(spec, str):
            spec = {"config": spec}
        _check_keys(spec, {"config"}, {"overrides"}, where)
        checked[name] = (spec["config"], _checked_overrides(spec.get("overrides", {}), where))
    return checked


def _checked_axes(axes, path):
    if not isinstance(axes, (list, tuple)) or not axes:
        raise StudyError(f"{path}: axes must be a non-empty list of "
                         "{'name': ..., 'values': [...]}")
    checked, names = [], set()
    for axis in axes:
        _check_keys(axis, {"name", "values"}, _AXIS_KEYS - {"name", "values"},
                    f"{path}: an axis")
        name = axis["name"]
        where = f"{path}: axis {name!r}"
        if not isinstance(name, str) or not name or _SAFE.search(name) or name in names:
            raise StudyError(f"{where}: axis names must be distinct and use only letters, "
                             "digits and ._=+-")
        names.add(name)
        values = axis["values"]
        if not isinstance(values, (list, tuple)) or not values:
            raise StudyError(f"{where} has no values; give a list of override dicts such as "
                             "[{'optim.base_lr': 0.1}, {'optim.base_lr': 0.3}]")
        labels, overrides, xs = [], [], []
        for value in values:
            if isinstance(value, dict) and "overrides" in value:
                _check_keys(value, {"overrides"}, _VALUE_KEYS - {"overrides"}, f"{where}: a value")
                pairs = _checked_overrides(value["overrides"], where)
                label = str(value.get("label") or _label(pairs))
                x = value.get("x", _number(label))
            else:
                pairs = _checked_overrides(value, where)
                label = _label(pairs)
                x = _number(label)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
                raise StudyError(f"{where}: x={x!r} of value {label!r} must be a number")
            if label in labels:
                raise StudyError(f"{where}: two values are labelled {label!r}; give each a "
                                 "distinct 'label'")
            labels.append(label)
            overrides.append(pairs)
            xs.append(x)
        log_x = axis.get("log_x", False)
        if not isinstance(log_x, bool):
            raise StudyError(f"{where}: log_x={log_x!r} must be True or False")
        checked.append(Axis(name, tuple(labels), tuple(overrides), tuple(xs), log_x))
    return tuple(checked)


def _label(pairs):
    if not pairs:
        return "base"
    if len(pairs) == 1:
        return _flag_text(pairs[0][1])
    return ",".join(f"{field.rsplit('.', 1)[-1]}={_flag_text(v)}" for field, v in pairs)


def _number(label):
    try:
        number = float(label)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _checked_plot(plot, axes, grid, path):
    _check_keys(plot, {"kind"}, _PLOT_KEYS - {"kind"}, f"{path}: plot")
    if plot["kind"] not in PLOT_KINDS:
        raise StudyError(f"{path}: plot kind={plot['kind']!r} must be one of {PLOT_KINDS}")
    by_name = {axis.name: axis for axis in axes}
    if grid and plot["kind"] == "line":
        if plot.get("x") not in by_name:
            raise StudyError(f"{path}: a grid's line plot needs plot 'x' naming one of the "
                             f"axes {sorted(by_name)}; got {plot.get('x')!r}")
        line_axes = [by_name[plot["x"]]]
    elif plot["kind"] == "line":
        line_axes = axes
    else:
        line_axes = []
    for axis in line_axes:
        missing = [label for label, x in zip(axis.labels, axis.xs) if x is None]
        if missing:
            raise StudyError(f"{path}: axis {axis.name!r} is drawn against numbers, but its "
                             f"values {missing} are none; give each an 'x'")
    return dict(plot)


def _base_values(config, fields, where):
    """{field: its value in the config, as a flag spells it}, loading the config as main.py
    would; StudyError for a config that does not load or a field it lacks."""
    if not isinstance(config, str) or not config:
        raise StudyError(f"{where}: config={config!r} must be a path such as configs/digits.py")
    path, _, arg = config.partition(":")
    full_path = path if os.path.isabs(path) else os.path.join(REPO, path)
    if not os.path.isfile(full_path):
        raise StudyError(f"{where}: unknown config path {path!r} (relative to the repository "
                         f"root {REPO}); see configs/")
    try:
        loaded = runpy.run_path(full_path)["get_config"](arg or None)
    except Exception as error:
        raise StudyError(f"{where}: {config} does not load: {type(error).__name__}: "
                         f"{error}") from None
    values = {}
    for field in fields:
        node = loaded
        for part in field.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError, AttributeError):
                raise StudyError(f"{where}: {field!r} is not a field of {config}; check its "
                                 "spelling against the config file") from None
        values[field] = _flag_text(node)
    return values


# ---------------------------------------------------------------- points and rows


def study_rows(study, root):
    """Every row of the study in run order (seed, axis, value, method), each with its Point."""
    directory = os.path.join(os.path.abspath(root), study.name)
    if study.grid:
        combos = [tuple(zip(study.axes, choice)) for choice in
                  itertools.product(*[range(len(axis.labels)) for axis in study.axes])]
    else:
        combos = [((axis, index),) for axis in study.axes for index in range(len(axis.labels))]
    rows, by_name = [], {}
    for seed in study.seeds:
        for combo in combos:
            for method_name, method in study.methods.items():
                # Only what differs from the method's base goes into the command, so that
                # the base value of several axes is one point.
                changes = {}
                for axis, index in combo:
                    changes.update(axis.overrides[index])
                changes = {f: v for f, v in changes.items() if _flag_text(v) != method.base[f]}
                overrides = dict(method.overrides)
                overrides.update(changes)
                point = Point(method_name, method.config, tuple(overrides.items()), seed,
                              os.path.join(directory, _point_name(method_name, changes, seed)))
                same_name = by_name.setdefault(point.name, point)
                if same_name != point:
                    raise StudyError(f"points {same_name.command()} and {point.command()} would "
                                     "share one workdir; make their override values differ in "
                                     "letters or digits")
                labels = tuple((axis.name, axis.labels[index]) for axis, index in combo)
                rows.append(Row(
                    method_name, "*".join(name for name, _ in labels),
                    ",".join(label for _, label in labels), seed, labels,
                    tuple(axis.xs[index] for axis, index in combo), point))
    return rows


def _point_name(method, changes, seed):
    """<method>-<the fields changed from its base, or 'base'>-s<seed>."""
    text = "+".join(f"{field}={_flag_text(value)}" for field, value in changes.items())
    return _SAFE.sub("_", f"{method}-{text or 'base'}-s{seed}")


def _flag_text(value):
    """A value as --config.FIELD=VALUE spells it."""
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_flag_text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def unique_points(rows):
    points = {}
    for row in rows:
        points.setdefault(row.point.workdir, row.point)
    return list(points.values())


def read_results(point):
    """The point's results.json as a dict, or None while it has not finished."""
    try:
        with open(point.results_path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- running


class _Stop:
    """Catches SIGTERM and SIGINT and passes SIGTERM on to the running main.py, which
    then saves a checkpoint and exits; the runner stops after it."""

    def __init__(self):
        self.signal = None
        self.child = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._on_signal)
                          for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _on_signal(self, number, frame):
        del frame
        self.signal = number
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def run_point(point, stop):
    """Runs main.py for one point, its output appended to main.log; returns the exit status."""
    os.makedirs(point.workdir, exist_ok=True)
    _claim_workdir(point)
    with open(os.path.join(point.workdir, "main.log"), "ab") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {point.command()}\n".encode())
        log.flush()
        # Its own session: a Ctrl-C in the terminal reaches the runner only, which
        # passes SIGTERM on, so main.py stops at a checkpoint.
        stop.child = subprocess.Popen(
            [sys.executable, "main.py", *point.arguments()], cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if stop.signal is not None:  # arrived while it was starting
            stop.child.send_signal(signal.SIGTERM)
        status = stop.child.wait()
        stop.child = None
    return status


def _claim_workdir(point):
    """Writes the point's command into its workdir, or refuses a workdir another
    command made (the same study name reused for another study)."""
    path = os.path.join(point.workdir, "command.txt")
    if os.path.exists(path):
        with open(path) as f:
            previous = f.read().strip()
        if previous != point.command():
            raise StudyError(f"{point.workdir} was made by another command ({previous}); "
                             "move it away or give the study another name or --root")
        return
    _write_text(path, point.command() + "\n")


def run_study(study, rows, root):
    """Runs every unfinished point; returns the exit status (0, 1 or 143)."""
    directory = os.path.join(os.path.abspath(root), study.name)
    os.makedirs(directory, exist_ok=True)
    points = unique_points(rows)
    to_run = [p for p in points if read_results(p) is None]
    logging.info("study %s: %d points (%d rows), %d finished before, %d to run; in %s",
                 study.name, len(points), len(rows), len(points) - len(to_run), len(to_run),
                 directory)
    failed, durations = [], []
    with _Stop() as stop:
        for index, point in enumerate(points, 1):
            if stop.signal is not None:
                break
            if point not in to_run:
                logging.info("[%d/%d] %s: finished before (results.json), skipped", index,
                             len(points), point.name)
                continue
            logging.info("[%d/%d] %s: running (log %s)", index, len(points), point.name,
                         os.path.join(point.workdir, "main.log"))
            started = time.time()
            status = run_point(point, stop)
            durations.append(time.time() - started)
            left = len(to_run) - to_run.index(point) - 1
            eta = statistics.mean(durations) * left
            results = read_results(point)
            if results is None and stop.signal is not None:
                logging.warning("[%d/%d] %s: stopped by signal %d (exit status %d); rerun the "
                                "same command to resume it", index, len(points), point.name,
                                stop.signal, status)
                break
            if results is None:
                failed.append(point)
                logging.error("[%d/%d] %s: main.py exited with status %d; see %s", index,
                              len(points), point.name, status,
                              os.path.join(point.workdir, "main.log"))
            else:
                logging.info("[%d/%d] %s: top-1 %.4f in %.0f s; %d left, ETA %s", index,
                             len(points), point.name, results["top1"], durations[-1], left,
                             _duration(eta))
            write_table(study, rows, directory)
    finished = sum(read_results(p) is not None for p in points)
    write_table(study, rows, directory)
    figure = draw(study, finished_rows(rows), os.path.join(directory, f"{study.name}.png"))
    logging.info("study %s: %d/%d points finished; table %s, figure %s", study.name, finished,
                 len(points), os.path.join(directory, "results.csv"), figure)
    if stop.signal is not None:
        logging.warning("interrupted; rerun the same command to finish the %d points left",
                        len(points) - finished)
        return INTERRUPTED_STATUS
    if failed:
        logging.error("%d points failed: %s", len(failed), " ".join(p.name for p in failed))
        return 1
    return 0


def _duration(seconds):
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


# ---------------------------------------------------------------- table and figure


def finished_rows(rows):
    """(row, results) of every finished row."""
    pairs = []
    for row in rows:
        results = read_results(row.point)
        if results is not None:
            pairs.append((row, results))
    return pairs


def table_records(rows):
    return [{"method": row.method, "axis": row.axis, "value": row.value, "seed": row.seed,
             "top1": results["top1"], "wall_s": results.get("wall_s"),
             "workdir": row.point.workdir} for row, results in finished_rows(rows)]


def write_table(study, rows, directory):
    """directory/results.csv and results.json, each written atomically."""
    records = table_records(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    _write_text(os.path.join(directory, "results.csv"), text.getvalue())
    _write_text(os.path.join(directory, "results.json"), json.dumps(
        {"study": study.name, "rows": len(rows), "finished": len(records), "table": records},
        indent=1) + "\n")


def _write_text(path, text):
    cli.import_tensorflow_quietly()  # its start-up lines stay off the runner's terminal
    from supcon_tf import checkpoints

    checkpoints.write_atomically(path, text)


def draw(study, pairs, path):
    """The study's figure from (row, results) pairs, written atomically; returns path."""
    import matplotlib.figure

    panels = ([study.plot["x"]] if study.grid and study.plot["kind"] == "line"
              else [axis.name for axis in study.axes] if not study.grid else ["grid"])
    figure = matplotlib.figure.Figure(figsize=(4.2 * len(panels) + 0.6, 4), dpi=110)
    for number, panel in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), number + 1)
        if study.plot["kind"] == "box":
            _draw_boxes(axes, study, pairs, panel)
        else:
            _draw_lines(axes, study, pairs, panel)
        axes.grid(alpha=0.3)
    title = study.plot.get("title") or study.name
    seeds = ",".join(map(str, study.seeds))
    figure.suptitle(f"{title} (seed{'s' if len(study.seeds) > 1 else ''} {seeds})", fontsize=11)
    figure.tight_layout()
    tmp_path = f"{path}.tmp-{os.getpid()}.png"
    figure.savefig(tmp_path, format="png")
    os.replace(tmp_path, path)
    return path


def _draw_boxes(axes, study, pairs, panel):
    """A box per method over every top-1 of the panel's axis (all of them for a grid)."""
    methods = list(study.methods)
    groups = [[100 * r["top1"] for row, r in pairs
               if row.method == m and (panel == "grid" or row.axis == panel)] for m in methods]
    shown = [i for i, g in enumerate(groups) if g]
    if shown:
        axes.boxplot([groups[i] for i in shown], positions=shown, widths=0.5,
                     showfliers=False)
        for i in shown:  # every run as a dot: with a few seeds the box alone hides them
            axes.plot([i] * len(groups[i]), groups[i], "o", color=f"C{i}", alpha=0.6,
                      markersize=4)
    axes.set_xticks(range(len(methods)), methods)
    axes.set_xlim(-0.6, len(methods) - 0.4)
    axes.set_title(f"varying {panel}" if panel != "grid" else "every combination", fontsize=10)
    axes.set_ylabel("test top-1 (%)")


def _draw_lines(axes, study, pairs, panel):
    """Top-1 against the panel axis's numbers, a line per method (and per value of a grid's
    other axes): the mean over seeds, error bars from the lowest to the highest."""
    axis = next(a for a in study.axes if a.name == panel)
    lines = {}
    for row, results in pairs:
        if not study.grid and row.axis != panel:
            continue
        position = [name for name, _ in row.labels].index(panel)
        others = ",".join(f"{n}={v}" for n, v in row.labels if n != panel)
        key = row.method + (f" ({others})" if others else "")
        lines.setdefault(key, {}).setdefault(row.xs[position], []).append(100 * results["top1"])
    for index, (key, by_x) in enumerate(lines.items()):
        xs = sorted(by_x)
        means = [sum(by_x[x]) / len(by_x[x]) for x in xs]
        low = [m - min(by_x[x]) for m, x in zip(means, xs)]
        high = [max(by_x[x]) - m for m, x in zip(means, xs)]
        axes.errorbar(xs, means, yerr=[low, high], marker="o", capsize=3, label=key,
                      color=f"C{index}")
    if axis.log_x:
        axes.set_xscale("log")
        axes.minorticks_off()
    ticks = sorted(zip(axis.xs, axis.labels))
    axes.set_xticks([x for x, _ in ticks], [label for _, label in ticks], fontsize=8)
    axes.set_xlabel(panel)
    axes.set_ylabel("test top-1 (%)")
    if lines:
        axes.legend(fontsize=8)


# ---------------------------------------------------------------- entry point


def main(argv):
    del argv  # cli.parse_flags refused positional arguments
    cli.show_library_info_off(__file__)
    try:
        study = load_study(_STUDY.value)
        rows = study_rows(study, _ROOT.value)
    except StudyError as error:
        cli.fail(error, 2)
    if _LIST.value:
        try:
            for point in unique_points(rows):
                print(point.command())
            sys.stdout.flush()
        except BrokenPipeError:  # `--list | head`: the reader took what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        status = run_study(study, rows, _ROOT.value)
    except StudyError as error:
        cli.fail(error, 2)
    sys.exit(status)


if __name__ == "__main__":
    cli.quiet_tensorflow_startup()
    app.run(main, flags_parser=cli.parse_flags)
