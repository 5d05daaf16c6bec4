import csv
import json

import matplotlib.image
import pytest

from cnnserve.bench import console as terminal
from cnnserve.bench import plots, report
from tests.bench.sample_records import local_record, server_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUIRED_FIELDS = {
    "model",
    "backend",
    "device",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "images_per_s",
    "gflops",
    "pct_of_peak",
}


def test_json_is_a_list_of_records_with_the_promised_fields(tmp_path):
    path = tmp_path / "out" / "local.json"
    report.write_json([local_record(), server_record()], path)
    records = json.loads(path.read_text())
    assert isinstance(records, list) and len(records) == 2
    for record in records:
        assert set(record) >= REQUIRED_FIELDS
    assert records[0]["batch_size"] == 64
    assert records[1]["concurrency"] == 4


def test_csv_starts_with_perf_analyzer_columns(tmp_path):
    path = tmp_path / "server.csv"
    report.write_csv([server_record(concurrency=1), server_record(concurrency=8)], path)
    with path.open() as handle:
        header = next(csv.reader(handle))
    assert header[: len(report.PERF_ANALYZER_COLUMNS)] == [
        "Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
        "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
        "p50 latency", "p90 latency", "p95 latency", "p99 latency",
    ]  # fmt: skip
    rows = list(csv.DictReader(path.open()))
    assert [row["Concurrency"] for row in rows] == ["1", "8"]


def test_csv_row_is_in_microseconds_and_components_add_up_to_the_average():
    row = report.perf_analyzer_row(server_record())
    assert row["p50 latency"] == 2000 and row["p99 latency"] == 4000
    assert row["Server Queue"] == 300 and row["Server Compute Infer"] == 900
    parts = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
             "Server Compute Infer", "Server Compute Output", "Client Recv")  # fmt: skip
    assert sum(row[p] for p in parts) == pytest.approx(row["Avg latency"], abs=2)


def test_csv_fills_client_send_and_recv_from_the_codec_times():
    row = report.perf_analyzer_row(server_record())
    assert row["Client Send"] == 12 and row["Client Recv"] == 8
    # Network+Server is what remains of the 2,200 µs average after every measured part.
    assert row["Network+Server Send/Recv"] == 2200 - 12 - 8 - 300 - 10 - 900 - 5
    assert row["Channels"] == 4 and row["Streaming"] == 0


def test_open_loop_csv_starts_with_request_rate(tmp_path):
    path = tmp_path / "open.csv"
    report.write_csv([server_record(concurrency=None, request_rate=r) for r in (500.0, 1000.0)], path)
    rows = list(csv.DictReader(path.open()))
    assert next(iter(rows[0])) == "Request Rate"
    assert [row["Request Rate"] for row in rows] == ["500.0", "1000.0"]
    assert (
        rows[0]["Arrivals"] == "poisson"
        and rows[0]["Send Lag p99"] == "250"
        and rows[0]["Max In Flight"] == "7"
    )


def test_open_loop_table_and_plot(tmp_path):
    from rich.console import Console

    records = [server_record(concurrency=None, request_rate=r) for r in (500.0, 1000.0)]
    console = Console(width=240, record=True)
    console.print(terminal.server_table(records))
    text = console.export_text()
    assert "scheduled send time" in text and "send lag p99 ms" in text and "1,000" in text
    plots.plot_server(records, tmp_path / "open.png")
    _assert_png(tmp_path / "open.png")


def test_failed_requests_are_reported_with_the_first_status():
    from dataclasses import replace

    failing = replace(server_record(concurrency=8), errors=3, first_error="UNAVAILABLE: queue full")
    lines = terminal.client_load_lines([server_record(concurrency=1), failing])
    assert "mnist_cnn at concurrency 8: 3 failed request(s), the first: UNAVAILABLE: queue full" in lines
    assert not any("concurrency 1:" in line for line in lines)


def test_local_csv_has_one_row_per_record(tmp_path):
    path = tmp_path / "local.csv"
    report.write_local_csv([local_record(batch_size=1), local_record(batch_size=64)], path)
    rows = list(csv.DictReader(path.open()))
    assert [row["batch_size"] for row in rows] == ["1", "64"]
    assert {"p50_ms", "pct_of_peak", "gflops"} <= set(rows[0])


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 100 and width > 100


def test_local_plot_is_a_png(tmp_path):
    records = [local_record(model=m, backend=b, batch_size=s, p50_ms=s * 0.5)
               for m in ("mnist_cnn", "cs231n_complex") for b in ("onnxruntime", "tflite_int8")
               for s in (1, 64, 256)]  # fmt: skip
    plots.plot_local(records, tmp_path / "local.png")
    _assert_png(tmp_path / "local.png")


def test_server_plot_is_a_png(tmp_path):
    records = [server_record(concurrency=c) for c in (1, 4, 16)]
    records += [server_record("noop", concurrency=c, noop=True) for c in (1, 4, 16)]
    plots.plot_server(records, tmp_path / "server.png")
    _assert_png(tmp_path / "server.png")


def test_tables_render():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(terminal.local_table([local_record()]))
    console.print(terminal.reference_table([local_record()]))
    console.print(terminal.server_table([server_record(), server_record("noop", noop=True)]))
    text = console.export_text()
    assert "cs231n_complex" in text and "11.5–11.8×" in text and "noop (no-op)" in text


def test_noop_overhead_line_names_the_lowest_concurrency():
    records = [server_record("noop", concurrency=c, noop=True) for c in (4, 1)]
    (line,) = terminal.noop_overhead_lines(records)
    assert "concurrency 1" in line and "2000 µs p50" in line and "600 µs" in line


def test_a_saturated_client_loop_is_called_out_with_what_to_do():
    records = [
        server_record(concurrency=c, loop_busy_pct=busy) for c, busy in ((1, 35.0), (32, 97.0), (64, None))
    ]
    summary, warning = terminal.client_load_lines(records)
    assert (
        summary
        == "client: event loop busy at most 97% of a window, client processes at most 120% of one core"
    )
    assert "concurrency 32" in warning and "97%" in warning and "--client-processes 2" in warning
    assert report.perf_analyzer_row(records[1])["Client Loop Busy %"] == 97
    assert report.perf_analyzer_row(records[1])["Client CPU %"] == 120
    assert report.perf_analyzer_row(records[2])["Client Loop Busy %"] == ""


def test_server_results_go_to_stdout_and_a_stop_to_stderr(capsys):
    records = [server_record(concurrency=1), server_record("noop", concurrency=1, noop=True)]
    terminal.show_server(records)
    terminal.show_stopped(2, "UNAVAILABLE at concurrency 64")
    out, err = capsys.readouterr()
    assert "Through the server (closed loop)" in out and "no-op model 'noop' at concurrency 1" in out
    assert err == "cnnserve: stopped early, 2 level(s) measured: UNAVAILABLE at concurrency 64\n"
