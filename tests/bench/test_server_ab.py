"""bench/server_ab.py: two real servers, one per event loop, measured in alternation, and its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnserve.bench import server_ab


def test_levels_parse_concurrency_and_images_per_request():
    assert server_ab.parse_levels("1,32,2x64,32s,4x8s") == (
        server_ab.Level(1, 1),
        server_ab.Level(32, 1),
        server_ab.Level(2, 64),
        server_ab.Level(32, 1, streaming=True),
        server_ab.Level(4, 8, streaming=True),
    )
    assert server_ab.Level(32, 1, streaming=True).label == "c=32, 1 img/req, streaming"
    with pytest.raises(SystemExit, match="Cs or CxIMAGESs items, received 'x'"):
        server_ab.parse_levels("1,x")
    with pytest.raises(SystemExit, match="positive numbers"):
        server_ab.parse_levels("0")


@pytest.mark.slow
def test_both_event_loops_serve_and_the_table_reads_the_rounds(noop_repository: Path, tmp_path: Path, capsys):
    out = tmp_path / "ab.json"
    argv = ["--repository", str(noop_repository), "--model", "noop", "--a", "--event-loop asyncio",
            "--b", "--event-loop uvloop", "--levels", "1,2x4,2s", "--rounds", "2", "--duration", "0.3",
            "--warmup", "0.1", "--json", str(out)]  # fmt: skip
    assert server_ab.main(argv) == 0
    result = json.loads(out.read_text())
    assert len(result["rounds"]) == 2
    for records in result["rounds"]:
        for side in ("a", "b"):
            got = [
                (r["concurrency"], r["images_per_request"], r["streaming"], r["errors"])
                for r in records[side]
            ]
            assert got == [(1, 1, False, 0), (2, 4, False, 0), (2, 1, True, 0)]
            assert all(r["requests"] > 0 for r in records[side])
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| c=")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| c=1, 1 img/req",
        "| c=2, 4 img/req",
        "| c=2, 1 img/req, streaming",
    ]
    first = result["rounds"][0]
    ratio = first["b"][0]["requests_per_s"] / first["a"][0]["requests_per_s"]
    second = result["rounds"][1]
    median = (ratio + second["b"][0]["requests_per_s"] / second["a"][0]["requests_per_s"]) / 2
    assert f"{median:.2f}×" in rows[0]


def test_the_server_logs_its_event_loop(noop_repository: Path, tmp_path: Path):
    from cnnserve.bench.serve_process import start_cnnserve

    for loop in ("asyncio", "uvloop"):
        server, _ = start_cnnserve(
            ["--repository", str(noop_repository), "--models", "noop", "--port", "0", "--http-port", "off",
             "--metrics-port", "off", "--model-control", "none", "--event-loop", loop],
            tmp_path, name=loop,
        )  # fmt: skip
        assert server.stop() == 0
        assert f"plaintext, {loop} event loop" in (tmp_path / f"{loop}.log").read_text()


def test_a_server_runs_the_exported_revisions_code(noop_repository: Path, tmp_path: Path):
    """--a-revision: the tree git archive wrote is what the server imports, not the working tree
    (its version string is changed in the export, and the server's ready line shows it)."""
    from cnnserve.bench.serve_process import start_cnnserve
    from cnnserve.bench.source_tree import export_revision

    tree = export_revision("HEAD", tmp_path / "tree")
    assert len(tree.commit) == 40 and (tree.path / "cnnserve" / "serving" / "batcher.py").is_file()
    init = tree.path / "cnnserve" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.0.0+exported.'))
    server, _ = start_cnnserve(
        ["--repository", str(noop_repository.resolve()), "--models", "noop", "--port", "0",
         "--http-port", "off", "--metrics-port", "off", "--model-control", "none"],
        tmp_path, name="exported", cwd=tree.path, env=tree.env(),
    )  # fmt: skip
    assert server.stop() == 0
    assert "(cnnserve 0.0.0+exported." in (tmp_path / "exported.log").read_text()
    with pytest.raises(SystemExit, match="source_tree: git rev-parse"):
        export_revision("no-such-revision", tmp_path / "none")


def test_the_table_says_which_revision_server_a_ran():
    result = {"a": "", "b": "", "a_revision": "ef7e8fe (ef7e8fe669e8)", "model": "noop", "duration_s": 1,
              "levels": [], "rounds": []}  # fmt: skip
    assert server_ab.table(result).splitlines()[0] == (
        "A: `(defaults)` at ef7e8fe (ef7e8fe669e8); B: `(defaults)` in the working tree; noop, V2, "
        "0 round(s) of 1 s per level, A then B."
    )


def test_the_table_of_the_recorded_event_loop_run():
    """BENCHMARKS.md's event-loop table is this recorded run, rendered."""
    result = json.loads((Path(__file__).parent / "data" / "event_loop_ab.json").read_text())
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) == 3
    for index, row in enumerate(rows):
        pairs = [(r["a"][index], r["b"][index]) for r in result["rounds"]]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == " / ".join(f"{a['requests_per_s']:,.0f}" for a, _ in pairs)
        ratios = sorted(b["requests_per_s"] / a["requests_per_s"] for a, b in pairs)
        assert cells[3] == f"{ratios[1]:.2f}×"  # the median of three rounds


