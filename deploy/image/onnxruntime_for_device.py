"""Rewrite pyproject.toml's ONNX Runtime dependency for the device a Docker image is built for.

The project's base dependency is `onnxruntime-gpu` (the development venv and the CUDA image), whose
wheel is x86_64-only and carries the CUDA provider libraries. The CPU image installs ONNX Runtime's
CPU build instead, at the same version, so its metadata matches what it installed (`pip check` stays
clean) and the server has no CUDA provider to probe. The two packages provide the same `onnxruntime`
module and must never be installed side by side, so this swaps the requirement before `pip install .`
rather than adding one.

With `--serving-only` it also narrows the installed packages to what `cnnserve serve` and the
client commands need (cnnserve, contracts, serving, protos): the image ships no training, export
or bench code, and the console script registers only the stages that are installed.

Runs with the base image's bare python3 (standard library only):

    python3 onnxruntime_for_device.py --device cpu --serving-only pyproject.toml
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

GPU_PACKAGE = "onnxruntime-gpu"
SERVING_PACKAGES = ("cnnserve", "cnnserve.contracts", "cnnserve.serving", "cnnserve.protos")
PACKAGE_FOR_DEVICE = {"cpu": "onnxruntime", "cuda": GPU_PACKAGE}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(pyproject_text: str) -> list[str]:
    return list(tomllib.loads(pyproject_text)["project"]["dependencies"])


def for_device(pyproject_text: str, device: str) -> str:
    """pyproject.toml's text with the ONNX Runtime requirement for `device` (ValueError if impossible)."""
    if device not in PACKAGE_FOR_DEVICE:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(PACKAGE_FOR_DEVICE)}")
    before = dependencies(pyproject_text)
    matches = [r for r in before if (m := _NAME.match(r)) and _canonical(m.group(1)) == GPU_PACKAGE]
    if len(matches) != 1:
        raise ValueError(f"expected exactly one {GPU_PACKAGE} base dependency, found {len(matches)}")
    requirement = matches[0]
    name = _NAME.match(requirement).group(1)  # type: ignore[union-attr]
    if "==" not in requirement:
        raise ValueError(f"{requirement!r} must pin one version (==) so both images run the same release")
    replacement = PACKAGE_FOR_DEVICE[device] + requirement[len(name) :]
    if replacement == requirement:
        return pyproject_text
    quoted = f'"{requirement}"'
    if pyproject_text.count(quoted) != 1:
        raise ValueError(f"{quoted} must appear exactly once in pyproject.toml to be replaced safely")
    text = pyproject_text.replace(quoted, f'"{replacement}"')
    expected = [replacement if r == requirement else r for r in before]
    if dependencies(text) != expected:  # the edit touched nothing but that one requirement
        raise ValueError("rewriting the ONNX Runtime requirement changed other dependencies")
    return text


def _inline(items: list[str]) -> str:
    return ", ".join(items)


def serving_only(pyproject_text: str) -> str:
    """pyproject.toml's text installing only SERVING_PACKAGES (ValueError if the layout is unexpected)."""
    setuptools = tomllib.loads(pyproject_text)["tool"]["setuptools"]
    package_dir, packages = dict(setuptools["package-dir"]), list(setuptools["packages"])
    missing = [name for name in SERVING_PACKAGES if name not in packages or name not in package_dir]
    if missing:
        raise ValueError(f"[tool.setuptools] lacks the serving packages {', '.join(missing)}")
    lines = pyproject_text.splitlines(keepends=True)
    dir_lines = [i for i, line in enumerate(lines) if line.startswith("package-dir = ")]
    package_lines = [i for i, line in enumerate(lines) if line.startswith("packages = ")]
    if len(dir_lines) != 1 or len(package_lines) != 1:
        raise ValueError("expected one single-line package-dir and one single-line packages setting")
    kept_dirs = [f'"{name}" = "{package_dir[name]}"' for name in SERVING_PACKAGES]
    lines[dir_lines[0]] = f"package-dir = {{ {_inline(kept_dirs)} }}\n"
    quoted = [f'"{name}"' for name in SERVING_PACKAGES]
    lines[package_lines[0]] = f"packages = [{_inline(quoted)}]\n"
    text = "".join(lines)
    after = tomllib.loads(text)
    if (
        after["tool"]["setuptools"]["packages"] != list(SERVING_PACKAGES)
        or after["project"] != tomllib.loads(pyproject_text)["project"]
    ):
        raise ValueError("narrowing the packages changed more than [tool.setuptools]")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, choices=sorted(PACKAGE_FOR_DEVICE))
    parser.add_argument(
        "--serving-only", action="store_true", help="install only the server's and client's packages"
    )
    parser.add_argument("pyproject", type=Path, help="pyproject.toml to rewrite in place")
    args = parser.parse_args(argv)
    try:
        text = for_device(args.pyproject.read_text(), args.device)
        if args.serving_only:
            text = serving_only(text)
    except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as error:
        print(f"onnxruntime_for_device: error: {args.pyproject}: {error}", file=sys.stderr)
        return 2
    args.pyproject.write_text(text)
    print(f"{args.pyproject}: ONNX Runtime for {args.device}: {PACKAGE_FOR_DEVICE[args.device]}")
    if args.serving_only:
        print(f"{args.pyproject}: packages {', '.join(SERVING_PACKAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
