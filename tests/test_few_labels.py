"""Tests of aerialkd.few_labels: the label subset, its datasets, the step budget.

The tiny dataset has 18 training images in three tiles, of 16, 30 and 24 patches of
32x32 each (420 patches): a quarter of them is 105 patches and a quarter of the images
rounds to 4.
"""

import collections
import dataclasses
import itertools

import keras
import numpy as np
import pytest

import utils


@pytest.fixture(scope="module")
def chosen(tiny_data):
    return utils.label_subset(tiny_data)


def test_label_subset_takes_one_image_per_tile_and_a_second_where_it_comes_closest(
        tiny_data, chosen):
    tiles = collections.Counter(name.split("/")[0] for name in chosen)
    # one per tile is 16 + 30 + 24 = 70 patches; a second from Tile 1, 2 or 3 makes
    # 86, 100 or 94, and 100 is the closest to 105
    assert tiles == {"Tile 1": 1, "Tile 2": 2, "Tile 3": 1}
    assert utils.labelled_patches(tiny_data, chosen).sum() == 100
    assert chosen == [n for n in tiny_data.sources["train"] if n in chosen]  # the data's order
    assert utils.label_subset(tiny_data) == chosen  # fixed by the seed
    two = utils.label_subset(tiny_data, n_images=2)  # fewer images than tiles
    assert [n.split("/")[0] for n in two] == ["Tile 1", "Tile 2"] and set(two) <= set(chosen)


def _tiles(tiny_data, n_tiles, per_tile, seed):
    """`tiny_data` renamed to `n_tiles` tiles of `per_tile` training images of random sizes."""
    rng = np.random.default_rng(seed)
    names = [f"Tile {t}/image_{i}" for t in range(n_tiles) for i in range(per_tile)]
    sizes = [tuple(int(v) for v in rng.integers(32, 200, 2)) for _ in names]
    return dataclasses.replace(tiny_data, sources={**tiny_data.sources, "train": names},
                               image_sizes={**tiny_data.image_sizes, "train": sizes})


