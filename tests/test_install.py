"""One TensorFlow in the environment, the one setup.py asks for, and pip agrees.

setup.py picks the TensorFlow distribution when pip builds the package's metadata:
`tensorflow` by default, `tensorflow-tpu` with a pinned libtpu when SUPCON_TF_TARGET=tpu
(the README's Cloud TPU line). Every TensorFlow distribution writes the same
`tensorflow/` package, so a second one (tf-keras and tensorflow-hub require the plain
`tensorflow`) silently overwrites files of the first. The environment tests hold
whichever environment the suite runs in: each CI lane's fresh venv. The setup.py tests
hold its lists for every target, whatever is installed.
"""

import importlib.metadata
import os
import runpy
import shlex
import subprocess
import sys
import types

import pytest
import tensorflow as tf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO, TENSORFLOW_DISTRIBUTIONS, installed_tensorflow_distributions

SETUP_PY = os.path.join(REPO, "setup.py")
# Both require the plain `tensorflow` distribution.
HUB_SIDE = {"tensorflow-hub", "tf-keras"}


def fake_setuptools(captured):
    """A stand-in setuptools module whose setup() records its keyword arguments."""
    module = types.ModuleType("setuptools")
    module.setup = captured.update
    module.find_packages = lambda **kwargs: ["supcon_tf"]
    return module


@pytest.fixture
def setup_py(monkeypatch):
    """setup.py's namespace, loaded as a module (setup() not called, setuptools not needed)."""
    monkeypatch.setitem(sys.modules, "setuptools", fake_setuptools({}))
    return runpy.run_path(SETUP_PY, run_name="setup_under_test")


def by_name(requirements):
    """{canonical name: Requirement}; a name listed twice fails."""
    parsed = {}
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name not in parsed, f"{name} listed twice in {requirements}"
        parsed[name] = requirement
    return parsed


def tensorflow_names(requirements):
    return sorted(set(by_name(requirements)) & set(TENSORFLOW_DISTRIBUTIONS))


def admits(requirement, version):
    return requirement.specifier.contains(version, prereleases=True)


def the_installed_tensorflow():
    found = installed_tensorflow_distributions()
    assert len(found) == 1, (
        f"TensorFlow distributions installed: {found}; exactly one may be (they all write "
        "the tensorflow/ package). Reinstall into a fresh venv with one README install line.")
    return found[0]


# The environment the suite runs in.


def test_one_tensorflow_distribution_and_it_is_the_one_imported():
    name, version = the_installed_tensorflow()
    assert Version(tf.__version__) == Version(version), (name, version, tf.__version__)


def test_installed_packages_are_what_setup_py_asks_for_this_target(setup_py):
    name, _ = the_installed_tensorflow()
    target = "tpu" if name == "tensorflow-tpu" else "default"
    install_requires, extras = setup_py["requirements"](target)
    for requirement in by_name(install_requires + extras["test"]).values():
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement} (setup.py, target {target}) is not installed")
        assert admits(requirement, version), f"{requirement.name} {version} installed, " \
                                             f"setup.py's target {target} asks {requirement}"
    if target == "tpu":
        for other in HUB_SIDE:
            with pytest.raises(importlib.metadata.PackageNotFoundError):
                importlib.metadata.version(other)


def test_pip_check_is_clean():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert done.returncode == 0, done.stdout + done.stderr


# setup.py's requirement lists, for every target.


