"""The wheel that `python -m build` makes installs into a fresh venv and works there.

The venv gets the wheel and its declared dependencies from the package index, as a user's does,
so an import of anything not declared in pyproject.toml fails here.
"""

import email
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

import jaxtricks

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What the build reads: pyproject.toml names the readme and the license file.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "jaxtricks")

pytestmark = pytest.mark.slow


def _run(args, cwd, timeout=600):
    # No PYTHONPATH, and a cwd outside the checkout: the venv sees only what it installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    output = result.stdout + result.stderr
    command = " ".join(map(str, args))
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds the wheel from a copy of what it is made of, and installs it into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy, so a stale build/ of the checkout cannot slip removed modules into the wheel and
    # the build writes nothing into the checkout.
    source = tmp / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    build_log = _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", source],
                     cwd=tmp)
    (wheel,) = (tmp / "dist").glob("jaxtricks-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    _run([venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", wheel],
         cwd=tmp)
    return {"tmp": tmp, "wheel": wheel, "venv": venv, "build_log": build_log}


def test_the_build_prints_no_deprecation_warning(built):
    assert "Successfully built" in built["build_log"]
    warnings = [line for line in built["build_log"].splitlines()
                if re.search("deprecat", line, flags=re.I)]
    assert not warnings, "\n".join(warnings)


def test_the_wheel_holds_the_package_its_markers_and_the_license(built):
    version = jaxtricks.__version__
    dist_info = f"jaxtricks-{version}.dist-info"
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = email.message_from_bytes(wheel.read(f"{dist_info}/METADATA"))
        license_text = wheel.read(f"{dist_info}/licenses/LICENSE")
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert built["wheel"].name == f"jaxtricks-{version}-py3-none-any.whl"
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "License" not in metadata  # the SPDX expression replaces the free-text field
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert "jaxtricks/py.typed" in names
    assert re.search(r"^jaxtricks = jaxtricks\.cli\.main:main$", entry_points, flags=re.M)
    # every module of the package, and nothing from outside it (tests, benchmarks, examples)
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "jaxtricks").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert all(name.startswith(("jaxtricks/", f"{dist_info}/")) for name in names), sorted(names)
    declared = set(metadata.get_all("Requires-Dist"))
    for dependency in ("jax", "jaxlib", "optax", "flax", "chex", "numpy", "orbax-checkpoint"):
        assert any(re.match(rf"{dependency}\b[^;]*$", req) for req in declared), dependency


def test_the_installed_package_imports_from_the_venv(built):
    outside = built["tmp"] / "elsewhere"
    outside.mkdir(exist_ok=True)
    script = ("import json, jaxtricks, jaxtricks.testing, jaxtricks.training; "
              "print(json.dumps({'file': jaxtricks.__file__, 'version': jaxtricks.__version__, "
              "'testing': jaxtricks.testing.__file__}))")
    output = _run([built["venv"] / "bin" / "python", "-c", script], cwd=outside)
    found = json.loads(output.strip().splitlines()[-1])
    venv = built["venv"].resolve()
    assert pathlib.Path(found["file"]).resolve().is_relative_to(venv), found["file"]
    assert pathlib.Path(found["testing"]).resolve().is_relative_to(venv), found["testing"]
    assert found["version"] == jaxtricks.__version__


def test_the_console_script_runs(built):
    outside = built["tmp"] / "elsewhere"
    outside.mkdir(exist_ok=True)
    output = _run([built["venv"] / "bin" / "jaxtricks", "--help"], cwd=outside)
    assert output.startswith("usage: jaxtricks")
    assert re.search(r"^\s+train\b", output, flags=re.M)
    output = _run([built["venv"] / "bin" / "jaxtricks", "train", "--help"], cwd=outside)
    assert "--epochs" in output