@pytest.mark.parametrize("seed", range(6))
def test_label_subset_picks_the_seconds_that_trying_every_pick_would(tiny_data, seed):
    data = _tiles(tiny_data, n_tiles=7, per_tile=3, seed=seed)
    counts = {name: (h // 32) * (w // 32)
              for name, (h, w) in zip(data.sources["train"], data.image_sizes["train"])}
    tile = lambda name: name.split("/")[0]  # noqa: E731
    firsts = {tile(n): n for n in utils.label_subset(data, n_images=7, seed=seed)}
    seconds = {tile(n): n for n in utils.label_subset(data, n_images=14, seed=seed)
               if n not in firsts.values()}
    extra, target = 1 + seed % 4, sum(counts.values()) / 4
    best = min(itertools.combinations(seconds, extra),  # the first closest, in tile order
               key=lambda pick: abs(sum(counts[n] for n in firsts.values())
                                    + sum(counts[seconds[t]] for t in pick) - target))
    expected = {*firsts.values(), *(seconds[t] for t in best)}
    assert utils.label_subset(data, n_images=7 + extra, seed=seed) == [
        n for n in data.sources["train"] if n in expected]


def test_label_subset_of_many_tiles_is_quick(tiny_data):
    data = _tiles(tiny_data, n_tiles=40, per_tile=7, seed=0)  # C(40, 30): 8.5e8 picks
    chosen = utils.label_subset(data)
    assert len(chosen) == 70 and len({n.split("/")[0] for n in chosen}) == 40


def test_label_subset_of_a_flat_folder_draws_images_with_the_seed(tiny_data):
    flat = dataclasses.replace(tiny_data, sources={
        **tiny_data.sources, "train": [n.replace("/", "_") for n in tiny_data.sources["train"]]})
    picks = [utils.label_subset(flat, n_images=5, seed=s) for s in (0, 0, 1)]
    assert len(picks[0]) == 5 and picks[0] == picks[1] != picks[2]


def test_the_datasets_of_the_few_labels_arms(tiny_data, chosen):
    keep = utils.labelled_patches(tiny_data, chosen)
    few = utils.only_labelled(tiny_data, chosen)
    assert few.sources["train"] == chosen and len(few.files["train"]) == len(chosen)
    assert few.files["train"] == [f for n, f in zip(tiny_data.sources["train"],
                                                    tiny_data.files["train"]) if n in chosen]
    np.testing.assert_array_equal(few.x_train, tiny_data.x_train[keep])
    np.testing.assert_array_equal(few.y_train, tiny_data.y_train[keep])
    assert few.x_val is tiny_data.x_val and few.y_test is tiny_data.y_test
    assert utils.labelled_patches(few, chosen).all()  # its images still match its patches
    before = tiny_data.y_train.copy()
    masked = utils.unlabelled_elsewhere(tiny_data, chosen)
    assert masked.x_train is tiny_data.x_train  # every image, for the KD term
    np.testing.assert_array_equal(masked.y_train[keep], tiny_data.y_train[keep])
    assert (masked.y_train[~keep] == utils.IGNORE_INDEX).all()
    np.testing.assert_array_equal(tiny_data.y_train, before)  # the original is untouched


def test_bad_subsets_and_datasets_are_refused_with_what_to_do(tiny_data, chosen):
    with pytest.raises(ValueError, match=r"not training images.*Tile 9/nowhere"):
        utils.only_labelled(tiny_data, [*chosen, "Tile 9/nowhere"])
    with pytest.raises(ValueError, match="chosen is empty"):
        utils.unlabelled_elsewhere(tiny_data, [])
    with pytest.raises(ValueError, match="n_images must be between 1 and the 18.*got 19"):
        utils.label_subset(tiny_data, n_images=19)
    for n_images in (0, 2.0, True):  # a float sliced nothing, True counted as 1
        with pytest.raises(ValueError, match=f"n_images must be an int >= 1, got {n_images}"):
            utils.label_subset(tiny_data, n_images=n_images)
    with pytest.raises(TypeError, match=r"chosen must be a list of training image names, got "
                                        r"the string 'Tile 1/image_part_001'; pass \["):
        utils.only_labelled(tiny_data, "Tile 1/image_part_001")
    with pytest.raises(ValueError, match="one or two images per tile, at most 6 here"):
        utils.label_subset(tiny_data, n_images=7)  # three tiles
    with pytest.raises(ValueError, match="do not match the training images"):
        utils.labelled_patches(dataclasses.replace(tiny_data, x_train=tiny_data.x_train[1:]),
                               chosen)
    streamed = dataclasses.replace(tiny_data, x_train=None, y_train=None)
    for make in (utils.only_labelled, utils.unlabelled_elsewhere):
        with pytest.raises(ValueError, match=r"in_memory=True"):
            make(streamed, chosen)


def test_pseudo_labels_replace_the_masks_of_the_unlabelled_images_only(tiny_data, chosen):
    keep = utils.labelled_patches(tiny_data, chosen)
    predicted = (tiny_data.y_train.astype(np.int64) + 1) % 3  # any class map unlike the masks
    predicted[0, 0, 0] = utils.IGNORE_INDEX  # a pixel left out stays left out
    before = tiny_data.y_train.copy()
    pseudo = utils.pseudo_labelled(tiny_data, chosen, predicted)
    assert pseudo.x_train is tiny_data.x_train and pseudo.y_train.dtype == np.uint8
    np.testing.assert_array_equal(pseudo.y_train[keep], tiny_data.y_train[keep])
    np.testing.assert_array_equal(pseudo.y_train[~keep], predicted[~keep])
    assert not keep[0] and pseudo.y_train[0, 0, 0] == utils.IGNORE_INDEX
    np.testing.assert_array_equal(tiny_data.y_train, before)  # the original is untouched
    with pytest.raises(ValueError, match=r"one class map per training patch.*argmax"):
        utils.pseudo_labelled(tiny_data, chosen, predicted[1:])
    with pytest.raises(ValueError, match="must be class indices"):
        utils.pseudo_labelled(tiny_data, chosen, predicted.astype(np.float32))
    with pytest.raises(ValueError, match=r"outside the 6 classes \(e.g. 6\)"):
        utils.pseudo_labelled(tiny_data, chosen, np.where(keep[:, None, None], 0, 6) + 0 * predicted)
    with pytest.raises(ValueError, match=r"outside the 6 classes \(e.g. -1\)"):
        utils.pseudo_labelled(tiny_data, chosen, np.full_like(predicted, -1))


def test_matched_epochs_give_the_steps_of_the_reference_run():
    # the real data's 218 labelled of 870 training patches: 14 steps an epoch against 55
    assert utils.matched_epochs(100, 218, 870, batch_size=16) == 393  # 100 * 55 / 14 = 392.9
    assert utils.matched_epochs(100, 870, 870, batch_size=16) == 100
    assert utils.matched_epochs(10, 100, 420, batch_size=8) == 41  # 10 * 53 / 13 = 40.8
    with pytest.raises(ValueError, match="n_train must be an int >= 1, got 0"):
        utils.matched_epochs(100, 0, 870, batch_size=16)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 16.5"):
        utils.matched_epochs(3, 2, 870, batch_size=16.5)
    assert utils.matched_epochs(1, 1000, 100, batch_size=16) == 1  # 1 * 7 / 63: not 0 epochs


class _Started(Exception):
    pass


class _StopAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        raise _Started


@pytest.mark.parametrize("sampling", ["random", "consistent"])
def test_crops_from_the_masks_on_disk_refuse_a_dataset_whose_labels_were_replaced(
        tiny_data, chosen, tmp_path, sampling):
    # Random and consistent crops read labels from the masks on disk, which still
    # hold the 36 images' annotations that these datasets hide or replace.
    model = utils.compile_segmentation(utils.build_unet(2, augment=False))
    keep = utils.labelled_patches(tiny_data, chosen)
    masked = utils.unlabelled_elsewhere(tiny_data, chosen)
    pseudo = utils.pseudo_labelled(tiny_data, chosen, np.zeros_like(tiny_data.y_train))
    by_hand = dataclasses.replace(tiny_data, y_train=pseudo.y_train)  # no record of it
    for data in (masked, pseudo):
        with pytest.raises(ValueError, match=rf"{sampling}.*changed in memory.*sampling='grid'"):
            utils.fit_segmentation(model, data, epochs=1, output_dir=tmp_path, name="m",
                                   sampling=sampling)
    n = int((by_hand.y_train != tiny_data.y_train).reshape(len(keep), -1).any(1).sum())
    with pytest.raises(ValueError, match=rf"{sampling}.*{n} of the 420 patches of "
                                         rf"data.y_train differ.*sampling='grid'"):
        utils.fit_segmentation(model, by_hand, epochs=1, output_dir=tmp_path, name="m",
                               sampling=sampling)
    assert not (tmp_path / "m.keras").exists()
    for data in (tiny_data, utils.only_labelled(tiny_data, chosen)):  # masks and patches agree
        with pytest.raises(_Started):
            utils.fit_segmentation(model, data, epochs=1, output_dir=tmp_path, name="m",
                                   sampling=sampling, callbacks=[_StopAtStart()])


def test_the_files_of_relabelled_training_images_are_not_read_again(tiny_data, chosen):
    for data in (utils.unlabelled_elsewhere(tiny_data, chosen),
                 utils.pseudo_labelled(tiny_data, chosen, np.zeros_like(tiny_data.y_train))):
        assert data.relabelled == ("train",)
        for read in (data.whole_images, data.stream):
            with pytest.raises(ValueError, match=r"train labels of this dataset were changed"):
                read("train")
        assert len(data.stream("val")) and len(data.whole_images("test")[0])  # unchanged
    assert utils.only_labelled(tiny_data, chosen).relabelled == ()  # its masks are its labels
