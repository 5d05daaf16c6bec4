"""Write a few real test images as PNG files, for `cnnserve classify` and the demo.

python -m cnnserve.training.samples --dataset fashion_mnist --count 6 --out runs/demo/samples
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from cnnserve.contracts.errors import CnnserveError
from cnnserve.training.data import DATASETS, class_names_for, load_dataset


def write_samples(dataset: str, count: int, out: Path, data_dir: Path | None = None) -> list[Path]:
    """The first `count` test images as `<index>_<label>.png`; returns their paths."""
    test = load_dataset(dataset, data_dir, val_size=0).test
    names = class_names_for(dataset)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(test))):
        image = test.images[index]
        label = names[test.labels[index]].replace("/", "-").replace(" ", "_")
        path = out / f"{index:03d}_{label}.png"
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=DATASETS)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        paths = write_samples(args.dataset, args.count, args.out, args.data_dir)
    except CnnserveError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} test images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
