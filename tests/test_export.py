"""Tests of `aerialkd.export`: LiteRT export and inference without Keras."""

import keras
import numpy as np
import pytest

import utils


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="LiteRT export needs TF")
def test_litert_export_runs_without_keras_and_agrees(tmp_path):
    keras.utils.set_random_seed(0)
    model = utils.build_unet(2)
    path = utils.export_litert(model, tmp_path / "m.tflite", input_size=32)
    predict = utils.load_litert(path)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(predict(x), utils.predict_logits(model, x), atol=1e-4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="LiteRT export needs TF")
def test_quantized_litert_exports_are_smaller_and_close(tmp_path):
    keras.utils.set_random_seed(0)
    model = utils.build_unet(4)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    logits = utils.predict_logits(model, x)
    sizes, outputs = {}, {}
    for quantize in (None, "float16", "int8"):
        path = utils.export_litert(model, tmp_path / f"{quantize}.tflite", input_size=32,
                                   quantize=quantize, calibration_images=x)
        sizes[quantize] = path.stat().st_size
        outputs[quantize] = utils.load_litert(path)(x)
    assert sizes["float16"] < 0.7 * sizes[None] and sizes["int8"] < 0.5 * sizes[None]
    np.testing.assert_allclose(outputs["float16"], logits, atol=1e-2)
    assert np.corrcoef(outputs["int8"].ravel(), logits.ravel())[0, 1] > 0.98
    with pytest.raises(ValueError, match="needs calibration_images"):
        utils.export_litert(model, tmp_path / "x.tflite", quantize="int8")
    with pytest.raises(ValueError, match=r"calibration_images are \(32, 32, 3\), and the "
                                         r"export takes \(64, 64, 3\)"):  # TFLite's "mutating"
        utils.export_litert(model, tmp_path / "x.tflite", input_size=64, quantize="int8",
                            calibration_images=x)
