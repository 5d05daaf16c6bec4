"""scripts/export_pass_ab.py: each variant is the exporter's graph without one change, gives the
full pipeline's logits, and BENCHMARKS.md's table is the recorded run's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("export_pass_ab", ROOT / "scripts" / "export_pass_ab.py")
export_pass_ab = importlib.util.module_from_spec(SPEC)
sys.modules["export_pass_ab"] = export_pass_ab  # its dataclass looks its module up there
SPEC.loader.exec_module(export_pass_ab)
RECORDED = ROOT / "tests" / "bench" / "data" / "export_passes.json"


def _producer_of_pool_input(model: onnx.ModelProto) -> str:
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    pool = next(node for node in model.graph.node if node.op_type == "MaxPool")
    return producers[pool.input[0]]


def _load(source: bytes | str) -> onnx.ModelProto:
    return onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)


@pytest.fixture(scope="module")
def mnist_variants(tmp_path_factory) -> tuple[dict, dict]:
    return export_pass_ab._variants("mnist_cnn", tmp_path_factory.mktemp("pass_ab"))


def test_mnist_cnn_variants_each_lack_one_change(mnist_variants) -> None:
    variants, rewrites = mnist_variants
    # mnist_cnn pools before its ReLUs (as its tutorial does), scales by a rank-0 1/255, and its
    # 36-filter conv is padded to ONNX Runtime's channel block on CPU.
    assert rewrites["relu_before_max_pool"] == 2
    assert rewrites["rank_match_scalar_constants"] >= 1
    changes = {"relu_before_max_pool", "rank_match_scalar_constants", "cpu_filter_padding"}
    assert {"full", *changes} <= set(variants)
    assert "merge_sibling_convs" not in variants and "decompose_lrn" not in variants  # nothing to rewrite
    assert _producer_of_pool_input(_load(variants["full"][0])) == "Relu"
    assert _producer_of_pool_input(_load(variants["relu_before_max_pool"][0])) != "Relu"

    def filters(name: str) -> list[int]:
        model = _load(variants[name][0])
        weights = {init.name: init.dims[0] for init in model.graph.initializer}
        return [weights[node.input[1]] for node in model.graph.node if node.op_type == "Conv"]

    assert 36 in filters("cpu_filter_padding") and 36 not in filters("full")  # padded to the block


def test_every_change_is_measured_with_the_full_pipelines_logits(mnist_variants) -> None:
    timings = export_pass_ab.measure_variants("mnist_cnn", mnist_variants[0], [3], rounds=1, min_time_s=0.0)
    assert {t.change for t in timings} >= {"relu_before_max_pool", "cpu_filter_padding"}
    for timing in timings:
        assert timing.batch == 3 and timing.rewrites >= 1
        assert timing.max_relative_error <= export_pass_ab.EXACT
        assert timing.with_ms > 0 and timing.without_ms > 0


def test_benchmarks_md_has_the_recorded_table() -> None:
    recorded = json.loads(RECORDED.read_text())
    table = export_pass_ab.table(recorded["records"])
    assert table in (ROOT / "BENCHMARKS.md").read_text()
    models = {r["model"] for r in recorded["records"]}
    assert {"mnist_cnn", "inception_bn", "cifar10_convnet"} <= models  # every pass measured somewhere


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "lenet"], "unknown model(s) lenet; the zoo has mnist_cnn"),
        (["--batch-sizes", "1,x"], "--batch-sizes takes positive integers, comma-separated; received '1,x'"),
        (["--rounds", "0"], "--batch-sizes and --rounds must be at least 1, --min-time-s at least 0"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_pass_ab.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
