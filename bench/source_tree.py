"""Another revision's code, importable as `cnnserve`, so a server can run it beside the working tree.

A before/after comparison of a change to the server has to run both versions at once on this
noisy machine (`bench/server_ab.py --a-revision`). The revision is exported with `git archive`
and laid out as the installed package is (pyproject's `package-dir`: `cnnserve.serving` is
`serving/`, ...), by links inside its `cnnserve/` folder; a process started with the tree as its
working directory and on `PYTHONPATH` imports that copy, not the editable install's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SourceTree:
    revision: str
    commit: str
    path: Path  # holds `cnnserve/`: the working directory and PYTHONPATH of a process running it

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.path)}


def _git(*args: str, repo: Path) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"source_tree: git {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout.strip()


def export_revision(revision: str, into: Path, repo: Path = ROOT) -> SourceTree:
    """`revision`'s files under `into` (created), importable as `cnnserve` from there."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}", repo=repo)
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    package_dirs = tomllib.loads((into / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dirs.items():
        if package == "cnnserve":
            continue
        link = into / "cnnserve" / package.removeprefix("cnnserve.")
        if not link.exists():
            os.symlink(into / folder, link, target_is_directory=True)
    return SourceTree(revision, commit, into)


def main(argv: list[str]) -> int:
    """`python -m cnnserve.bench.source_tree REV DIR`: export REV into DIR and say how to run it."""
    if len(argv) != 2:
        print("usage: python -m cnnserve.bench.source_tree REV DIR", file=sys.stderr)
        return 2
    tree = export_revision(argv[0], Path(argv[1]).resolve())
    print(f"{tree.revision} ({tree.commit[:12]}) in {tree.path}; run its code with:")
    print(f"  PYTHONPATH={tree.path} {sys.executable} SCRIPT.py ...   (a script, not -m or -c: those")
    print(f"  put the current folder first on sys.path; for `-m cnnserve` run it from {tree.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
