"""Users' image folders as they come: 8- and 16-bit files side by side, class folders with
sub-folders, empty class folders among bad files, ImageFolder split folders, images past
Pillow's limit, and pictures of predictions drawn from large photos."""

import json
import re
import warnings

import numpy as np
import pytest
from cnnsuite.tasks.detection2d.datamodule import DetectionDataModule
from cnnsuite.tasks.localization2d.datamodule import LocalizationDataModule
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from conftest import fit, make_image_folder
from PIL import Image
from test_limits import bomb_png, png_chunk

from cnnsuite.cli import main
from cnnsuite.data import BadFileError, image_size, read_image
from cnnsuite.data.images import PICTURE_SIDE
from cnnsuite.data.limits import ENV
from cnnsuite.errors import ConfigError


def gradient(height, width, top, dtype):
    """A left-to-right ramp from 0 to ``top``."""
    return np.tile(np.linspace(0, top, width), (height, 1)).astype(dtype)


def write_mixed_depth_folder(root):
    """Two classes, each holding 8-bit PNG and JPEG and 16-bit grey PNG and TIFF files (as
    Pillow writes them: mode ``I;16``); class ``bright`` is bright on the left."""
    for name in ("dark", "bright"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            ramp8, ramp16 = gradient(24, 30, 255, np.uint8), gradient(24, 30, 65535, np.uint16)
            if name == "bright":
                ramp8, ramp16 = ramp8[:, ::-1].copy(), ramp16[:, ::-1].copy()
            Image.fromarray(ramp8).convert("RGB").save(root / name / f"{i}.png")
            Image.fromarray(ramp8).save(root / name / f"{i}.jpg")
            Image.fromarray(ramp16).save(root / name / f"{i}_16.png")
            Image.fromarray(ramp16).save(root / name / f"{i}_16.tif")
    return root


def test_16_bit_images_are_scaled_by_their_full_range(tmp_path):
    """Every format reads to one float range, [0, 1]: 65535 is 1 in a 16-bit PNG or TIFF,
    32768 about one half (a 16-bit TIFF made 8-bit by Pillow is clipped at 255)."""
    values = np.array([[0, 255, 32768, 65535]], np.uint16)
    for suffix in ("png", "tif"):
        Image.fromarray(values).save(tmp_path / f"g.{suffix}")
        for channels in (1, 3):
            image = read_image(tmp_path / f"g.{suffix}", channels)
            assert image.dtype.is_floating_point and image.shape == (channels, 1, 4)
            np.testing.assert_allclose(image[0, 0].numpy(), values[0] / 65535, atol=1e-6)
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "g8.png")
    np.testing.assert_allclose(read_image(tmp_path / "g8.png", 1)[0, 0].numpy(), [0.0, 1.0])


