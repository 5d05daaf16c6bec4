"""bench/peers/: the configs the peers are started with, checked against the peers' own schemas
(extracted from the installed MLServer 1.7.1 and KServe 0.21.0 by bench/peers/extract_schemas.py,
so neither peer is installed here), and the driver's measuring and table-making on cnnserve and
on a recorded run. The real comparison is `make bench-peers`.
"""

from __future__ import annotations

import json
import py_compile
import sys
from pathlib import Path

import jsonschema
import pytest

PEERS = Path(__file__).resolve().parents[2] / "bench" / "peers"
sys.path.insert(0, str(PEERS))
import compare  # noqa: E402
import peer_configs  # noqa: E402

RECORDED = Path(__file__).parent / "data" / "peers_run.json"
RECORDED_WITH_CPU = Path(__file__).parent / "data" / "peers_run_0556.json"  # each server's CPU too
MLSERVER_SCHEMA = json.loads((PEERS / "schemas" / "mlserver-1.7.1.json").read_text())
KSERVE_FLAGS = set(json.loads((PEERS / "schemas" / "kserve-0.21.0.json").read_text())["model_server_flags"])


@pytest.fixture
def model(noop_repository) -> peer_configs.ModelFile:
    return compare.model_file(noop_repository, "noop")


def _check(document: dict, schema: dict) -> None:
    jsonschema.validate(document, schema)
    unknown = set(document) - set(schema["properties"])
    assert not unknown, f"fields MLServer does not have: {unknown}"  # MLServer would ignore them silently


def test_model_file_is_the_exported_onnx_with_its_shapes(model, noop_repository):
    assert model.path == (noop_repository / "noop" / "1" / "model.onnx").resolve()
    assert model.image_shape == (28, 28, 1) and model.classes == 10


