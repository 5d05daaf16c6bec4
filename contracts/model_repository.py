"""`models/<model>/config.json`: the contract between the exporter (writes) and the server (reads).

The server imports this module and must never pull in TensorFlow: standard library (and the
numpy-only parity record) here.
The repository follows Triton's layout:
    models/<model>/config.json
    models/<model>/<version>/model.onnx | model.savedmodel/ | model.tflite
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.parity import Parity

CONFIG_FILE = "config.json"
# Model names become directory names and metric labels: keep them to a safe alphabet.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PLATFORM_FILES = {
    "onnxruntime_onnx": "model.onnx",
    "tensorflow_savedmodel": "model.savedmodel",
    "tflite": "model.tflite",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "uint8", "float32"
    shape: tuple[int, ...]  # -1 for the batch dimension

    @classmethod
    def from_dict(cls, raw: dict) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["dtype"]), tuple(int(d) for d in raw["shape"]))


POLICY_KINDS = ("latest", "all", "specific")
MAX_INSTANCES = 64  # sessions of one model version (serve --instances)
# Runs on the server's event loop thread block every other call for their length: at most 10 ms.
MAX_INLINE_US = 10_000.0


def check_inline_max_us(value: float, name: str, received: str) -> None:
    """The range of an inline-run limit, for config.json's `inline_max_us` and `--inline-max-us`."""
    if not 0 <= value <= MAX_INLINE_US:
        raise CnnserveError(
            f"{name} must be between 0 and {MAX_INLINE_US:g} (0: never run on the event loop's "
            f"thread), received {received}"
        )


