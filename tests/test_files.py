"""Tests of `aerialkd.files`: dataset layouts, image/mask pairs, reading and cutting them."""

import numpy as np
import pytest

import utils
from helpers import OWN_PALETTE, block_labels, load_flat, write_flat, write_pair


@pytest.mark.parametrize("folders", [("images", "masks"), ("image", "mask")])
def test_flat_layouts_pair_images_and_masks_by_stem(tmp_path, folders):
    labels = write_flat(tmp_path, n=3, folders=folders)
    pairs = utils.find_pairs(tmp_path)
    assert [name for name, _, _ in pairs] == ["a0", "a1", "a2"]
    assert all(i.parent.name == folders[0] and m.parent.name == folders[1] for _, i, m in pairs)
    data = load_flat(tmp_path)
    expected = np.concatenate([utils.cut_patches(labels[s], 16) for s in ("a0", "a1", "a2")])
    np.testing.assert_array_equal(data.y_train, expected)


def test_any_case_of_extension_is_read(tmp_path):
    for i, (image_ext, mask_ext) in enumerate([(".JPG", ".PNG"), (".tif", ".TIFF"),
                                               (".jpeg", ".png"), (".PNG", ".tif")]):
        write_pair(tmp_path, f"a{i}", block_labels(16, 16, i), image_ext=image_ext, mask_ext=mask_ext)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert [name for name, _, _ in utils.find_pairs(tmp_path)] == ["a0", "a1", "a2", "a3"]
    assert len(load_flat(tmp_path).y_train) == 4


def test_an_image_without_a_mask_is_an_error_naming_it(tmp_path):
    write_flat(tmp_path, n=2)
    (tmp_path / "masks" / "a1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/a1\.jpg has no mask"):
        utils.find_pairs(tmp_path)


def test_a_mask_without_an_image_is_an_error_naming_it(tmp_path):
    write_flat(tmp_path, n=2)
    (tmp_path / "images" / "a0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/a0\.png has no image"):
        utils.find_pairs(tmp_path)


def test_a_mask_of_another_size_is_an_error_naming_the_files_and_both_sizes(tmp_path):
    labels = block_labels(32, 48, seed=0)
    write_pair(tmp_path, "a", labels, mask=utils.labels_to_rgb(labels[:16, :24], OWN_PALETTE))
    with pytest.raises(ValueError, match=r"images/a\.jpg is 48x32 but its mask .*masks/a\.png "
                                         r"is 24x16.*resize_masks=True"):
        load_flat(tmp_path)


def test_resize_masks_samples_nearest_neighbours_and_counts_them(tmp_path, capsys):
    small = block_labels(16, 24, seed=3)
    small[0, 0], small[0, 1] = 0, 2  # neighbours whose blend would be a new colour
    write_pair(tmp_path, "a", np.kron(small, np.ones((2, 2), np.uint8)),
           mask=utils.labels_to_rgb(small, OWN_PALETTE))  # the mask at half scale
    write_pair(tmp_path, "b", block_labels(32, 48, seed=4))
    data = load_flat(tmp_path, resize_masks=True)
    assert data.resized_masks == 1
    assert "rescaled 1 of 2 masks" in capsys.readouterr().out
    # each mask pixel becomes a 2x2 block: no colour between two classes appears
    np.testing.assert_array_equal(data.y_train[:6], utils.cut_patches(
        np.kron(small, np.ones((2, 2), np.uint8)), 16))


@pytest.mark.parametrize("mask_size, refused", [
    ((24, 16), False), ((25, 16), False), ((97, 65), False), ((24, 32), True), ((30, 16), True)])
def test_resize_masks_refuses_a_mask_of_another_aspect_by_name(tmp_path, mask_size, refused):
    write_pair(tmp_path, "a", block_labels(32, 48, seed=4),
               mask=np.zeros((mask_size[1], mask_size[0], 3), np.uint8))  # 48x32 image
    write_pair(tmp_path, "b", block_labels(32, 48, seed=5))
    if not refused:  # the image at another scale, to within rounding
        assert load_flat(tmp_path, resize_masks=True).resized_masks == 1
        return
    with pytest.raises(ValueError, match=rf"Mask .*masks/a\.png is {mask_size[0]}x{mask_size[1]} "
                                         rf".*images/a\.jpg 48x32: not the image at another "
                                         rf"scale"):
        load_flat(tmp_path, resize_masks=True)


def test_cut_patches_crops_to_multiples_and_keeps_order():
    array = np.arange(70 * 100).reshape(70, 100)
    patches = utils.cut_patches(array, 32)
    assert patches.shape == (2 * 3, 32, 32)
    assert np.array_equal(patches[1], array[:32, 32:64])  # rows first
    assert np.array_equal(patches[3], array[32:64, :32])


def test_download_dataset_accepts_a_zip(tiny_root, tmp_path):
    import shutil

    archive = shutil.make_archive(str(tmp_path / "aerial"), "zip", tiny_root.parent)
    older = tmp_path / "unpacked"  # already holds another dataset, in the flat layout
    (older / "images").mkdir(parents=True)
    (older / "masks").mkdir()
    root = utils.download_dataset(older, source=archive)
    assert root == older / utils.DATASET_DIRNAME and len(utils.find_pairs(root)) == 27
    mine = tmp_path / "mine"  # a flat dataset: images/ and masks/ at the top of its zip
    _, image, mask = utils.find_pairs(root)[0]
    for folder, path in (("images", image), ("masks", mask)):
        (mine / folder).mkdir(parents=True)
        shutil.copy(path, mine / folder / f"a{path.suffix}")
    flat = shutil.make_archive(str(tmp_path / "flat"), "zip", mine)
    with pytest.raises(ValueError, match=r"flat.zip unpacks 2 entries side by side.*"
                                         r"Pass an empty \(or new\) folder"):
        utils.download_dataset(older, source=flat)
    assert utils.download_dataset(tmp_path / "new", source=flat) == tmp_path / "new"


def test_importing_utils_touches_no_network():
    import subprocess
    import sys

    # a fresh interpreter where opening a connection or resolving a name raises
    code = ("import socket, sys\n"
            "def refuse(*args, **kwargs): raise AssertionError('network touched')\n"
            "socket.socket.connect = socket.socket.connect_ex = refuse\n"
            "socket.create_connection = socket.getaddrinfo = refuse\n"
            "import utils\n"
            "assert 'kagglehub' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=utils.REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_failed_kaggle_download_says_what_else_to_do(monkeypatch):
    kagglehub = pytest.importorskip("kagglehub")

    def offline(handle):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(RuntimeError, match=r"no route to host.*Internet.*source=.*SSSI_DATA"):
        utils.download_dataset()
