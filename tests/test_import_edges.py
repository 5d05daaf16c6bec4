"""The import edges between our packages are the architecture: this test pins them.

Every `import cnnserve.…` in every module (function-level imports included, since they are
edges too, only deferred) is checked against the allowed set below. A new edge fails with the
rule it breaks and why the rule exists; change the rule here only with that reason in mind.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `from cnnserve import __version__` is allowed everywhere: the package root holds only the version.
ROOT_PACKAGE = "cnnserve"


@dataclass(frozen=True)
class Rule:
    allowed: tuple[str, ...]  # importable prefixes; "*" for anything of ours
    why: str


RULES: dict[str, Rule] = {
    "cnnserve.contracts": Rule(
        (),
        "contracts is the shared bottom layer: every stage imports it, so it imports none of them "
        "(and the server's closure must stay free of TensorFlow)",
    ),
    "cnnserve.protos": Rule((), "generated gRPC/protobuf modules import only each other"),
    "cnnserve.training": Rule(
        ("cnnserve.contracts",), "training is the first stage: it depends only on the shared contracts"
    ),
    "cnnserve.export": Rule(
        ("cnnserve.contracts", "cnnserve.training.api"),
        "export converts what training produced through training's public API (training/api.py), "
        "never its internals",
    ),
    "cnnserve.serving": Rule(
        ("cnnserve.contracts", "cnnserve.protos"),
        "the server reads the model repository through the contracts only: importing training or "
        "export would pull TensorFlow into the serving process",
    ),
    "cnnserve.bench": Rule(("*",), "bench measures every stage"),
    "cnnserve": Rule(("*",), "the console script registers every stage's commands"),
}


def _packages() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: ROOT / folder for package, folder in config["package-dir"].items()}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == ROOT_PACKAGE:  # `from cnnserve import x`: x may be a sub-package
                found += [(node.lineno, f"{ROOT_PACKAGE}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == ROOT_PACKAGE]


def _owner(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in RULES else ROOT_PACKAGE


def _allowed(source: str, target: str) -> bool:
    if target == f"{ROOT_PACKAGE}.__version__" or _owner(target) == source:
        return True
    return any(
        prefix == "*" or target == prefix or target.startswith(prefix + ".")
        for prefix in RULES[source].allowed
    )


def test_every_package_has_a_rule_and_folders_match_the_import_tree() -> None:
    packages = _packages()
    assert set(packages) == set(RULES), "a package without an import rule, or a rule without a package"
    installed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {_owner(name) for name in installed} == set(RULES), "an installed package outside the stages"
    for package, folder in packages.items():
        expected = "cnnserve" if package == ROOT_PACKAGE else package.split(".")[1]
        assert folder.name == expected, f"{package} lives in {folder.name}/, expected {expected}/"
    leftovers = sorted(p.name for p in (ROOT / "cnnserve").iterdir() if p.suffix == ".py" or p.is_dir())
    assert leftovers in (["__init__.py", "__main__.py", "cli.py"],
                         ["__init__.py", "__main__.py", "__pycache__", "cli.py"]), (
        f"cnnserve/ holds only the version, __main__ and the console script, found {leftovers}"
    )  # fmt: skip


def test_import_edges_follow_the_architecture() -> None:
    broken = []
    for package, folder in _packages().items():
        if package == ROOT_PACKAGE:
            files = [folder / name for name in ("__init__.py", "__main__.py", "cli.py")]
        else:  # sub-packages (export/onnx_passes/) belong to their stage
            files = sorted(folder.glob("*.py")) + sorted(folder.glob("*/**/*.py"))
        for path in files:
            if not path.is_file() or "peers" in path.relative_to(folder).parts:
                continue  # bench/peers/ runs in the peers' own virtualenvs, not installed
            for line, target in _imports(path):
                if not _allowed(package, target):
                    rule = RULES[package]
                    broken.append(
                        f"{path.relative_to(ROOT)}:{line} imports {target}: {package} may import "
                        f"{', '.join(rule.allowed) or 'nothing of ours'} ({rule.why})"
                    )
    assert not broken, "new import edges:\n" + "\n".join(broken)


def test_the_rule_checker_catches_a_forbidden_edge() -> None:
    assert not _allowed("cnnserve.serving", "cnnserve.export.pipeline")
    assert not _allowed("cnnserve.export", "cnnserve.training.fold")
    assert _allowed("cnnserve.export", "cnnserve.training.api")
    assert not _allowed("cnnserve.contracts", "cnnserve.serving.config")
    assert _allowed("cnnserve.serving", "cnnserve.__version__")