def test_mlserver_folder_is_valid_for_mlserver_1_7_1(model, tmp_path):
    folder = peer_configs.write_mlserver_folder(tmp_path / "mls", model, 9001, 9002, 9003)
    settings = json.loads((folder / "settings.json").read_text())
    model_settings = json.loads((folder / "noop" / "model-settings.json").read_text())
    _check(settings, MLSERVER_SCHEMA["settings"])
    _check(model_settings, MLSERVER_SCHEMA["model_settings"])
    assert (settings["grpc_port"], settings["http_port"], settings["metrics_port"]) == (9001, 9002, 9003)
    assert settings["host"] == "127.0.0.1"
    # Adaptive batching as MLServer documents it, on the very file cnnserve exported.
    assert (model_settings["max_batch_size"], model_settings["max_batch_time"]) == (32, 0.002)
    assert model_settings["parameters"]["uri"] == str(model.path)
    assert model_settings["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    # `implementation` names a class in a module MLServer can import from the served folder.
    module, _, cls = model_settings["implementation"].rpartition(".")
    runtime = folder / f"{module}.py"
    assert runtime.is_file() and f"class {cls}(MLModel)" in runtime.read_text()


def test_kserve_argv_uses_only_model_server_flags(model):
    argv = compare.peer_configs.kserve_argv(model, 9101, 9102)
    flags = [a for a in argv if a.startswith("--")]
    assert set(flags) - {"--model_path"} <= KSERVE_FLAGS  # --model_path is kserve_onnx.py's own
    values = dict(zip(argv[::2], argv[1::2], strict=True))
    assert values["--grpc_port"] == "9101" and values["--http_port"] == "9102"
    assert values["--model_name"] == "noop" and values["--model_path"] == str(model.path)


def test_peer_runtimes_compile():
    for name in ("mlserver_onnx.py", "kserve_onnx.py", "extract_schemas.py", "ceiling_server.py"):
        py_compile.compile(str(PEERS / name), doraise=True)


def test_the_table_of_a_recorded_run():
    result = json.loads(RECORDED.read_text())
    text = compare.table(result, 1, 32)
    lines = text.splitlines()
    assert (
        lines[0].startswith("| server | c=1 p50 | c=32 req/s |")
        and len(lines) == 2 + len(result["servers"]) + 1
    )
    ours = {r["concurrency"]: r for r in result["servers"]["cnnserve"]["records"]}
    assert [line.split(" | ")[0] for line in lines[2:5]] == [
        "| cnnserve 0.1.0 (ORT 1.31.1)", "| cnnserve 0.1.0, --workers 2 (ORT 1.31.1)",
        "| cnnserve 0.1.0, V2 ModelStreamInfer (ORT 1.31.1)"]  # fmt: skip
    for name, label in (("mlserver", "Seldon MLServer 1.7.1"), ("kserve", "KServe 0.21.0 ModelServer"),
                        ("ceiling", "fixed reply, no model")):  # fmt: skip
        theirs = {r["concurrency"]: r for r in result["servers"][name]["records"]}
        (row,) = [line for line in lines if label in line]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{theirs[1]['p50_ms']:.2f} ms"
        assert cells[2] == f"{theirs[32]['requests_per_s']:,.0f}"
        assert cells[4] == f"{ours[1]['p50_ms'] / theirs[1]['p50_ms']:.2f}×"
        assert cells[5] == f"{ours[32]['requests_per_s'] / theirs[32]['requests_per_s']:.2f}×"
    share = 100 * ours[32]["images_per_s"] / result["in_process"]["images_per_s"]
    assert f"(cnnserve at c=32: {share:.1f}%)" in lines[-1]


def _record(concurrency: int, p50_ms: float, requests_per_s: float, server_us: float | None = None) -> dict:
    return {"concurrency": concurrency, "p50_ms": p50_ms, "requests_per_s": requests_per_s,
            "images_per_s": requests_per_s, "server_total_us": server_us}  # fmt: skip


def _goal_rows(text: str) -> dict[str, list[str]]:
    table = text.split("\n\n")[0]  # the machine's bound may follow the table
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_goals_take_the_best_peer_per_figure_and_mark_each_configuration():
    """The bounds come from the best peer of each figure (KServe's req/s, MLServer's p50 here)
    and the in-process runs; each cnnserve configuration and the ceiling is marked against them."""
    result = {
        "servers": {
            "cnnserve": {"records": [_record(1, 1.50, 600, 420.0), _record(32, 30.0, 1000, 300.0)]},
            "cnnserve-workers": {"workers": 2,
                                 "records": [_record(1, 0.60, 700, 290.0), _record(32, 9.0, 3500)]},
            "mlserver": {"records": [_record(1, 1.00, 400), _record(32, 60.0, 500)]},
            "kserve": {"records": [_record(1, 1.20, 500), _record(32, 40.0, 900)]},
            "ceiling": {"records": [_record(1, 0.50, 900), _record(32, 14.0, 2600)]},
        },
        "in_process": {"batch_size": 64, "images_per_s": 12000.0},
        "in_process_batch1": {"batch_size": 1, "p50_ms": 0.2},
    }  # fmt: skip
    text = compare.goals(result)
    header = "| goal | needs | cnnserve, 1 worker | cnnserve --workers 2 | the ceiling |"
    assert text.splitlines()[0] == header
    rows = _goal_rows(text)
    assert rows["c=32 at ≥ 3× the best peer's req/s"] == [
        "≥ 2,700 req/s (3 × KServe's 900)", "1,000 req/s ❌", "3,500 req/s ✅", "2,600 req/s ❌"]  # fmt: skip
    assert rows["c=32 at ≥ 25% of in-process batch-64 throughput"] == [
        "≥ 3,000 req/s (25% of 12,000 images/s)",
        "1,000 req/s ❌", "3,500 req/s ✅", "2,600 req/s ❌"]  # fmt: skip
    assert rows["c=1 p50 ≤ 0.7× the best peer's"] == [
        "≤ 0.70 ms (0.7 × MLServer's 1.00)", "1.50 ms ❌", "0.60 ms ✅", "0.50 ms ✅"]  # fmt: skip
    assert rows["the server's own time at c=1 ≤ in-process batch 1 + 100 µs"] == [
        "≤ 300 µs (200 in-process batch 1 + 100)", "420 µs ❌", "290 µs ✅", "–"]  # fmt: skip


def test_the_machines_bound_comes_from_the_ceilings_cpu_the_load_generators_and_the_models():
    """2 cores, the ceiling at 500 µs and its load generator at 450 µs of CPU per request (90% of a
    core at 2,000 req/s), the model 250 µs per image: at most 2e6 / 1,200 = 1,667 req/s. The goals
    asking more are marked; the latency goals are not throughput and are left alone."""
    ceiling = _record(32, 14.0, 2000) | {"server_cpu_us_per_request": 500.0, "client_cpu_pct": 90.0}
    result = {
        "system": {"usable_cores": 2},
        "servers": {
            "cnnserve": {"records": [_record(1, 1.50, 600, 420.0), _record(32, 30.0, 1000)]},
            "kserve": {"records": [_record(1, 1.20, 500), _record(32, 40.0, 500)]},
            "ceiling": {"records": [_record(1, 0.50, 900), ceiling]},
        },
        "in_process": {"batch_size": 64, "images_per_s": 12000.0},
        "in_process_one_thread": {"batch_size": 64, "images_per_s": 4000.0, "cpu_us_per_image": 250.0},
    }  # fmt: skip
    bound = compare.machine_bound(result)
    assert bound.client_us == pytest.approx(450.0) and bound.requests_per_s == pytest.approx(2e6 / 1200)
    text = compare.goals(result)
    rows = _goal_rows(text)
    # 3 × KServe's 500 = 1,500 is within the bound; 25% of 12,000 = 3,000 is not.
    assert rows["c=32 at ≥ 3× the best peer's req/s"][0] == "≥ 1,500 req/s (3 × KServe's 500)"
    assert rows["c=32 at ≥ 25% of in-process batch-64 throughput"][0] == (
        "≥ 3,000 req/s (25% of 12,000 images/s); above what this machine allows a unary server (1,667)"
    )
    assert text.split("\n\n")[1].startswith(
        "What this machine allows at c=32: 2 cores × 10⁶ ÷ (500 µs, the ceiling's CPU per request + "
        "450 µs, the load generator's + 250 µs, the model's compute per image) = 1,667 req/s"
    )
    (row,) = [line for line in compare.table(result).splitlines() if line.startswith("| grpc.aio")]
    assert "| 500 µs, 450 µs |" in row
    del result["in_process_one_thread"]
    assert compare.machine_bound(result) is None and "\n\n" not in compare.goals(result)


def test_goals_without_peers_or_in_process_figures_are_left_out():
    result = {"servers": {"cnnserve": {"records": [_record(1, 1.5, 600, 400.0), _record(32, 30.0, 1000)]}}}
    assert compare.goals(result).splitlines() == [
        "| goal | needs | cnnserve, 1 worker |",
        "| --- | --- | --- |",
    ]


def test_goals_of_the_recorded_run():
    result = json.loads(RECORDED.read_text())
    rows = _goal_rows(compare.goals(result))
    kserve = {r["concurrency"]: r for r in result["servers"]["kserve"]["records"]}
    ours = {r["concurrency"]: r for r in result["servers"]["cnnserve"]["records"]}
    needs, mark = rows["c=32 at ≥ 3× the best peer's req/s"][:2]
    best = kserve[32]["requests_per_s"]
    assert needs == f"≥ {3 * best:,.0f} req/s (3 × KServe's {best:,.0f})"
    met = "✅" if ours[32]["requests_per_s"] >= 3 * best else "❌"
    assert mark == f"{ours[32]['requests_per_s']:,.0f} req/s {met}"


def test_cpu_figures_and_the_machines_bound_of_a_recorded_run():
    """The 05:56 run read each server's CPU: the table shows it, and the bound is cores ÷ the
    ceiling's, its load generator's and the model's one-thread CPU, as the figures say."""
    result = json.loads(RECORDED_WITH_CPU.read_text())
    lines = compare.table(result).splitlines()
    for name, entry in result["servers"].items():
        at_32 = {r["concurrency"]: r for r in entry["records"]}[32]
        (row,) = [line for line in lines if line.startswith(f"| {compare._label(name, entry)} |")]
        client = 1e4 * at_32["client_cpu_pct"] / at_32["requests_per_s"]
        assert f"| {at_32['server_cpu_us_per_request']:,.0f} µs, {client:,.0f} µs |" in row
    ceiling = {r["concurrency"]: r for r in result["servers"]["ceiling"]["records"]}[32]
    bound = compare.machine_bound(result)
    client = 1e4 * ceiling["client_cpu_pct"] / ceiling["requests_per_s"]
    model = result["in_process_one_thread"]["cpu_us_per_image"]
    costs = ceiling["server_cpu_us_per_request"] + client + model
    assert bound.requests_per_s == pytest.approx(result["system"]["usable_cores"] * 1e6 / costs)
    assert f"= {bound.requests_per_s:,.0f} req/s" in compare.goals(result)


@pytest.mark.parametrize("stamp", ["1833", "2135", "2215", "1204_1818"])
def test_benchmarks_md_shows_runs_10_12_15_and_30_as_their_json_renders(stamp, capsys):
    """BENCHMARKS.md's tables of run 10 (five cnnserve configurations, the streamed one polled
    too), run 12 (the first where a unary configuration met the c=1 goal), run 15 and run 30 (the
    spinning stream too) are what `compare.py --table` prints from the recorded JSON, line for line."""
    assert compare.main(["--table", str(RECORDED.parent / f"peers_run_{stamp}.json")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    assert len(lines) >= 15 and all(line in benchmarks for line in lines)
    assert any("ModelStreamInfer, --idle-poll-us 1000 (ORT" in line for line in lines)
    (goal,) = [line for line in lines if line.startswith("| c=1 p50 ≤ 0.7× the best peer's |")]
    polled = goal.split(" | ")[4]  # cnnserve, 1 worker, --idle-poll-us 1000
    assert (
        polled
        == {"1833": "1.31 ms ❌", "2135": "0.91 ms ✅", "2215": "0.81 ms ❌", "1204_1818": "0.72 ms ❌"}[
            stamp
        ]
    )


def test_table_command_prints_a_recorded_run(capsys):
    assert compare.main(["--table", str(RECORDED)]) == 0
    out = capsys.readouterr().out
    assert "Seldon MLServer" in out and "| goal | needs | cnnserve, 1 worker |" in out


@pytest.mark.slow
def test_the_driver_measures_cnnserve_end_to_end(noop_repository, tmp_path):
    """The driver's own path (start, answer check, the load generator, stop, in-process ORT) on
    cnnserve and the fixed-reply ceiling, which run in this venv: the peers need their
    virtualenvs, which only `make bench-peers` builds."""
    servers = (
        "cnnserve",
        "cnnserve-workers",
        "cnnserve-poll",
        "cnnserve-stream",
        "cnnserve-stream-poll",
        "cnnserve-workers-stream",
        "cnnserve-stream-poll-spin",
        "ceiling",
        "ceiling-stream",
    )
    settings = compare.Settings(noop_repository, "noop", servers, (1, 2), 0.3, 0.2, tmp_path / "peers",
                                tmp_path, channels=2, in_process_s=0.2, workers=2)  # fmt: skip
    result = compare.run(settings)
    for name in servers:
        records = result["servers"][name]["records"]
        assert [(r["concurrency"], r["errors"]) for r in records] == [(1, 0), (2, 0)]
        assert all(r["requests"] > 0 and r["protocol"] == "v2" for r in records)
        assert records[1]["channels"] == 2
    rows = [line for line in compare.table(result, 1, 2).splitlines() if "fixed reply" in line]
    assert len(rows) == 2 and all("grpcio 1.85.1" in row for row in rows)
    assert "fixed reply, no model, V2 ModelStreamInfer" in rows[1]
    assert all(r["streaming"] for r in result["servers"]["ceiling-stream"]["records"])
    assert not any(r["streaming"] for r in result["servers"]["ceiling"]["records"])
    assert result["servers"]["cnnserve-workers"]["workers"] == 2
    assert all(r["streaming"] for r in result["servers"]["cnnserve-stream"]["records"])
    assert not any(r["streaming"] for r in result["servers"]["cnnserve"]["records"])
    assert "ready: 2 workers on 127.0.0.1:" in (tmp_path / "cnnserve-workers.log").read_text()
    polling = f"idle polling: the event loop polls for {compare.IDLE_POLL_US} µs"
    assert polling in (tmp_path / "cnnserve-poll.log").read_text()
    assert polling not in (tmp_path / "cnnserve.log").read_text()
    assert result["servers"]["cnnserve-poll"]["idle_poll_us"] == compare.IDLE_POLL_US
    assert polling in (tmp_path / "cnnserve-stream-poll.log").read_text()
    assert all(r["streaming"] for r in result["servers"]["cnnserve-stream-poll"]["records"])
    assert "idle_poll_us" not in result["servers"]["cnnserve-stream"]
    both = result["servers"]["cnnserve-workers-stream"]
    assert both["workers"] == 2 and all(r["streaming"] for r in both["records"])
    assert "ready: 2 workers on 127.0.0.1:" in (tmp_path / "cnnserve-workers-stream.log").read_text()
    spinning = result["servers"]["cnnserve-stream-poll-spin"]
    assert spinning["cpu_spinning"] is True and spinning["idle_poll_us"] == compare.IDLE_POLL_US
    assert all(r["streaming"] for r in spinning["records"])
    spins = "spinning while they wait for work (--cpu-spinning)"
    assert spins in (tmp_path / "cnnserve-stream-poll-spin.log").read_text()
    assert spins not in (tmp_path / "cnnserve-stream-poll.log").read_text()
    assert "cpu_spinning" not in result["servers"]["cnnserve-stream-poll"]
    (goals_head, *_) = compare.goals(result, 1, 2).splitlines()
    assert goals_head.endswith(
        "| cnnserve, 1 worker, ModelStreamInfer | cnnserve, 1 worker, ModelStreamInfer, --idle-poll-us 1000 "
        "| cnnserve --workers 2, ModelStreamInfer "
        "| cnnserve, 1 worker, ModelStreamInfer, --idle-poll-us 1000 --cpu-spinning "
        "| the ceiling | the ceiling, ModelStreamInfer |"
    )
    assert result["in_process"]["batch_size"] == 64 and result["in_process"]["images_per_s"] > 0
    assert result["in_process_batch1"]["batch_size"] == 1 and result["in_process_batch1"]["p50_ms"] > 0
    # Each server's own CPU over each window, and the model's compute on one thread.
    for name in servers:
        assert all(20 < r["server_cpu_us_per_request"] < 1e6 for r in result["servers"][name]["records"])
    one_thread = result["in_process_one_thread"]
    assert one_thread["settings"]["intra_op_threads"] == 1 and one_thread["cpu_us_per_image"] > 0
    assert compare.machine_bound(result, 2).requests_per_s > 0
    stream_bound = compare.machine_bound(result, 2, streaming=True)
    assert stream_bound.streaming and stream_bound.requests_per_s > 0
    assert stream_bound.text() in compare.goals(result, 1, 2)
    assert result["onnx"]["path"] == str((noop_repository / "noop" / "1" / "model.onnx").resolve())


@pytest.mark.parametrize(
    "extra", [["--grpc-server", "sync"], ["--onnx"], ["--onnx", "--grpc-server", "sync"]], ids=str
)
def test_the_ceilings_variants_answer_logits(model, tmp_path, extra):
    """`ceiling_server.py --grpc-server sync` (gRPC's thread-pool server) and `--onnx FILE` (each
    request's image through ONNX Runtime) answer a real request with logits [1, classes]."""
    from cnnserve.bench.serve_process import ServerProcess, free_port

    if "--onnx" in extra:  # the no-op model's own file
        extra = [*extra[: extra.index("--onnx") + 1], str(model.path), *extra[extra.index("--onnx") + 1 :]]
    port = free_port()
    command = [sys.executable, str(PEERS / "ceiling_server.py"), "--port", str(port), "--model", model.name,
               "--image-shape", ",".join(map(str, model.image_shape)), "--classes", str(model.classes),
               *extra]  # fmt: skip
    server = ServerProcess("ceiling", command, tmp_path / "ceiling.log")
    server.start()
    try:
        compare.wait_ready(server, f"127.0.0.1:{port}", model.name, timeout_s=30)
        compare.check_answer(f"127.0.0.1:{port}", model)  # raises unless logits [1, classes] come back
    finally:
        server.stop()


@pytest.mark.parametrize("extra", [[], ["--grpc-server", "sync"]], ids=["aio", "sync"])
def test_the_ceiling_answers_a_stream_in_order_with_each_messages_id(model, tmp_path, extra):
    """ModelStreamInfer on the ceiling: the load generator matches answers to requests by id."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb  # not cnnserve's: the two clash in one process
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from cnnserve.bench.serve_process import ServerProcess, free_port

    port = free_port()
    command = [sys.executable, str(PEERS / "ceiling_server.py"), "--port", str(port), "--model", model.name,
               "--image-shape", ",".join(map(str, model.image_shape)), "--classes", str(model.classes),
               *extra]  # fmt: skip
    server = ServerProcess("ceiling", command, tmp_path / "ceiling.log")
    server.start()
    try:
        compare.wait_ready(server, f"127.0.0.1:{port}", model.name, timeout_s=30)
        requests = [pb.ModelInferRequest(model_name=model.name, id=name) for name in ("a", "b", "c")]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    finally:
        server.stop()
    assert [a.infer_response.id for a in answers] == ["a", "b", "c"]
    assert all(list(a.infer_response.outputs[0].shape) == [1, model.classes] for a in answers)


def test_missing_peer_venv_is_one_line(model, tmp_path):
    settings = compare.Settings(model.path.parents[2], "noop", ("kserve",), (1,), 0.3, 0.2, tmp_path / "none",
                                tmp_path)  # fmt: skip
    with pytest.raises(SystemExit, match=r"no kserve venv in .*; run bench/peers/setup.sh"):
        compare.launch("kserve", settings, model)


def test_a_bad_workers_count_is_one_line(capsys, noop_repository):
    assert compare.main(["--repository", str(noop_repository), "--model", "noop", "--workers", "many"]) == 2
    expected = "compare.py: --workers: expected a number or 'auto', received 'many'"
    assert capsys.readouterr().err.strip() == expected


RUN_TABLES = {
    "Runs 12–14": ["2135", "2139", "2141"],
    "Runs 15–17": ["2215", "2218", "2220"],
    "Runs 18–20": ["0800", "0802", "0804"],
    "Runs 21–23": ["0816", "0819", "0821"],
    "Runs 24–27": ["1813", "1820", "1822", "1825"],
    "Runs 28–31": ["1204_1759", "1204_1815", "1204_1818", "1204_1821"],
    "Runs 32–35": ["1204_2033", "1204_2035", "1204_2057", "1204_2100"],
}
RUN_TABLE_LABELS = {
    "cnnserve, 1 worker": "cnnserve",
    "cnnserve --workers 2": "cnnserve-workers",
    "cnnserve --idle-poll-us 1000": "cnnserve-poll",
    "cnnserve, ModelStreamInfer": "cnnserve-stream",
    "cnnserve, ModelStreamInfer, --idle-poll-us 1000": "cnnserve-stream-poll",
    "cnnserve --workers 2, ModelStreamInfer": "cnnserve-workers-stream",
    "cnnserve, ModelStreamInfer, --idle-poll-us 1000 --cpu-spinning": "cnnserve-stream-poll-spin",
    "KServe": "kserve",
    "MLServer": "mlserver",
    "the ceiling (no model)": "ceiling",
    "the ceiling, streamed": "ceiling-stream",
}


@pytest.mark.parametrize(("runs", "stamp"), [(r, s) for r, stamps in RUN_TABLES.items() for s in stamps])
def test_benchmarks_md_run_tables_read_the_recorded_runs(runs, stamp):
    """Each server's cell in the tables of runs 12-14 to 32-35 is that run's c=1 p50 and c=32 req/s
    ("–" where the run had no such server)."""
    result = json.loads((RECORDED.parent / f"peers_run_{stamp}.json").read_text())
    column = RUN_TABLES[runs].index(stamp)
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    section = benchmarks[benchmarks.index(f"{runs} (c=1 p50; c=32 req/s):") :]
    table = section[section.index("| server |") :].split("\n\n")[0].splitlines()
    checked = set()
    for row in table:
        label = row.split(" | ")[0].lstrip("| ")
        if label not in RUN_TABLE_LABELS:
            continue  # the header and the goals' rows
        cell = row.split(" | ")[1 + column].rstrip(" |")
        entry = result["servers"].get(RUN_TABLE_LABELS[label])
        if entry is None:
            assert cell == "–", label
            continue
        records = {r["concurrency"]: r for r in entry["records"]}
        assert cell == f"{records[1]['p50_ms']:.2f} ms; {records[32]['requests_per_s']:,.0f}", label
        checked.add(label)
    required = {"cnnserve, 1 worker", "cnnserve, ModelStreamInfer", "KServe", "the ceiling (no model)"}
    if "cnnserve-workers-stream" in result["servers"]:  # runs since compare.py streamed to the workers
        required.add("cnnserve --workers 2, ModelStreamInfer")
    if "cnnserve-stream-poll-spin" in result["servers"]:  # runs since it ran the spinning stream too
        required.add("cnnserve, ModelStreamInfer, --idle-poll-us 1000 --cpu-spinning")
    assert required <= checked


@pytest.mark.parametrize(
    ("runs", "stamp"), [(r, s) for r in ("Runs 28–31", "Runs 32–35") for s in RUN_TABLES[r]]
)
def test_benchmarks_md_own_times_of_runs_28_35_are_the_recorded_ones(runs, stamp):
    """The own-time row of runs 28-31 and 32-35: each run's server_total_us at c=1 of the polled
    stream and of the spinning one, and the goal from the run's in-process batch 1."""
    result = json.loads((RECORDED.parent / f"peers_run_{stamp}.json").read_text())
    column = RUN_TABLES[runs].index(stamp)
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    section = benchmarks[benchmarks.index(f"{runs} (c=1 p50; c=32 req/s):") :]
    rows = {
        row.split(" | ")[0].lstrip("| "): row.split(" | ")[1:]
        for row in section.split("\n\n")[1].splitlines()
    }

    def own(name: str) -> str:
        entry = result["servers"].get(name)
        if entry is None:
            return "–"
        return f"{next(r for r in entry['records'] if r['concurrency'] == 1)['server_total_us']:.0f} µs"

    cell = rows["own time at c=1: the polled stream; with --cpu-spinning"][column].rstrip(" |")
    assert cell == f"{own('cnnserve-stream-poll')}; {own('cnnserve-stream-poll-spin')}"
    goal = rows["own-time goal (in-process batch 1 + 100 µs)"][column].rstrip(" |")
    assert goal == f"≤ {1e3 * result['in_process_batch1']['p50_ms'] + 100:.0f} µs"
