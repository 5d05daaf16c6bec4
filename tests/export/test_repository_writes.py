"""Writing into the repository and the run: an unwritable folder is one line, a killed export's
leftovers are cleared by the next one (never a running export's), and RUN/export_report.json
keeps one entry per exported version."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cnnserve.contracts.run_dir import REPORT_FILE, update_report
from cnnserve.export.leftovers import clean_repository
from cnnserve.export.pipeline import export_run
from cnnserve.export.run_report import find_exports, merge_exports
from tests.child_processes import module_command

KILL_TIMEOUT_S = 120


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _unprivileged(command: list[str], scratch: Path) -> list[str]:
    """`command` run without the right to write where the file modes forbid it.

    As root, CAP_DAC_OVERRIDE is dropped with capsh (or the command runs as nobody with
    setpriv, which needs `scratch` readable by everyone)."""
    if os.geteuid() != 0:
        return command
    line = " ".join(f"'{part}'" for part in command)
    if shutil.which("capsh"):
        return ["capsh", "--drop=cap_dac_override", "--", "-c", line]
    if shutil.which("setpriv"):
        if any(folder.stat().st_mode & 0o005 != 0o005 for folder in [scratch, *scratch.parents]):
            pytest.skip(f"setpriv's nobody cannot reach {scratch}; install capsh (libcap2-bin)")
        return ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *command]
    pytest.skip("as root, needs capsh (apt-get install libcap2-bin) or setpriv to lose write access")


@pytest.fixture
def scratch() -> Path:
    """A world-readable folder (pytest's own tmp root is root-only), so setpriv's nobody can read it."""
    folder = Path(tempfile.mkdtemp(prefix="cnnserve-writes-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def _copy_run(run: Path, scratch: Path) -> Path:
    copy = scratch / "run"
    shutil.copytree(run, copy)
    for path in [copy, *copy.rglob("*")]:  # writable by whoever runs the export, as a run is
        path.chmod(0o777 if path.is_dir() else 0o666)
    return copy


def _export_args(run: Path, repository: Path) -> list[str]:
    return ["export", str(run), "--format", "onnx", "--repository", str(repository), "--parity-images", "16"]


@pytest.mark.parametrize("where", ["repository", "model folder", "parent of a new repository"])
def test_unwritable_repository_is_one_line_exit_2(where, zoo_runs, scratch):
    run = _copy_run(zoo_runs["mnist_cnn"], scratch)
    root = scratch / "models"
    (root / "mnist_cnn").mkdir(parents=True)
    if where == "repository":
        shutil.rmtree(root / "mnist_cnn")
        locked, repository = root, root
    elif where == "model folder":
        locked, repository = root / "mnist_cnn", root
    else:
        shutil.rmtree(root / "mnist_cnn")
        locked, repository = root, root / "nested" / "repo"
    locked.chmod(0o555)
    # Not through child_processes: capsh and setpriv sit between pytest and the export.
    command = _unprivileged([sys.executable, "-m", "cnnserve", *_export_args(run, repository)], scratch)
    done = subprocess.run(command, capture_output=True, text=True, timeout=KILL_TIMEOUT_S)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("cnnserve export: error: cannot write to ")
    assert str(locked) in err and "permission denied" in err and "--repository" in err
    assert sorted(p.name for p in root.rglob("*")) == (["mnist_cnn"] if where == "model folder" else [])


def test_killed_export_leaves_staging_that_the_next_export_removes(zoo_runs, zoo_sources, tmp_path):
    repository = tmp_path / "models"
    command = [*module_command("cnnserve"), *_export_args(zoo_runs["cs231n_simple"], repository)]
    with (tmp_path / "export.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not list(repository.glob("cs231n_simple/.staging-*")):
            assert process.poll() is None, (tmp_path / "export.log").read_text()
            assert time.monotonic() < deadline, "the export never staged a version"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    (staging,) = repository.glob("cs231n_simple/.staging-*")
    assert staging.name.startswith(f".staging-1-{process.pid}-")
    assert [p.name for p in (repository / "cs231n_simple").iterdir()] == [staging.name]

    result = export_run(zoo_runs["mnist_cnn"], "onnx", repository=repository, source=zoo_sources["mnist_cnn"])
    assert [(left.path, left.action) for left in result.leftovers] == [
        (staging, "removed"),
        (repository / "cs231n_simple", "removed"),
    ]
    assert f"export pid {process.pid}, no longer running" in result.leftovers[0].describe()
    assert sorted(p.name for p in repository.iterdir()) == ["mnist_cnn"]
    assert not list(repository.rglob(".staging-*"))


def test_a_running_export_is_never_cleaned(tmp_path):
    model_dir = tmp_path / "models" / "m"
    model_dir.mkdir(parents=True)
    (model_dir / "1").mkdir()
    dead = _dead_pid()
    stale = model_dir / f".staging-2-{dead}-abcdefgh"
    old_layout = model_dir / ".staging-3-k2j4h5g6"  # written by exports before pids were recorded
    mine = model_dir / f".staging-4-{os.getpid()}-abcdefgh"
    foreign = model_dir / f".staging-5-{dead}-zyxwvuts"  # a dead pid here, a live export elsewhere
    for folder in (stale, old_layout, mine, foreign):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    (model_dir / f".config-{dead}-x1y2z3.json").write_text("{")
    (model_dir / f".config-{os.getpid()}-x1y2z3.json").write_text("{")
    fd = os.open(foreign, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = subprocess.Popen(  # the lock must be held by another process to count
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=(fd,)
        )
    finally:
        os.close(fd)
    try:
        leftovers = clean_repository(tmp_path / "models")
    finally:
        holder.communicate(b"")
    removed = {left.path.name for left in leftovers if left.action == "removed"}
    assert removed == {stale.name, old_layout.name, f".config-{dead}-x1y2z3.json"}
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["1", mine.name, foreign.name, f".config-{os.getpid()}-x1y2z3.json"]
    )


def test_interrupted_replace_is_restored(tmp_path):
    model_dir = tmp_path / "models" / "m"
    model_dir.mkdir(parents=True)
    dead = _dead_pid()
    (model_dir / f".replaced-1-{dead}").mkdir()
    (model_dir / f".replaced-1-{dead}" / "model.onnx").write_bytes(b"old version 1")
    (model_dir / "2").mkdir()
    (model_dir / f".replaced-2-{dead}").mkdir()
    (leftover,) = [
        left for left in clean_repository(tmp_path / "models") if left.path.name.startswith(".replaced-1-")
    ]
    assert leftover.action == f"restored as {model_dir / '1'}"
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"old version 1"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]


def test_report_keeps_one_entry_per_repository_and_version(zoo_runs, zoo_sources, tmp_path):
    run, source = zoo_runs["cs231n_custom"], zoo_sources["cs231n_custom"]
    real, scratch_repo = tmp_path / "models", tmp_path / "scratch"
    first = export_run(run, "onnx", repository=real, source=source)
    export_run(run, "onnx", repository=scratch_repo, source=source)
    export_run(run, "onnx", repository=scratch_repo, source=source)  # version 2 there
    again = export_run(run, "onnx", repository=real, version=1, overwrite=True, source=source)
    report = json.loads((run / REPORT_FILE).read_text())
    entries = find_exports(report, format="onnx")
    slots = sorted((e["repository"], e["version"]) for e in entries if e["name"] == "cs231n_custom")
    assert [s for s in slots if s[0] in (str(real.resolve()), str(scratch_repo.resolve()))] == [
        (str(real.resolve()), 1), (str(scratch_repo.resolve()), 1), (str(scratch_repo.resolve()), 2)
    ]  # fmt: skip
    (real_entry,) = find_exports(report, repository=str(real.resolve()), version=1)
    assert real_entry["created"] == again.report.created >= first.report.created
    assert real_entry["nodes_after"] == again.report.to_dict()["nodes_after"]
    # The fold writes its own section without touching the exports.
    update_report(run, "fold", {**report["fold"], "note": "refolded"})
    after = json.loads((run / REPORT_FILE).read_text())
    assert after["exports"] == report["exports"] and after["fold"]["note"] == "refolded"


def test_report_reads_the_older_layout():
    older = {
        "onnx": {"repository": "/r", "name": "m", "version": 1, "test_accuracy": 0.9},
        "tflite_int8": {"repository": "/r", "name": "m_tflite_int8", "version": 1, "quantize": "int8"},
    }
    new = {"format": "onnx", "repository": "/scratch", "name": "m", "version": 1}
    merged = merge_exports(older, new)
    assert [(e["format"], e["repository"], e["name"]) for e in merged] == [
        ("onnx", "/r", "m"), ("tflite", "/r", "m_tflite_int8"), ("onnx", "/scratch", "m")
    ]  # fmt: skip
    replaced = merge_exports(merged, {**new, "test_accuracy": 0.5})
    assert len(replaced) == 3 and replaced[-1]["test_accuracy"] == 0.5