def test_default_target_is_tensorflow_2_20_to_2_21_with_keras_3_10(setup_py):
    install_requires, extras = setup_py["requirements"]("default")
    base = by_name(install_requires)
    assert tensorflow_names(install_requires) == ["tensorflow"]
    tensorflow = base["tensorflow"]
    for version in ("2.20.0", "2.21.0", "2.21.4"):
        assert admits(tensorflow, version), tensorflow
    for version in ("2.19.1", "2.22.0", "3.0.0"):
        assert not admits(tensorflow, version), tensorflow
    assert admits(base["keras"], "3.10.0") and not admits(base["keras"], "3.9.2")
    assert "tensorflow-hub" in base
    # tf-keras M.m requires tensorflow M.m: the same range.
    assert by_name(extras["test"])["tf-keras"].specifier == tensorflow.specifier
    assert {"pytest", "pytest-xdist", "packaging"} <= set(by_name(extras["test"]))
    (gpu,) = by_name(extras["gpu"]).values()
    assert (gpu.name, gpu.extras, gpu.specifier) == ("tensorflow", {"and-cuda"},
                                                    tensorflow.specifier)


def test_tpu_target_swaps_in_the_tpu_wheel_and_pinned_libtpu_only(setup_py):
    requirements = setup_py["requirements"]
    install_requires, extras = requirements("tpu")
    default_requires, default_extras = requirements("default")
    base = by_name(install_requires)
    assert str(base["tensorflow-tpu"].specifier) == "==2.20.0"
    assert str(base["libtpu"].specifier) == "==0.0.17"
    # The TPU build is a version the default target supports too.
    assert admits(by_name(default_requires)["tensorflow"], "2.20.0")
    assert "gpu" not in extras  # tensorflow[and-cuda] would be a second TensorFlow
    for listed in [install_requires, *extras.values()]:
        assert tensorflow_names(listed) in ([], ["tensorflow-tpu"]), listed
        assert not HUB_SIDE & set(by_name(listed)), listed
    assert set(base) == (set(by_name(default_requires)) - {"tensorflow", "tensorflow-hub"}
                         | {"tensorflow-tpu", "libtpu"})
    assert set(by_name(extras["test"])) == set(by_name(default_extras["test"])) - {"tf-keras"}


@pytest.mark.parametrize("target", ["gpu", "TPU", "tpu-v5e"])
def test_unknown_target_is_refused(setup_py, target):
    with pytest.raises(ValueError, match=f"{setup_py['TARGET_ENV']}={target!r}"):
        setup_py["requirements"](target)


@pytest.mark.parametrize("value, target", [(None, "default"), ("", "default"),
                                           ("default", "default"), ("tpu", "tpu")])
def test_setup_py_reads_the_target_from_the_environment(monkeypatch, setup_py, value, target):
    if value is None:
        monkeypatch.delenv(setup_py["TARGET_ENV"], raising=False)
    else:
        monkeypatch.setenv(setup_py["TARGET_ENV"], value)
    captured = {}
    monkeypatch.setitem(sys.modules, "setuptools", fake_setuptools(captured))
    runpy.run_path(SETUP_PY, run_name="__main__")  # as pip's build backend runs it
    install_requires, extras = setup_py["requirements"](target)
    assert (captured["install_requires"], captured["extras_require"]) == (install_requires, extras)


def test_readme_install_lines_select_what_setup_py_offers(setup_py):
    readme_commands = runpy.run_path(os.path.join(REPO, ".ci", "readme_commands.py"),
                                     run_name="readme_commands")
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    setup_part = readme[:readme.index("\n## ")]
    tpu_line = readme_commands["install_line"](readme, "tpu")
    assert tpu_line in setup_part
    variable, *command = shlex.split(tpu_line)
    assert variable == f"{setup_py['TARGET_ENV']}=tpu"
    assert command[:3] == ["pip", "install", "-e"] and len(command) == 4
    # The TPU lane runs the suite after this line alone: it must bring the test extra.
    assert "test" in Requirement("supcon_tf" + command[3].lstrip(".")).extras
    assert (readme_commands["test_command"](readme, "default")
            == 'pip install -e ".[test]" && pytest')
    assert '    pip install -e ".[gpu]"\n' in setup_part
    # The versions the README names are setup.py's pins.
    for pin in setup_py["TPU_PINS"]:
        name, version = pin.split("==")
        assert f"{name} {version}" in " ".join(setup_part.split()), pin
