"""Tests of `aerialkd.scenes`: `segment_scene` and `polygonize` on small rasters, and
scripts/segment.py, their command line."""

import json
import re
import threading
import warnings

import keras
import numpy as np
import pytest

import aerialkd
import utils

rasterio = pytest.importorskip("rasterio")
from rasterio.errors import NotGeoreferencedWarning  # noqa: E402
from affine import Affine  # noqa: E402

CRS = "EPSG:32640"  # WGS 84 / UTM zone 40N, Dubai's
TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 2_800_000.0)  # 0.5 m pixels, top left


@pytest.fixture(scope="module")
def conv_model():
    """Two 3x3 convolutions: tiny, deterministic, and sees its neighbours."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.Conv2D(6, 3, padding="same")(x))


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(0)
    return utils.build_unet(4, name="tiny_unet")


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def _write_raster(path, pixels, crs=CRS, transform=TRANSFORM, **profile):
    """Writes `pixels` `(bands, H, W)` as a GeoTIFF; returns the path."""
    count, height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width,
                       count=count, dtype=pixels.dtype, crs=crs, transform=transform,
                       **profile) as dst:
        dst.write(pixels)
    return path


def _write_rgb(path, image, **profile):
    return _write_raster(path, np.moveaxis(image, -1, 0), **profile)


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(1), src


# -- segment_scene ----------------------------------------------------------


def test_segment_scene_keeps_the_crs_transform_and_size(tmp_path, conv_model):
    scene = _write_rgb(tmp_path / "scene.tif", _image(70, 90))
    utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32)
    labels, src = _read(tmp_path / "labels.tif")
    assert src.crs.to_epsg() == 32640
    assert src.transform == TRANSFORM
    assert labels.shape == (70, 90) == (src.height, src.width)


@pytest.mark.parametrize("cog", [False, True])
def test_segment_scene_keeps_the_ground_control_points_of_a_scene_without_a_transform(
        tmp_path, conv_model, cog):
    from rasterio.control import GroundControlPoint

    gcps = [GroundControlPoint(row, col, 500_000.0 + col / 2, 2_800_000.0 - row / 2)
            for row, col in [(0, 0), (0, 60), (40, 0), (40, 60)]]
    scene = _write_rgb(tmp_path / "scene.tif", _image(40, 60), transform=None, gcps=gcps)
    with rasterio.open(scene) as src:
        assert src.crs is None and src.transform.is_identity  # only the GCPs
    utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32, cog=cog)
    with rasterio.open(tmp_path / "labels.tif") as labels:
        written, crs = labels.gcps
    assert crs.to_epsg() == 32640
    assert [(p.row, p.col, p.x, p.y) for p in written] == [
        (p.row, p.col, p.x, p.y) for p in gcps]
    # no transform to put polygons on the map: pixel coordinates, and a warning says so
    with pytest.warns(UserWarning, match=r"labels.tif is georeferenced by ground control "
                                         r"points or RPCs alone.*pixel coordinates"):
        utils.polygonize(tmp_path / "labels.tif", tmp_path / "labels.geojson")
    collection = json.loads((tmp_path / "labels.geojson").read_text())
    assert "crs" not in collection
    corners = np.concatenate([f["geometry"]["coordinates"][0] for f in collection["features"]])
    assert corners.min(0).tolist() == [0, 0] and corners.max(0).tolist() == [60, 40]


def test_segment_scene_keeps_the_rpcs_of_a_scene(tmp_path, conv_model):
    from rasterio.rpc import RPC

    rpcs = RPC(height_off=0, height_scale=100, lat_off=25.3, lat_scale=0.1,
               long_off=57.0, long_scale=0.1, line_off=20, line_scale=20,
               samp_off=30, samp_scale=30,
               line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
               samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    scene = _write_rgb(tmp_path / "scene.tif", _image(40, 60), crs=None, transform=None,
                       rpcs=rpcs)
    utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32, cog=True)
    with rasterio.open(tmp_path / "labels.tif") as labels:
        written = labels.rpcs.to_dict()
    expected = {k: v for k, v in rpcs.to_dict().items() if v is not None}  # GDAL: -1 errors
    assert {k: written[k] for k in expected} == expected


def test_segment_scene_writes_uint8_classes_with_nodata_colormap_and_names(
        tmp_path, conv_model):
    scene = _write_rgb(tmp_path / "scene.tif", _image(300, 280))
    utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=64,
                        class_names=utils.CLASSES, palette=utils.PALETTE)
    with rasterio.open(tmp_path / "labels.tif") as src:
        assert src.count == 1 and src.dtypes == ("uint8",)
        assert src.nodata == 255
        assert src.profile["tiled"] and src.block_shapes == [(64, 64)]
        assert src.compression.value == "DEFLATE"
        colormap = src.colormap(1)
        tags = src.tags()
    assert colormap[2] == (*utils.PALETTE[2], 255)  # Road's colour
    assert json.loads(tags["CLASS_NAMES"]) == list(utils.CLASSES)
    assert tags["CLASS_0"] == "Building" and tags["CLASS_5"] == "Unlabeled"


@pytest.mark.parametrize("height, width, tile_size, overlap", [
    (300, 530, 64, None),  # not a multiple of the tile, six rows of tiles
    (40, 50, 64, 16),  # smaller than one tile: padded on both sides
    (129, 257, 64, 32),  # one pixel past whole strides: a last row, column of tiles
    (100, 96, 32, 0),  # no overlap
])
def test_segment_scene_equals_predict_image_exactly(tmp_path, unet, height, width,
                                                    tile_size, overlap):
    image = _image(height, width, seed=height)
    scene = _write_rgb(tmp_path / "scene.tif", image)
    utils.segment_scene(unet, scene, tmp_path / "labels.tif", tile_size=tile_size,
                        overlap=overlap, batch_size=5)
    expected = utils.predict_image(unet, image, tile_size=tile_size, overlap=overlap,
                                   batch_size=5)
    np.testing.assert_array_equal(_read(tmp_path / "labels.tif")[0], expected)


def test_segment_scene_counts_the_pixels_of_each_class(tmp_path, conv_model):
    scene = _write_rgb(tmp_path / "scene.tif", _image(90, 70))
    result = utils.segment_scene(conv_model, scene, tmp_path / "labels.tif",
                                 tile_size=32, class_names=utils.CLASSES)
    labels = _read(tmp_path / "labels.tif")[0]
    assert result["path"] == str(tmp_path / "labels.tif")
    assert (result["height"], result["width"]) == (90, 70)
    assert result["class_pixels"] == {name: int(np.sum(labels == i))
                                      for i, name in enumerate(utils.CLASSES)}
    assert result["nodata_pixels"] == 0


def test_segment_scene_reads_at_most_one_tile_of_rows_at_a_time(
        tmp_path, conv_model, monkeypatch):
    # Memory is bounded by the width: however tall the scene, no read (pixels
    # or masks) asks for more than tile_size rows, and GDAL's block cache is
    # held to 64 MiB, not its default of 5% of the memory, which would keep
    # every block read.
    reads, caches = [], []
    for name in ("_read_window", "_read_valid"):
        original = getattr(aerialkd.scenes, name)

        def record(src, bands, *args, original=original):
            start, stop = args[-2:]
            reads.append(stop - start)
            caches.append(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))
            return original(src, bands, *args)

        monkeypatch.setattr(aerialkd.scenes, name, record)
    scene = _write_rgb(tmp_path / "scene.tif", _image(1000, 40), nodata=0)
    utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32,
                        overlap=8)
    assert max(reads) <= 32
    # 1000 rows at stride 24: 42 rows of tiles, each read once, and, the scene
    # having nodata, 42 bands of masks.
    assert len(reads) == 42 + 42
    assert set(caches) == {64 * 2**20}


def test_segment_scene_reads_no_masks_of_a_scene_without_nodata(
        tmp_path, conv_model, monkeypatch):
    read = []
    monkeypatch.setattr(aerialkd.scenes, "_read_valid", lambda *args: read.append(args))
    scene = _write_rgb(tmp_path / "scene.tif", _image(100, 40))
    result = utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32)
    assert read == [] and result["nodata_pixels"] == 0


def test_segment_scene_writes_the_nodata_value_as_255(tmp_path, conv_model):
    image = _image(64, 80)
    image[10:20, 30:50] = 0  # nodata in every band: left out
    image[40, 5] = (0, 0, 7)  # one band holds data: a pixel like any other
    scene = _write_rgb(tmp_path / "scene.tif", image, nodata=0)
    result = utils.segment_scene(conv_model, scene, tmp_path / "labels.tif",
                                 tile_size=32)
    labels = _read(tmp_path / "labels.tif")[0]
    nodata = np.zeros(labels.shape, bool)
    nodata[10:20, 30:50] = True
    assert np.all(labels[nodata] == 255) and np.all(labels[~nodata] < 6)
    assert result["nodata_pixels"] == 10 * 20
    assert sum(result["class_pixels"].values()) == 64 * 80 - 200


def test_segment_scene_treats_a_transparent_alpha_band_as_nodata(tmp_path, conv_model):
    image = _image(50, 60)
    alpha = np.full((1, 50, 60), 255, np.uint8)
    alpha[0, :, :15] = 0
    pixels = np.concatenate([np.moveaxis(image, -1, 0), alpha])
    scene = _write_raster(tmp_path / "rgba.tif", pixels, photometric="RGB",
                          alpha="YES")
    utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32)
    labels = _read(tmp_path / "labels.tif")[0]
    assert np.all(labels[:, :15] == 255) and np.all(labels[:, 15:] < 6)
    # The alpha band is no input: the visible pixels are predict_image's.
    expected = utils.predict_image(conv_model, image, tile_size=32)
    np.testing.assert_array_equal(labels[:, 15:], expected[:, 15:])


def test_segment_scene_reads_the_bands_it_is_given(tmp_path, conv_model):
    image = _image(40, 48)
    nir = np.full((1, 40, 48), 99, np.uint8)
    pixels = np.concatenate([np.moveaxis(image, -1, 0)[::-1], nir])  # B, G, R, NIR
    scene = _write_raster(tmp_path / "bgrn.tif", pixels)
    utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32,
                        bands=(3, 2, 1))
    expected = utils.predict_image(conv_model, image, tile_size=32)
    np.testing.assert_array_equal(_read(tmp_path / "labels.tif")[0], expected)


def test_segment_scene_rescales_uint16_linearly_when_asked(tmp_path, conv_model):
    # rescale=(0, 4000): 1000 -> 63.75 -> 64, 2000 -> 127.5 -> 128, 4000 -> 255,
    # 5000 -> 318.75, clipped to 255.
    choice = np.random.default_rng(0).integers(0, 5, (3, 40, 40))
    wide = np.array([0, 1000, 2000, 4000, 5000], np.uint16)[choice]
    narrow = np.array([0, 64, 128, 255, 255], np.uint8)[choice]
    _write_raster(tmp_path / "wide.tif", wide)
    _write_raster(tmp_path / "narrow.tif", narrow)
    utils.segment_scene(conv_model, tmp_path / "wide.tif", tmp_path / "a.tif",
                        tile_size=32, rescale=(0, 4000))
    utils.segment_scene(conv_model, tmp_path / "narrow.tif", tmp_path / "b.tif",
                        tile_size=32)
    np.testing.assert_array_equal(_read(tmp_path / "a.tif")[0],
                                  _read(tmp_path / "b.tif")[0])
    # a uint8 scene is read as it is (a batch's 8-bit scenes were squashed to black)
    utils.segment_scene(conv_model, tmp_path / "narrow.tif", tmp_path / "c.tif",
                        tile_size=32, rescale=(0, 4000))
    np.testing.assert_array_equal(_read(tmp_path / "c.tif")[0],
                                  _read(tmp_path / "b.tif")[0])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_segment_scene_reads_png_and_jpeg_without_a_georeference(
        tmp_path, conv_model, suffix):
    from PIL import Image

    Image.fromarray(_image(50, 70)).save(tmp_path / f"photo{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)  # silenced inside
        utils.segment_scene(conv_model, tmp_path / f"photo{suffix}",
                            tmp_path / "labels.tif", tile_size=32)
    labels, src = _read(tmp_path / "labels.tif")
    assert src.crs is None and labels.shape == (50, 70)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / f"photo{suffix}") as photo:  # JPEG: as GDAL decodes it
            decoded = np.moveaxis(photo.read(), 0, -1)
    np.testing.assert_array_equal(labels, utils.predict_image(conv_model, decoded,
                                                              tile_size=32))


def test_segment_scene_runs_the_model_in_the_calling_thread(tmp_path, conv_model):
    # The blending and writing overlap with the model in a worker thread, but
    # the model itself runs in the caller's thread, where its device,
    # distribution and dtype scopes are.
    threads = []

    def predict(batch):
        threads.append(threading.get_ident())
        return np.asarray(conv_model.predict_on_batch(np.asarray(batch, "float32")))

    predict.model = conv_model
    scene = _write_rgb(tmp_path / "scene.tif", _image(150, 90))
    utils.segment_scene(predict, scene, tmp_path / "a.tif", tile_size=32, batch_size=3)
    assert set(threads) == {threading.get_ident()}
    utils.segment_scene(conv_model, scene, tmp_path / "b.tif", tile_size=32,
                        batch_size=3)
    np.testing.assert_array_equal(_read(tmp_path / "a.tif")[0],
                                  _read(tmp_path / "b.tif")[0])


def test_segment_scene_writes_under_a_temporary_name_of_its_own(tmp_path, conv_model):
    scene = _write_rgb(tmp_path / "scene.tif", _image(70, 40))
    seen = []

    def progress(rows, height):  # while the raster is being written
        seen.extend(p.name for p in tmp_path.iterdir() if p.name.startswith("."))

    for _ in range(2):
        utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32,
                            progress=progress)
    names = sorted(set(seen))
    assert len(names) == 2  # one per call: two writers never share one
    assert all(re.fullmatch(r"\.labels\.tif\.[0-9a-f]{8}\.partial", n) for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "scene.tif"]


def test_segment_scene_raises_an_error_of_its_writer_thread(tmp_path, conv_model):
    scene = _write_rgb(tmp_path / "scene.tif", _image(300, 60))
    bands = []

    def progress(rows, height):
        bands.append(rows)
        raise KeyboardInterrupt("stopped by the user")

    with pytest.raises(KeyboardInterrupt, match="stopped by the user"):
        utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32,
                            batch_size=2, progress=progress)
    assert len(bands) == 1  # nothing ran on after the error
    # Neither the label raster nor its temporary file is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_segment_scene_rejects_bad_inputs_naming_them(tmp_path, conv_model):
    missing = tmp_path / "missing.tif"
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        utils.segment_scene(conv_model, missing, tmp_path / "out.tif")
    (tmp_path / "tiles").mkdir()
    with pytest.raises(IsADirectoryError, match=re.escape(
            f"src_path {tmp_path / 'tiles'} is a folder; pass the path of one scene in "
            f"it, or segment them all with segment_scenes and a pattern such as "
            f"'{tmp_path / 'tiles' / '*.tif'}'")):
        utils.segment_scene(conv_model, tmp_path / "tiles", tmp_path / "out.tif")
    gray = _write_raster(tmp_path / "gray.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(IsADirectoryError, match=re.escape(  # was found after the scene ran
            f"dst_path {tmp_path / 'tiles'} is a folder; pass the file to write in it, e.g. "
            f"'{tmp_path / 'tiles' / 'gray_labels.tif'}'")):
        utils.segment_scene(conv_model, gray, tmp_path / "tiles")
    for batch_size in (0, 2.5):  # range()'s "arg 3 must not be zero"; a float's TypeError
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            utils.segment_scene(conv_model, gray, tmp_path / "out.tif", batch_size=batch_size)
    with pytest.raises(ValueError, match=r"gray.tif has 1 band\(s\).*bands=\(1, 1, 1\)"):
        utils.segment_scene(conv_model, gray, tmp_path / "out.tif")
    utils.segment_scene(conv_model, gray, tmp_path / "out.tif", bands=(1, 1, 1), tile_size=16)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "indexed.png")
    with pytest.raises(ValueError, match=r"indexed.png has 1 band\(s\).*indices into a "
                                         r"colour table.*-expand rgb"):  # not bands=(1, 1, 1)
        utils.segment_scene(conv_model, tmp_path / "indexed.png", tmp_path / "out.tif")
    rgb = _write_rgb(tmp_path / "rgb.tif", _image(8, 8))
    with pytest.raises(ValueError, match=r"rgb.tif has 3 band\(s\); bands=\(1, 2, 4\)"):
        utils.segment_scene(conv_model, rgb, tmp_path / "out.tif", bands=(1, 2, 4))
    wide = _write_raster(tmp_path / "wide.tif", np.zeros((3, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="wide.tif has uint16 pixels.*rescale="):
        utils.segment_scene(conv_model, wide, tmp_path / "out.tif")
    with pytest.raises(ValueError, match=r"rescale must be \(low, high\) with high > low"):
        utils.segment_scene(conv_model, wide, tmp_path / "out.tif", rescale=(100, 100))
    with pytest.raises(ValueError, match=r"class_names must name the 6 classes \(the model's outputs\)"):
        utils.segment_scene(conv_model, rgb, tmp_path / "out.tif", class_names=("a", "b"))
    with pytest.raises(ValueError, match="tile_size must be a multiple of 16, got 50"):
        utils.segment_scene(conv_model, rgb, tmp_path / "out.tif", tile_size=50)
    with pytest.raises(ValueError, match="palette must be 8-bit colours, whole numbers"):
        utils.segment_scene(conv_model, rgb, tmp_path / "out.tif", palette=np.full((6, 3), 0.5))
    with pytest.raises(ValueError, match="palette has 2 colours for 6 classes"):
        utils.segment_scene(conv_model, rgb, tmp_path / "out.tif", palette=np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="dst_path must differ"):
        utils.segment_scene(conv_model, rgb, rgb)
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(ValueError, match="notes.tif is not a raster"):
        utils.segment_scene(conv_model, tmp_path / "notes.tif", tmp_path / "out.tif")


def _pointwise_model(classes):
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(classes, 1)(inputs))


def test_segment_scene_takes_at_most_255_classes_as_255_is_nodata(tmp_path):
    scene = _write_rgb(tmp_path / "scene.tif", _image(16, 16))
    with pytest.raises(ValueError, match="model has 256 output classes; a label raster "
                                         "holds at most 255"):
        utils.segment_scene(_pointwise_model(256), scene, tmp_path / "labels.tif",
                            tile_size=16)
    assert not (tmp_path / "labels.tif").exists()
    result = utils.segment_scene(_pointwise_model(255), scene, tmp_path / "labels.tif",
                                 tile_size=16)
    assert len(result["class_pixels"]) == 255 and result["nodata_pixels"] == 0


# -- polygonize -------------------------------------------------------------


def _write_labels(path, labels, nodata=255):
    return _write_raster(path, labels[None].astype(np.uint8), nodata=nodata)


def test_polygonize_puts_a_square_at_its_map_coordinates(tmp_path):
    labels = np.zeros((20, 20), np.uint8)
    labels[5:10, 8:14] = 2  # rows 5-9, columns 8-13: a Road rectangle
    _write_labels(tmp_path / "labels.tif", labels)
    result = utils.polygonize(tmp_path / "labels.tif", tmp_path / "labels.geojson",
                              class_names=utils.CLASSES)
    collection = json.loads((tmp_path / "labels.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32640"
    (road,) = [f for f in collection["features"] if f["properties"]["class"] == 2]
    assert road["properties"]["name"] == "Road"
    xs, ys = np.array(road["geometry"]["coordinates"][0]).T
    # x: 500000 + 0.5 * (8, 14); y: 2800000 - 0.5 * (10, 5).
    assert (xs.min(), xs.max()) == (500_004.0, 500_007.0)
    assert (ys.min(), ys.max()) == (2_799_995.0, 2_799_997.5)
    assert result["features"]["Road"] == 1 and result["features"]["Building"] == 1


def test_polygonize_drops_specks_smaller_than_min_area(tmp_path):
    labels = np.zeros((12, 12), np.uint8)
    labels[3, 3] = 4  # a one-pixel speck of Water
    labels[6:9, 6:9] = 3  # nine pixels of Vegetation
    _write_labels(tmp_path / "labels.tif", labels)
    kept = utils.polygonize(tmp_path / "labels.tif", tmp_path / "all.geojson",
                            class_names=utils.CLASSES)
    sieved = utils.polygonize(tmp_path / "labels.tif", tmp_path / "sieved.geojson",
                              min_area=9, class_names=utils.CLASSES)
    assert kept["features"] == {"Building": 1, "Land": 0, "Road": 0, "Vegetation": 1,
                                "Water": 1, "Unlabeled": 0}
    assert sieved["features"]["Water"] == 0 and sieved["features"]["Vegetation"] == 1


def test_polygonize_leaves_nodata_out(tmp_path):
    labels = np.ones((10, 10), np.uint8)
    labels[:, :4] = 255
    _write_labels(tmp_path / "labels.tif", labels)
    utils.polygonize(tmp_path / "labels.tif", tmp_path / "labels.geojson", min_area=4,
                     class_names=utils.CLASSES)
    (land,) = json.loads((tmp_path / "labels.geojson").read_text())["features"]
    assert land["properties"] == {"class": 1, "name": "Land"}
    xs, _ = np.array(land["geometry"]["coordinates"][0]).T
    assert xs.min() == 500_000.0 + 0.5 * 4  # starts after the nodata columns


def test_polygonize_names_the_classes_as_the_rasters_tags_do(tmp_path, conv_model):
    names = ("Roof", "Sand", "Street", "Palm", "Sea", "Other")
    scene = _write_rgb(tmp_path / "scene.tif", _image(40, 48))
    written = utils.segment_scene(conv_model, scene, tmp_path / "labels.tif", tile_size=32,
                                  class_names=names)
    result = utils.polygonize(tmp_path / "labels.tif", tmp_path / "labels.geojson")
    assert list(result["features"]) == list(names)
    features = json.loads((tmp_path / "labels.geojson").read_text())["features"]
    assert {f["properties"]["name"] for f in features} == {
        name for name, pixels in written["class_pixels"].items() if pixels}


def test_polygonize_names_the_classes_generically_without_tags_or_names(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[:, 4:] = 2
    _write_labels(tmp_path / "labels.tif", labels)
    result = utils.polygonize(tmp_path / "labels.tif", tmp_path / "labels.geojson")
    assert result["features"] == {"class 0": 1, "class 1": 0, "class 2": 1}


def test_polygonize_rejects_a_missing_file_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.tif"):
        utils.polygonize(tmp_path / "nothing.tif", tmp_path / "out.geojson")


# -- scripts/segment.py -----------------------------------------------------


def test_segment_script_writes_labels_polygons_and_a_summary(
        tmp_path, conv_model, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import segment

    conv_model.save(tmp_path / "model.keras")
    _write_rgb(tmp_path / "scene.tif", _image(60, 50))
    result = segment.main([str(tmp_path / "model.keras"), str(tmp_path / "scene.tif"),
                           str(tmp_path / "labels.tif"), "--tile-size", "32",
                           "--polygons", str(tmp_path / "labels.geojson"), "--quiet"])
    printed = capsys.readouterr().out
    assert "50 x 60 pixels" in printed and "Mpx/s" in printed
    assert re.search(rf"Building +{result['class_pixels']['Building']:,d} px", printed)
    labels, src = _read(tmp_path / "labels.tif")
    assert src.crs.to_epsg() == 32640 and labels.shape == (60, 50)
    collection = json.loads((tmp_path / "labels.geojson").read_text())
    assert f"Polygons: {len(collection['features'])} written" in printed