@pytest.mark.parametrize("name", ["inline_ab_mnist.json", "inline_ab_cs231n.json"])
def test_benchmarks_md_shows_the_recorded_inline_runs(name):
    """The "Inline runs" tables of BENCHMARKS.md are these recorded runs, rendered."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert result["a"] == "--inline-max-us 0" and result["b"] == ""
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) and all(row in benchmarks for row in rows)


@pytest.mark.parametrize(
    ("name", "flag"),
    [("threads1_ab_mnist.json", "`--cpu-threads 1`"), ("spinning_ab_mnist.json", "`--cpu-spinning`")],
)
def test_benchmarks_md_shows_the_recorded_thread_option_runs(name, flag):
    """The rows under "Inline runs" that set one thread or spinning against the default."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert result["a"] == "" and f"`{result['b']}`" == flag
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == 2 and all(f"| {flag} {row}" in benchmarks for row in rows)


@pytest.mark.parametrize("name", ["instances_ab_mnist.json", "instances_ab_cs231n.json"])
def test_benchmarks_md_shows_the_recorded_instances_runs(name):
    """The "Model instances" tables of BENCHMARKS.md are these recorded runs, rendered, and the
    64-image images/s cells are their req/s × 64."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"])
    assert all(row in benchmarks for row in rows)
    level = next(i for i, r in enumerate(result["rounds"][0]["a"]) if r["concurrency"] == 4)
    for side in ("a", "b"):
        cells = " / ".join(f"{r[side][level]['requests_per_s'] * 64:,.0f}" for r in result["rounds"])
        assert f"| {result['model']} |" in benchmarks and cells in benchmarks


@pytest.mark.parametrize("name", ["hotpath_ab_mnist.json", "hotpath_ab_noop.json"])
def test_benchmarks_md_shows_the_recorded_before_and_after_runs(name):
    """The "request path ... before and after" tables: server A ran the revision before the change."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert result["a"] == result["b"] == "" and result["a_revision"].startswith("ef7e8fe ")
    assert f"--a-revision {result['a_revision'].split()[0]}" in benchmarks
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) == 4 and all(row in benchmarks for row in rows)


@pytest.mark.parametrize("name", ["stream_bytes_ab_mnist.json", "stream_bytes_ab_noop.json"])
def test_benchmarks_md_shows_the_recorded_streaming_before_and_after_runs(name):
    """The "ModelStreamInfer answers as bytes" tables: A ran the commit before, levels stream."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    before = result["a_revision"].split()[1].strip("()")
    assert result["a"] == result["b"] == "" and f"--a-revision {before[:7]}" in benchmarks
    assert any(level["streaming"] for level in result["levels"])
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) == 3 and all(row in benchmarks for row in rows)


@pytest.mark.parametrize(
    "name", ["small_runs_ab_cs231n.json", "small_runs_ab_mnist.json", "small_runs_ab_mnist_forced.json"]
)
def test_benchmarks_md_shows_the_recorded_small_run_session_runs(name):
    """The "Small runs on one thread" tables: A ran the commit before the change and B the change,
    or (forced) both the change, B with the second session for every model."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    if "forced" in name:
        assert result["a"] == "" and result["b"] == "--small-run-session-us 0" and not result["a_revision"]
        assert f'--a "" --b "{result["b"]}"' in benchmarks
    else:
        before = result["a_revision"].split()[1].strip("()")
        assert result["a"] == result["b"] == "" and f"--a-revision {before[:7]}" in benchmarks
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) == 4 and all(row in benchmarks for row in rows)