def test_32_bit_images_read_within_16_bits_or_are_named(tmp_path):
    """A 32-bit integer TIFF holding 16-bit values reads as the 16-bit file would; one past that
    range, or a floating-point TIFF (no range to scale from), is an error naming it, where
    Pillow's convert() clipped both to 0..255 (a [0, 1] float image read as black)."""
    values = np.array([[0, 255, 32768, 65535]])
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")
    np.testing.assert_allclose(read_image(tmp_path / "i32.tif", 1)[0, 0].numpy(), values[0] / 65535, atol=1e-6)
    Image.fromarray((values * 2).astype(np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(BadFileError, match=r"wide.tif: 32-bit integer pixels from 0 to 131070, outside the 16-bit"):
        read_image(tmp_path / "wide.tif", 1)
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(BadFileError, match=r"f.tif: floating-point pixels \(Pillow mode F\)"):
        read_image(tmp_path / "f.tif", 3)


def test_a_png_whose_image_data_is_short_is_an_error_naming_it(tmp_path):
    """A PNG whose header declares more pixels than its data holds (a cut download, a hand-made
    upload) is an error naming the file: torchvision's PNG decoder ends the process on it."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    short = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + png_chunk(b"IEND", b"")
    (tmp_path / "short.png").write_bytes(b"\x89PNG\r\n\x1a\n" + short)
    with pytest.raises(BadFileError, match=r"short.png: cannot decode as an image \(image file is truncated"):
        read_image(tmp_path / "short.png", 3)


def test_an_animated_gif_is_its_first_frame(tmp_path):
    """torchvision decodes every frame of a GIF; the image is the first, as viewers and Pillow show it."""
    frames = [Image.fromarray(np.full((6, 5), value, np.uint8)) for value in (0, 255, 128)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    image = read_image(tmp_path / "a.gif", 3)
    assert image.shape == (3, 6, 5) and float(image.max()) == 0.0


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".jpg", ".bmp", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_format_is_read_in_the_channels_asked_for(tmp_path, suffix, channels):
    """torchvision keeps GIF and WebP in colour when asked for gray: a gray model's batch of
    them and PNGs failed to stack, and predict and serve fed them to its first convolution.
    Each format reads as Pillow converts it (JPEG within its decoders' rounding)."""
    y, x = np.mgrid[:12, :10]
    colours = np.stack([20 * y, 25 * x, 240 - 10 * (x + y)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    Image.fromarray(colours).save(tmp_path / f"a{suffix}", lossless=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*grayscale")  # torchvision's, of a conversion it does not do
        image = read_image(tmp_path / f"a{suffix}", channels)
    with Image.open(tmp_path / f"a{suffix}") as pillow:
        expected = np.array(pillow.convert("L" if channels == 1 else "RGB")).reshape(12, 10, channels)
    assert image.shape == (channels, 12, 10)
    found = (image.permute(1, 2, 0) * 255).round().numpy().astype(int)
    assert np.abs(found - expected).max() <= (2 if suffix == ".jpg" else 0)


def test_8_and_16_bit_images_in_one_folder_train_evaluate_and_predict(tmp_path):
    folder = write_mixed_depth_folder(tmp_path / "images")
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(folder), "--data.batch_size", "32",
              "--trainer.max_epochs", "1")  # fmt: skip
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["test/acc"] >= 0
    out = tmp_path / "predictions"
    main(["predict", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--input", str(folder), "--out", str(out)])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 32 and all("error" not in line for line in lines)


@pytest.mark.parametrize(
    "datamodule, input_shape",
    [
        (RecognitionDataModule, (3, 32, 32)),
        (LocalizationDataModule, (3, 64, 64)),
        (DetectionDataModule, (3, 1500, 2400)),  # the detector resizes inside itself
    ],
)
def test_a_picture_is_drawn_from_a_copy_the_size_of_the_picture(tmp_path, datamodule, input_shape):
    """A large photo is read once for the network; the picture of its prediction gets a copy
    no larger than a picture, so memory does not follow the photo's size."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2400, 3), np.uint8)).save(tmp_path / "p.jpg")
    datamodule = datamodule(channels=3)
    item = datamodule.read_input(tmp_path / "p.jpg")
    assert item.meta == {"width": 2400, "height": 1500}
    assert item.sample.shape == input_shape
    assert item.view.shape == (3, PICTURE_SIDE * 1500 // 2400, PICTURE_SIDE)


def test_images_in_sub_folders_of_a_class_folder_are_samples(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=4)
    (folder / "cat" / "more_scans" / "deeper").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (20, 20), 200).save(folder / "cat" / "more_scans" / f"s{i}.png")
    Image.new("L", (20, 20), 200).save(folder / "cat" / "more_scans" / "deeper" / "d.png")
    (folder / "cat" / ".hidden").mkdir()
    Image.new("L", (20, 20), 200).save(folder / "cat" / ".hidden" / "h.png")
    datamodule = RecognitionDataModule(data_dir=str(folder))
    samples = dict(datamodule.list_samples())
    assert len(samples) == 16 and samples["cat/more_scans/deeper/d.png"] == 0
    datamodule.setup("fit")
    assert sum(len(datamodule.datasets[s]) for s in ("train", "val", "test")) == 16


def test_an_empty_class_folder_is_reported_with_every_bad_file(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=3)
    (folder / "eel").mkdir()
    (folder / "zebra").mkdir()
    (folder / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(BadFileError) as raised:
        RecognitionDataModule(data_dir=str(folder)).setup("fit")
    message = str(raised.value)
    assert "eel: class folder holds no file" in message and "zebra: class folder holds no file" in message
    assert "broken.png" in message


def test_too_few_images_to_split_names_the_folder(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=1)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(folder))}: 2 samples: too few to split") as raised:
        RecognitionDataModule(data_dir=str(folder)).setup("fit")
    assert "\n" not in str(raised.value)

    # a train folder with no val folder beside it: validation is drawn from train, which one image cannot give
    split = tmp_path / "split"
    make_image_folder(split / "train", classes=("cat",), per_class=1)
    make_image_folder(split / "test", classes=("cat",), per_class=2)
    expected = rf"^{re.escape(str(split / 'train'))}: 1 sample: too few to draw validation from \(data.val_fraction 0.1"
    with pytest.raises(ConfigError, match=expected):
        RecognitionDataModule(data_dir=str(split)).setup("fit")


def write_split_folders(root, stages=("train", "val")):
    for stage in stages:
        make_image_folder(root / stage, classes=("cat", "dog"), per_class=6 if stage == "train" else 3)
    return root


def test_imagefolder_split_folders_are_read_as_splits(tmp_path):
    folder = write_split_folders(tmp_path / "images", ("train", "val", "test"))
    datamodule = RecognitionDataModule(data_dir=str(folder))
    assert datamodule.class_names == ["cat", "dog"]
    datamodule.setup("fit")
    assert {s: len(ids) for s, ids in datamodule.splits.items()} == {"train": 12, "val": 6, "test": 6}
    assert all(i.startswith("val/") for i in datamodule.splits["val"])
    assert [label for _, label in datamodule.datasets["test"]] == [0, 0, 0, 1, 1, 1]


def test_split_folders_without_test_use_val_as_test_and_say_so_once(tmp_path):
    folder = write_split_folders(tmp_path / "images")
    datamodule = RecognitionDataModule(data_dir=str(folder), val_fraction=0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datamodule.setup("fit")
    said = [str(w.message) for w in caught if "test" in str(w.message) and "val" in str(w.message)]
    assert len(said) == 1 and "val" in said[0], said
    splits = datamodule.splits
    assert sorted(splits["test"]) == sorted(f"val/{c}/{i}.{e}" for c in ("cat", "dog") for i, e in
                                            zip(range(3), ("png", "jpg", "png"), strict=True))  # fmt: skip
    assert len(splits["val"]) == 3 and len(splits["train"]) == 9
    assert all(i.startswith("train/") for i in splits["train"] + splits["val"])


def test_split_folders_in_any_letter_case_carve_validation_by_the_data_seed(tmp_path):
    """``Train``/``Val`` folders are split folders as ``train``/``val`` are, and the validation
    carved from the training folder is drawn by ``data.seed``: another seed, other samples."""
    folder = tmp_path / "images"
    for stage, per_class in (("Train", 12), ("Val", 3)):
        make_image_folder(folder / stage, classes=("cat", "dog"), per_class=per_class)
    carved = {}
    for seed in (0, 1, 2):
        datamodule = RecognitionDataModule(data_dir=str(folder), val_fraction=0.25, seed=seed)
        assert datamodule.class_names == ["cat", "dog"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            datamodule.setup("fit")
        assert all(i.startswith("Val/") for i in datamodule.splits["test"])
        carved[seed] = tuple(datamodule.splits["val"])
    assert len(set(carved.values())) > 1


def test_split_folders_train_through_the_cli(tmp_path):
    folder = write_split_folders(tmp_path / "images")
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(folder), "--trainer.max_epochs", "1")
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["test"]) == 6 and all(i.startswith("val/") for i in splits["test"])
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["test/acc"] >= 0


def test_pillows_own_limit_follows_the_pixel_limit(tmp_path, monkeypatch):
    """Within the limit, Pillow does not warn of a "decompression bomb" (its own limit is
    ours); past it the file is named as a bad file, and ``skip`` says it was skipped."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    wide = tmp_path / "wide.png"
    wide.write_bytes(bomb_png(10_000, 9_500))  # 95 M pixels: over Pillow's 89 M, under 1e8
    monkeypatch.setenv(ENV, "1e8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert image_size(wide) == (10_000, 9_500)
    folder = make_image_folder(tmp_path / "images", per_class=4)
    (folder / "cat" / "big.png").write_bytes(wide.read_bytes())
    monkeypatch.setenv(ENV, "9e7")
    with pytest.raises(BadFileError, match=r"big.png: declares 10000x9500 = 95,000,000 pixels, over the limit"):
        RecognitionDataModule(data_dir=str(folder)).setup("fit")
    datamodule = RecognitionDataModule(data_dir=str(folder), on_bad_file="skip")
    with pytest.warns(UserWarning, match=r"(?s)skipping 1 of .*big.png: declares 10000x9500"):
        datamodule.setup("fit")
        [len(datamodule.datasets[s]) for s in ("train", "val", "test")]


def test_the_export_words_for_reading_as_gray_give_read_images_values(tmp_path):
    """A colour JPEG read as gray is libjpeg's grayscale, up to a few levels from Pillow's
    ``convert("L")`` that a program told only "as gray" would use; other files are Pillow's
    ``convert("L")``. The words say which, and followed with Pillow they give read_image's values."""
    from cnnsuite.data.images import describe_read

    words = describe_read(1)
    assert "image.draft('L', image.size)" in words and "convert('L')" in words
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "c.jpg", quality=85)
    Image.fromarray(np.dstack([colour, colour[..., :1]])).save(tmp_path / "c.png")
    for name in ("c.jpg", "c.png"):
        image = Image.open(tmp_path / name)
        if image.format == "JPEG":
            image.draft("L", image.size)
        expected = np.array(image.convert("L"), np.float32) / 255
        np.testing.assert_allclose(read_image(tmp_path / name, 1)[0].numpy(), expected, atol=1e-6)  # no level apart


def test_files_of_any_extension_case_are_listed_and_a_linked_folder_is_not_entered(tmp_path):
    """A camera's ``IMG_1.JPG`` is an image like ``img_1.jpg``; a link to a folder is listed, not
    entered (a link to a folder above it would loop)."""
    from cnnsuite.data.folders import list_files

    folder = make_image_folder(tmp_path / "images", classes=("cat",), per_class=2)
    (folder / "cat" / "0.png").rename(folder / "cat" / "IMG_0.PNG")
    (folder / "cat" / "up").symlink_to(folder, target_is_directory=True)
    assert [p.name for p in list_files(folder / "cat", (".png", ".jpg"))] == ["1.jpg", "IMG_0.PNG"]
