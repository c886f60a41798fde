"""Bad input gets a clear, early error that names the file or argument."""

import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import utils


@pytest.fixture
def root(tmp_path):
    """A one-tile dataset of two 64x64 images to break in each test."""
    return utils.make_tiny_dataset(tmp_path / "d", tile_sizes=((64, 64),), images_per_tile=2)


def _load(root, **kwargs):
    return utils.load_dataset(root, patch_size=32, test_parts=(), val_per_tile=0, **kwargs)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*download_dataset"):
        _load(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected the Kaggle layout.*empty folder"):
        _load(tmp_path)


def test_folder_in_another_layout(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "a.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"Tile N/images/\*\.jpg.*found \['pictures'\]"):
        _load(tmp_path)


def test_dataset_found_below_the_given_folder(root):
    assert len(_load(root.parent.parent).x_train) == 2 * 4


def test_two_datasets_below_the_given_folder_are_named_not_one_taken(tmp_path):
    for name in ("train", "val"):
        utils.make_custom_dataset(tmp_path / name, n_images=2, size=(64, 64))
    with pytest.raises(ValueError, match=r"holds 2 datasets, \['train', 'val'\]: pass the "
                                         r"folder of one of them"):
        utils.find_dataset_root(tmp_path)


def test_a_macs_copy_of_the_dataset_in_its_zip_is_not_a_second_dataset(root):
    shutil.copytree(root, root.parent / "__MACOSX" / root.name)
    assert utils.find_dataset_root(root.parent) == root


def test_images_in_a_sub_folder_are_named_not_left_out(tmp_path):
    root = utils.make_custom_dataset(tmp_path / "d", n_images=4, size=(64, 64))
    image = sorted((root / "images").iterdir())[0]
    (root / "images" / "batch2").mkdir()
    image.rename(root / "images" / "batch2" / image.name)
    (root / "images" / ".ipynb_checkpoints").mkdir()  # hidden folders are not data
    with pytest.raises(ValueError, match=r"batch2 holds images, and .*images is read "
                                         r"without its sub-folders"):
        utils.load_dataset(root, patch_size=32, classes=root / "classes.json")


def test_image_without_its_mask(root):
    (root / "Tile 1" / "masks" / "image_part_002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_part_002\.jpg has no mask"):
        _load(root)


def test_mask_without_its_image(root):
    (root / "Tile 1" / "images" / "image_part_002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_part_002\.png has no image"):
        _load(root)


def test_image_and_mask_of_different_sizes(root):
    mask = root / "Tile 1" / "masks" / "image_part_001.png"
    Image.open(mask).crop((0, 0, 60, 64)).save(mask)
    with pytest.raises(ValueError, match=r"image_part_001\.jpg is 64x64 but its mask .* is 60x64"):
        _load(root)


def test_truncated_image(root):
    image = root / "Tile 1" / "images" / "image_part_001.jpg"
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"Cannot read .*image_part_001\.jpg.*truncated"):
        _load(root)


def test_an_image_past_pillows_pixel_limit_is_named(root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # refused past twice this
    with pytest.raises(ValueError, match=r"image_part_\d+\.jpg has more pixels than Pillow "
                                         r"opens by default.*MAX_IMAGE_PIXELS = None"):
        _load(root)


def _png_16_bit(path, rgb):
    """A 48-bit RGB PNG (Pillow writes none), written by hand."""
    height, width, _ = rgb.shape
    rows = b"".join(b"\0" + rgb[r].astype(">u2").tobytes() for r in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_colours_of_more_than_8_bits_are_refused_not_cut_to_their_high_byte(root):
    mask = root / "Tile 1" / "masks" / "image_part_001.png"
    _png_16_bit(mask, np.asarray(Image.open(mask).convert("RGB")).astype(np.uint16))
    assert Image.open(mask).mode == "RGB"  # what Pillow makes of it: every value 0 here
    with pytest.raises(ValueError, match=r"image_part_001\.png: mask is RGB of more than 8 "
                                         r"bits a colour \(mode RGB;16B\).*Rescale it to "
                                         r"0\.\.255"):
        _load(root)


def test_greyscale_mask_is_refused(root):
    mask = root / "Tile 1" / "masks" / "image_part_001.png"
    Image.open(mask).convert("L").save(mask)
    with pytest.raises(ValueError, match=r"image_part_001\.png: mask is greyscale"):
        _load(root)


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_a_16_bit_or_float_image_is_refused_not_clipped_to_white(root, mode):
    image = root / "Tile 1" / "images" / "image_part_001.png"
    (root / "Tile 1" / "images" / "image_part_001.jpg").unlink()
    values = np.linspace(0, 4000, 64 * 64).reshape(64, 64)
    Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.float32)).save(
        image.with_suffix(".tif"))
    with pytest.raises(ValueError, match=rf"image_part_001\.tif: image is .*mode {mode}.*"
                                         rf"8-bit"):
        _load(root)


def test_opaque_rgba_and_palette_masks_are_converted(root):
    before = _load(root).y_train
    masks = root / "Tile 1" / "masks"
    Image.open(masks / "image_part_001.png").convert("RGBA").save(masks / "image_part_001.png")
    Image.open(masks / "image_part_002.png").convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(masks / "image_part_002.png")
    assert np.array_equal(_load(root).y_train, before)


def test_transparent_mask_is_refused(root):
    mask = root / "Tile 1" / "masks" / "image_part_001.png"
    rgba = np.asarray(Image.open(mask).convert("RGBA")).copy()
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(mask)
    with pytest.raises(ValueError, match=r"image_part_001\.png: mask has transparent pixels \(1"):
        _load(root)


def test_colour_outside_the_palette(root):
    mask = root / "Tile 1" / "masks" / "image_part_002.png"
    rgb = np.asarray(Image.open(mask).convert("RGB")).copy()
    rgb[:2, :2] = (1, 2, 3)
    rgb[2:5, :2] = (9, 9, 9)
    Image.fromarray(rgb).save(mask)
    with pytest.raises(ValueError, match=r"image_part_002\.png: 2 colours outside the classes, "
                                         r"on 10 of its 4096 pixels \(0\.2%\); the most frequent: "
                                         r"\{'#090909': 6, '#010203': 4\}"):
        _load(root)


def test_a_mask_saved_as_jpeg_is_said_to_be_lossy(root):
    mask = root / "Tile 1" / "masks" / "image_part_002.png"
    Image.open(mask).convert("RGB").save(mask.with_suffix(".jpg"), quality=95)
    mask.unlink()
    with pytest.raises(ValueError, match=r"image_part_002\.jpg: \d+ colours .*lossy "
                                         r"compression \(JPEG\)"):
        _load(root)


def test_image_smaller_than_one_patch(root):
    with pytest.raises(ValueError, match=r"image_part_001\.jpg is 64x64, smaller than one 128x128 patch"):
        utils.load_dataset(root, patch_size=128, test_parts=())


def test_distiller_output_shape_mismatch():
    teacher = utils.build_unet(2, input_shape=(64, 64, 3))
    student = utils.build_unet(2, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="output shape .* differs from student output shape"):
        utils.Distiller(teacher=teacher, student=student)


def test_zip_that_is_not_a_zip(tmp_path):
    bogus = tmp_path / "data.zip"
    bogus.write_text("not a zip")
    with pytest.raises(ValueError, match=r"data\.zip is neither a folder nor a zip"):
        utils.download_dataset(tmp_path / "out", source=bogus)


def test_no_credentials_in_the_repository():
    patterns = ("KAGGLE_KEY=", "KAGGLE_KEY\"] =", "kaggle.json", "auth_token", "hf_")
    for path in utils.REPO_ROOT.rglob("*"):
        if path.suffix in (".py", ".ipynb", ".md", ".txt") and ".venv" not in path.parts \
                and "outputs" not in path.parts and path.name != "test_bad_input.py":
            text = path.read_text(errors="ignore")
            assert not any(p in text for p in patterns), path


@pytest.mark.parametrize("flags, message", [
    (["--sweep", "--kind", "pixel"], "--sweep chooses kind, alpha and temperature"),
    (["--sweep", "--teacher-ensemble"], "--sweep distils from the single teacher"),
    (["--sweep-kinds", "logits"], "invalid choice: 'logits'"),
    (["--tag", "x/8"], "--tag becomes part of file names"),
    (["--tag", "x8", "--sweep"], "--tag trains only the tagged distilled students"),
    (["--tag", "8x_ü"], "use ASCII letters, digits and _"),
    (["--tag", "x8", "--epochs", "5"], "can't change it: drop --epochs"),
    (["--tag", "x8"], "there is none: run scripts/experiment.py without --tag first"),
    (["--scratch"], "--scratch goes with --tag"),
    (["--epochs", "0"], "--epochs: must be a whole number of at least 1, got '0'"),
    (["--batch-size", "-2"], "--batch-size: must be a whole number of at least 1, got '-2'"),
    (["--learning-rate", "0"], "--learning-rate must be > 0, got 0.0"),
    (["--tag", "tf", "--scratch", "--alpha", "0.3"], "a student from scratch has no teacher"),
])
def test_experiment_refuses_contradictory_flags(flags, message, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import experiment

    with pytest.raises(SystemExit):
        experiment.main(["--profile", "tiny", "--output", "/nonexistent", *flags])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--epochs", "--repeats", "--train-images"])
def test_benchmark_refuses_a_count_below_one_naming_the_flag(flag, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import benchmark

    with pytest.raises(SystemExit):
        benchmark.main([flag, "0"])  # --epochs 0 failed in min() of no epoch
    assert f"{flag}: must be a whole number of at least 1, got '0'" in capsys.readouterr().err