@dataclass(frozen=True)
class VersionPolicy:
    """Which version folders a server loads, in Triton's three forms; the default is Triton's
    and TF Serving's: the newest one."""

    kind: str = "latest"
    num_versions: int = 1  # for "latest"
    versions: tuple[int, ...] = ()  # for "specific"

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise CnnserveError(
                f"version_policy: expected one of {', '.join(POLICY_KINDS)}, received {self.kind!r}"
            )
        if self.kind == "latest" and self.num_versions < 1:
            raise CnnserveError(
                f"version_policy.latest.num_versions must be >= 1, received {self.num_versions}"
            )
        if self.kind == "specific" and (not self.versions or any(v < 1 for v in self.versions)):
            raise CnnserveError(
                "version_policy.specific.versions: expected positive version numbers, "
                f"received {list(self.versions)}"
            )

    def select(self, available: list[int] | tuple[int, ...]) -> list[int]:
        """The versions to serve out of those on disk, ascending."""
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        return [v for v in ordered if v in self.versions]

    def to_config(self) -> dict:
        """Triton's JSON form: {"latest": {"num_versions": 1}}, {"all": {}}, {"specific": {...}}."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"all": {}}

    @classmethod
    def from_config(cls, raw: object) -> VersionPolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or len(raw) != 1:
            raise CnnserveError(
                'version_policy: expected one of {"latest": {"num_versions": N}}, {"all": {}}, '
                f'{{"specific": {{"versions": [...]}}}}, received {raw!r}'
            )
        ((kind, body),) = raw.items()
        body = body or {}
        if not isinstance(body, dict):
            raise CnnserveError(f"version_policy.{kind}: expected an object, received {body!r}")
        if kind == "latest":
            return cls("latest", num_versions=int(body.get("num_versions", 1)))
        if kind == "specific":
            return cls("specific", versions=tuple(int(v) for v in body.get("versions", ())))
        return cls(str(kind))

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """The command-line form: `latest`, `latest:N`, `all` or `specific:1,3`."""
        kind, _, value = text.partition(":")
        try:
            if kind == "latest":
                return cls("latest", num_versions=int(value) if value else 1)
            if kind == "specific":
                return cls("specific", versions=tuple(int(v) for v in value.split(",") if v.strip()))
        except ValueError:
            pass
        else:
            if kind == "all" and not value:
                return cls("all")
        raise CnnserveError(
            f"version policy: expected latest[:N], all or specific:V[,V...], received {text!r}"
        )

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return f"specific {', '.join(map(str, self.versions))}"
        return "all"


@dataclass(frozen=True)
class Provenance:
    """Where a model version came from: config.json's `extra` object, typed.

    Written by `cnnserve export` (every field) and by `cnnserve bench noop` (`noop`, `purpose`);
    read by the server (`flops_per_image`, reported in ModelConfig parameters) and by bench (the
    zoo `model`). A field the writer did not know is None, so older files load unchanged."""

    model: str | None = None  # the zoo model the run trained
    format: str | None = None  # cnnserve export --format
    quantize: str | None = None
    version: int | None = None
    dataset: str | None = None
    created: str | None = None  # ISO 8601, UTC
    parity: Parity | None = None  # the written file against the folded model
    float_test_accuracy: float | None = None  # the float model's, beside an int8 one
    flops_per_image: int | None = None  # 2 × multiply-adds of the conv and dense layers
    noop: bool = False  # `cnnserve bench noop`: answers without computing
    purpose: str | None = None

    def to_dict(self) -> dict:
        """The `extra` object as the files have it: export's fields, or the noop marker."""
        exported = {
            "model": self.model,
            "format": self.format,
            "quantize": self.quantize,
            "version": self.version,
            "dataset": self.dataset,
            "created": self.created,
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "float_test_accuracy": self.float_test_accuracy,
            "flops_per_image": self.flops_per_image,
        }
        if self.noop:  # the marker, and only what was recorded beside it
            recorded = {key: value for key, value in exported.items() if value is not None}
            return {"noop": True, "purpose": self.purpose, **recorded}
        return exported

    @classmethod
    def from_dict(cls, raw: object) -> Provenance:
        if not isinstance(raw, dict):
            raise ValueError(f"extra: expected an object, received {raw!r}")

        def optional(key: str, kind: type):
            value = raw.get(key)
            return None if value is None else kind(value)

        parity = raw.get("parity")
        return cls(
            model=optional("model", str),
            format=optional("format", str),
            quantize=optional("quantize", str),
            version=optional("version", int),
            dataset=optional("dataset", str),
            created=optional("created", str),
            parity=Parity.from_dict(parity) if isinstance(parity, dict) else None,
            float_test_accuracy=optional("float_test_accuracy", float),
            flops_per_image=optional("flops_per_image", int),
            noop=bool(raw.get("noop", False)),
            purpose=optional("purpose", str),
        )


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    class_labels: tuple[str, ...]
    max_batch_size: int = 64
    # 0 (Triton's default): run as soon as the model is free; batches still form from the
    # requests that arrive while it computes. Waiting costs latency at low concurrency for little
    # throughput (BENCHMARKS.md, the `--max-queue-delay-ms 2` runs).
    max_queue_delay_ms: float = 0.0
    source_run: str = ""
    test_accuracy: float | None = None
    provenance: Provenance = field(default_factory=Provenance)  # written as "extra"
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    # Sessions that serve each version at once (Triton's instance_group count); --instances
    # overrides it. One: single images keep every intra-op thread (BENCHMARKS.md, instances).
    instance_count: int = 1
    # The longest run (µs) an idle model may make on the server's event loop thread, skipping the
    # hand-over to its batcher's worker (0: never); None: the server's default. --inline-max-us
    # overrides it.
    inline_max_us: float | None = None

    def __post_init__(self) -> None:
        if not MODEL_NAME_PATTERN.match(self.name):
            raise CnnserveError(
                f"invalid model name {self.name!r}: use letters, digits, '_', '.', '-' "
                "(at most 128, not starting with a symbol)"
            )
        if self.platform not in PLATFORM_FILES:
            raise CnnserveError(
                f"unknown platform {self.platform!r}; expected one of {', '.join(PLATFORM_FILES)}"
            )
        if self.max_batch_size < 1:
            raise CnnserveError(f"max_batch_size must be >= 1, received {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise CnnserveError(f"max_queue_delay_ms must be >= 0, received {self.max_queue_delay_ms:g}")
        if not 1 <= self.instance_count <= MAX_INSTANCES:
            raise CnnserveError(
                f"instance_count must be between 1 and {MAX_INSTANCES}, received {self.instance_count}"
            )
        if self.inline_max_us is not None:
            check_inline_max_us(self.inline_max_us, "inline_max_us", f"{self.inline_max_us:g}")
        if not self.inputs:
            raise CnnserveError("inputs is empty; an image classifier has one input")
        if not self.outputs:
            raise CnnserveError("outputs is empty; expected at least the logits")

    @property
    def model_file(self) -> str:
        return PLATFORM_FILES[self.platform]

    def to_json(self) -> str:
        written = {"provenance": ("extra", self.provenance.to_dict()),
                   "version_policy": ("version_policy", self.version_policy.to_config())}  # fmt: skip
        fields = dict(written.get(key, (key, value)) for key, value in asdict(self).items())
        if self.instance_count == 1:
            del fields["instance_count"]  # the default: files stay as 0.1.0 wrote them
        if self.inline_max_us is None:
            del fields["inline_max_us"]
        return json.dumps(fields, indent=2) + "\n"

    def save(self, model_dir: Path) -> None:
        (model_dir / CONFIG_FILE).write_text(self.to_json())

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(
                name=str(raw["name"]),
                platform=str(raw["platform"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in raw["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in raw["outputs"]),
                class_labels=tuple(str(label) for label in raw["class_labels"]),
                max_batch_size=int(raw.get("max_batch_size", 64)),
                max_queue_delay_ms=float(raw.get("max_queue_delay_ms", 0.0)),
                instance_count=int(raw.get("instance_count", 1)),
                inline_max_us=_optional_us(raw.get("inline_max_us"), "inline_max_us"),
                source_run=str(raw.get("source_run", "")),
                test_accuracy=raw.get("test_accuracy"),
                provenance=Provenance.from_dict(raw.get("extra", {})),
                version_policy=VersionPolicy.from_config(raw.get("version_policy")),
            )
        except FileNotFoundError:
            raise CnnserveError(f"{path} is missing; re-export with 'cnnserve export'") from None
        except CnnserveError as error:
            raise CnnserveError(f"{path}: {error}") from None
        except OSError as error:  # a directory, no permission, an I/O error
            raise CnnserveError(f"cannot read {path}: {error.strerror or error}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise CnnserveError(f"{path} is damaged ({error}); re-export the model") from None


def _optional_us(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CnnserveError(f"{key}: expected a number of microseconds, received {value!r}")
    return float(value)


# Version folders: positive integers in ASCII digits ("²" passes str.isdigit() but not int()).
VERSION_DIR_PATTERN = re.compile(r"[1-9][0-9]{0,17}")


def model_versions(model_dir: Path) -> list[int]:
    """Version sub-directories (positive integers), ascending, as Triton numbers them."""
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if VERSION_DIR_PATTERN.fullmatch(child.name) and child.is_dir()
    )