@pytest.mark.parametrize(
    "name", ["idle_poll_ab_mnist.json", "idle_poll_ab_mnist_2000.json", "idle_poll_ab_stream.json"]
)
def test_benchmarks_md_shows_the_recorded_idle_poll_runs(name):
    """The "Idle polling" tables: both servers the same code, B with `--idle-poll-us`."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert result["a"] == "" and result["b"].startswith("--idle-poll-us ") and not result["a_revision"]
    assert f'--b "{result["b"]}"' in benchmarks
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) >= 2 and all(row in benchmarks for row in rows)


@pytest.mark.slow
def test_cpu_quota_runs_each_server_in_its_own_limited_cgroup(noop_repository: Path, tmp_path: Path, capsys):
    """--cpu-quota: both servers start inside new cgroups (the server's own log says its quota),
    which are gone once the run ends."""
    from cnnserve.bench.cpu_cgroup import writable_cpu_hierarchy

    found = writable_cpu_hierarchy()
    if found is None:
        pytest.skip("no cgroup hierarchy with the cpu controller is writable here")
    out = tmp_path / "quota.json"
    argv = ["--repository", str(noop_repository), "--model", "noop", "--a", "--cpu-threads 2", "--b", "",
            "--cpu-quota", "0.5", "--levels", "1", "--rounds", "1", "--duration", "0.3", "--warmup", "0.1",
            "--json", str(out), "--p99"]  # fmt: skip
    before = set(found[0].iterdir())
    assert server_ab.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["cpu_quota"] == 0.5 and all(result["rounds"][0][side][0]["errors"] == 0 for side in "ab")
    assert set(found[0].iterdir()) == before  # both cgroups removed
    text = capsys.readouterr().out
    assert "each server in its own cgroup limited to 0.5 CPU(s)." in text
    assert "| B / A p50 (median) | A p99 ms | B p99 ms | B / A p99 (median) |" in text


def test_cpu_quota_without_a_writable_hierarchy_is_a_clear_exit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from cnnserve.bench import cpu_cgroup

    monkeypatch.setattr(cpu_cgroup, "writable_cpu_hierarchy", lambda: None)
    argv = ["--repository", str(tmp_path), "--model", "noop", "--cpu-quota", "1", "--rounds", "1"]
    with pytest.raises(SystemExit, match="server_ab: no cgroup hierarchy with the cpu controller"):
        server_ab.main(argv)


@pytest.mark.parametrize("name", ["cpu_quota_ab_cs231n.json", "cpu_quota_ab_mnist.json"])
def test_benchmarks_md_shows_the_recorded_cpu_quota_runs(name):
    """The "Under a cgroup CPU quota" tables: A with ONNX Runtime's own thread count on this
    machine (2), B the default, both servers in a 1-CPU cgroup; shown with their p99."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert result["a"] == "--cpu-threads 2" and result["b"] == "" and result["cpu_quota"] == 1.0
    assert f'--model {result["model"]} --a "--cpu-threads 2" --b "" --cpu-quota 1' in benchmarks
    rows = [line for line in server_ab.table(result, p99=True).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) == 4 and all(row in benchmarks for row in rows)


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("stream32_ab_small_run_session.json", "--small-run-session-us 0"),
        ("stream32_ab_threads1.json", "--cpu-threads 1"),
        ("stream32_ab_instances2.json", "--instances 2"),
    ],
)
def test_benchmarks_md_shows_the_recorded_streamed_concurrency_32_runs(name, flag):
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert result["a"] == "" and result["b"] == flag and f'--a "" --b "{flag}"' in benchmarks
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) == 3 and all(row in benchmarks for row in rows)


