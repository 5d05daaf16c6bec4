"""The Docker images' ONNX Runtime: the CPU build in the CPU image, onnxruntime-gpu in the CUDA one,
and each image's default command as `cnnserve serve` really parses it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.manifests import DEPLOY, DOCKERFILE, ROOT, image_config, instructions, parse_command

SCRIPT = DEPLOY / "image" / "onnxruntime_for_device.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("onnxruntime_for_device", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dependencies(text: str) -> list[str]:
    return tomllib.loads(text)["project"]["dependencies"]


def test_the_cpu_image_swaps_only_the_onnxruntime_requirement() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    before = _dependencies(text)
    (gpu,) = [r for r in before if r.startswith("onnxruntime-gpu==")]
    after = _dependencies(_script().for_device(text, "cpu"))
    assert after == [r.replace("onnxruntime-gpu==", "onnxruntime==") if r == gpu else r for r in before]
    assert gpu.split("==")[1] == next(r for r in after if r.startswith("onnxruntime==")).split("==")[1]
    assert _script().for_device(text, "cuda") == text  # the CUDA image stays as it is


def test_the_script_rewrites_in_place_and_refuses_what_it_cannot_swap(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((ROOT / "pyproject.toml").read_text())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(SCRIPT), *args, str(pyproject)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert run("--device", "cpu").returncode == 0
    assert "onnxruntime-gpu" not in pyproject.read_text()
    again = run("--device", "cpu")  # nothing left to swap: a clear one-line error, exit 2
    assert again.returncode == 2
    assert again.stderr.strip().endswith("expected exactly one onnxruntime-gpu base dependency, found 0")
    pyproject.write_text('[project]\ndependencies = ["onnxruntime-gpu>=1.20"]\n')
    unpinned = run("--device", "cpu")
    assert unpinned.returncode == 2 and "must pin one version" in unpinned.stderr
    assert run("--device", "rocm").returncode == 2  # argparse's choices


def test_the_build_stage_swaps_before_installing() -> None:
    runs = [rest for instruction, rest in instructions(DOCKERFILE.read_text()) if instruction == "RUN"]
    (install,) = [rest for rest in runs if "pip install" in rest]
    swap = 'onnxruntime_for_device.py --device "${DEVICE}" --serving-only pyproject.toml'
    assert swap in install and install.index(swap) < install.index("pip install")


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda", "auto")])
def test_each_image_default_command_parses_with_its_device(device: str, expected: str) -> None:
    config = image_config(DOCKERFILE.read_text(), device)
    args, error = parse_command([*config.entrypoint, *config.cmd])
    assert args is not None, error
    assert (args.command, args.device, str(args.repository), args.port) == (
        "serve",
        expected,
        "/models",
        8500,
    )
    assert args.port in config.expose and args.metrics_port in config.expose
    assert config.user == "10001:10001"
    # ONNX Runtime's telemetry would write under $HOME (uid 10001 has none) and warn at every start.
    assert config.env["ORT_DISABLE_TELEMETRY"] == "1"
    # Replacing the CMD (docker run IMAGE --repository ...) keeps the CPU image on --device cpu.
    args, _ = parse_command([*config.entrypoint, "--repository", "/models"])
    assert args is not None and args.device == expected


def test_the_dev_venv_has_one_onnxruntime() -> None:
    installed = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
            installed.add(name)
        except metadata.PackageNotFoundError:
            pass
    assert installed == {"onnxruntime-gpu"}  # both would share one `onnxruntime` module


SERVING_FOLDERS = ("cnnserve", "contracts", "serving", "protos")


def test_the_images_install_only_the_serving_packages() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    narrowed = tomllib.loads(_script().serving_only(text))
    setuptools = narrowed["tool"]["setuptools"]
    assert setuptools["packages"] == ["cnnserve", "cnnserve.contracts", "cnnserve.serving", "cnnserve.protos"]
    assert tuple(setuptools["package-dir"].values()) == SERVING_FOLDERS
    assert narrowed["project"] == tomllib.loads(text)["project"]  # same dependencies, same script
    steps = instructions(DOCKERFILE.read_text())
    copies = [rest.split()[0] for instruction, rest in steps if instruction == "COPY"]
    stage_folders = {"training", "export", "bench", *SERVING_FOLDERS}
    assert [folder for folder in copies if folder in stage_folders] == list(SERVING_FOLDERS)
    (install,) = [rest for instruction, rest in instructions(DOCKERFILE.read_text()) if "pip install" in rest]
    assert "--serving-only" in install


@pytest.mark.slow
def test_a_serving_only_install_has_the_server_and_client_commands(tmp_path: Path) -> None:
    """Installs the narrowed package (no dependencies: the venv's) into a folder and runs its
    console script with no other cnnserve on the path."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    for folder in SERVING_FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "pyproject.toml").write_text(_script().serving_only((source / "pyproject.toml").read_text()))
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    packages = sorted(p.name for p in (target / "cnnserve").iterdir() if p.is_dir())
    assert [name for name in packages if name != "__pycache__"] == ["contracts", "protos", "serving"]
    # -S: no site-packages .pth files, so the development checkout's editable finder is not active.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}

    def cnnserve(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-S", "-m", "cnnserve", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)

    listing = cnnserve("--help")
    assert listing.returncode == 0, listing.stderr
    for command in ("serve", "classify", "health", "repository"):
        assert f"    {command} " in listing.stdout
    assert "    train " not in listing.stdout and "    bench " not in listing.stdout
    train = cnnserve("train")
    assert train.returncode == 2 and "invalid choice: 'train'" in train.stderr
    assert cnnserve("serve", "--help").returncode == 0
