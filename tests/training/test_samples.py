import numpy as np
from PIL import Image

from cnnserve.training.data import load_dataset
from cnnserve.training.samples import main


def test_samples_are_the_test_images_pixel_for_pixel(tmp_path):
    assert main(["--dataset", "synthetic", "--count", "3", "--out", str(tmp_path)]) == 0
    paths = sorted(tmp_path.glob("*.png"))
    assert [p.name.split("_", 1)[0] for p in paths] == ["000", "001", "002"]
    test = load_dataset("synthetic", val_size=0).test
    for index, path in enumerate(paths):
        assert path.name.endswith(f"class_{test.labels[index]}.png")
        np.testing.assert_array_equal(np.asarray(Image.open(path)), test.images[index][..., 0])


def test_samples_missing_dataset_is_a_one_line_error(tmp_path, capsys):
    assert main(["--dataset", "mnist", "--out", str(tmp_path)]) == 2
    assert "MNIST needs --data-dir" in capsys.readouterr().err