@pytest.mark.parametrize("name", ["stream_guard_ab_mnist_unary.json", "stream_guard_ab_mnist.json"])
def test_benchmarks_md_shows_the_recorded_stream_read_runs(name):
    """The "Stream reads without a task per message" tables: A ran the commit before the change, B the change;
    streamed concurrency 32 served more in every round, which is why it was kept."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    before = result["a_revision"].split()[1].strip("()")
    assert result["a"] == result["b"] == "" and f"--a-revision {before[:7]}" in benchmarks
    assert sum(level["streaming"] for level in result["levels"]) == 2
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) and all(row in benchmarks for row in rows)
    level = next(i for i, lv in enumerate(result["levels"]) if lv["streaming"] and lv["concurrency"] == 32)
    assert all(r["b"][level]["requests_per_s"] > r["a"][level]["requests_per_s"] for r in result["rounds"])


def test_benchmarks_md_shows_the_recorded_streamed_workers_run():
    """Runs 21–23's alternated check: `--workers 2` against one worker, streamed and unary c=32."""
    result = json.loads((Path(__file__).parent / "data" / "stream32_ab_workers2.json").read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert result["a"] == "" and result["b"] == "--workers 2" and not result["a_revision"]
    assert '--a "" --b "--workers 2" --levels 32s,32' in benchmarks
    rows = [line for line in server_ab.table(result).splitlines() if line.startswith("| c=")]
    assert len(rows) == 2 and all(row in benchmarks for row in rows)


# Each run and how many levels it measured (the fifth: concurrency 4 alone).
INLINE_ONE_THREAD_LEVELS = {
    f"inline_one_thread_ab_mnist{suffix}.json": levels
    for suffix, levels in (("", 5), ("_2", 5), ("_3", 3), ("_4", 2), ("_5", 1))
}
INLINE_ONE_THREAD_RUNS = list(INLINE_ONE_THREAD_LEVELS)


@pytest.mark.parametrize("name", INLINE_ONE_THREAD_RUNS)
def test_benchmarks_md_shows_the_recorded_inline_one_thread_runs(name):
    """The "Inline runs on one thread after an idle gap" tables: A the commit before the change,
    B the change, both with the defaults; shown with each side's own time per request."""
    result = json.loads((Path(__file__).parent / "data" / name).read_text())
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    before = result["a_revision"].split()[1].strip("()")
    assert result["a"] == result["b"] == "" and f"--a-revision {before[:7]}" in benchmarks
    text = server_ab.table(result, own_time=True)
    assert "| A own µs | B own µs | B / A own (median) |" in text
    rows = [line for line in text.splitlines() if line.startswith("| c=")]
    assert len(rows) == len(result["levels"]) == INLINE_ONE_THREAD_LEVELS[name]
    assert all(row in benchmarks for row in rows)


@pytest.mark.parametrize(("count", "c4_rounds"), [(4, "26"), (5, "41")])  # 5 + 5 + 7 + 9, then + 15
def test_pooled_rounds_count_every_round_of_every_run_by_level_and_are_in_benchmarks_md(count, c4_rounds):
    """`--pool`: one row per level, its rounds summed over the runs that have it, the medians and
    counts taken over all of them; the pools of the first four runs and of all five are the
    tables BENCHMARKS.md shows."""
    runs = [
        json.loads((Path(__file__).parent / "data" / name).read_text())
        for name in INLINE_ONE_THREAD_RUNS[:count]
    ]
    text = server_ab.pooled(runs)
    cells = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| c=")]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["c=4, 1 img/req"][0] == c4_rounds and rows["c=1, 1 img/req"][0] == "17"  # 5 + 5 + 7
    assert rows["c=2, 1 img/req"][0] == "9" and len(rows) == 6
    unary_c1 = {"concurrency": 1, "images_per_request": 1, "streaming": False}
    c1 = [
        (a, b)
        for run in runs
        for r in run["rounds"]
        for level, a, b in zip(run["levels"], r["a"], r["b"], strict=True)
        if level == unary_c1
    ]
    assert rows["c=1, 1 img/req"][4] == str(sum(b["server_total_us"] < a["server_total_us"] for a, b in c1))
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert all(line in benchmarks for line in text.splitlines()[2:])


def test_pooling_runs_of_different_servers_is_refused(capsys):
    data = Path(__file__).parent / "data"
    with pytest.raises(SystemExit, match="--pool needs runs of the same model, A and B"):
        server_ab.main(
            ["--pool", str(data / INLINE_ONE_THREAD_RUNS[0]), str(data / "stream32_ab_workers2.json")]
        )
