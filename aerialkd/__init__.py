"""aerialkd: segment aerial imagery with a U-Net, and distil it into a smaller one.

The package behind the notebook series, on Keras 3 (TensorFlow or JAX). One
topic per module; a module imports only modules above it in this list:

- `checks`: argument checks the modules share (counts).
- `classes`: class names, mask palettes, mask colours to labels and back.
- `hosts`: the processes of a run on several hosts (JAX): joining them, which one
  writes files, each one's rows of a batch.
- `devices`: data-parallel training on several devices, replicas, precision.
- `run_files`: the files of a training run (`RunFiles`), one owner for their names;
  `write_into_place`, which writes a file whole or not at all.
- `files`: dataset layouts on disk, image/mask pairs, reading and cutting them.
- `splits`: which image goes to which split: by tile and image name, by share, by scene.
- `batches`: batches for `fit`: patches in memory or streamed, random and
  consistent crops.
- `datasets`: `load_dataset` and `SegmentationDataset`, split by source image.
- `synthetic`: small synthetic datasets (the tiny one CI trains on).
- `few_labels`: labels for a few training images: which, and the datasets of that.
- `layers`: on-device symmetry augmentation and device-invariant dropout.
- `models`: the U-Net teacher and student, ensembles, size and FLOPs, precision.
- `losses`: the segmentation loss and the knowledge-distillation losses.
- `distiller`: `Distiller`, a Keras model that trains a student from a teacher.
- `metrics`: IoU, precision and recall, calibration, error overlap.
- `prediction`: logits of batches, a fast predict function, latency.
- `tiling`: whole images of any size, with overlapping blended tiles.
- `export`: LiteRT export and inference.
- `callbacks`: the callbacks of `fit_segmentation`.
- `training`: `compile_segmentation` and `fit_segmentation`: one way to train.
- `evaluation`: scores on patches; size, speed and scores side by side.
- `scenes`: raster scenes of any size to label GeoTIFFs and polygons.
- `scene_sources`: the scenes of a batch: paths, globs, list files, STAC Items.
- `scene_outputs`: a batch's bookkeeping: STAC label sidecars, a VRT mosaic.
- `scene_tasks`: one scene of a batch as a task a worker runs: key, outputs, sidecar.
- `scene_engines`: the engines that run a batch's tasks: this process, Dask, Ray.
- `scene_batch`: `segment_scenes`, many scenes on an engine, resumable.
- `tables`: readable names of metrics, history rows, scores over seeds, Markdown tables.
- `plots`: figures of images and classes: segmentations, precision-recall curves,
  confusion, class shares.
- `run_plots`: figures of runs: histories, paired differences, sweeps, trade-offs,
  scores over seeds.
- `profiles`: the recipe and folders of a run of the series (`Profile`), the Colab
  and Kaggle setup, a profile's dataset.
- `notebook`: the notebooks' conveniences: runs that are loaded or trained, their records.

Everything public is re-exported here with `__all__` (and by the top-level
`utils.py` the notebooks import): `aerialkd.Distiller` is
`aerialkd.distiller.Distiller`.
"""

from .classes import (  # noqa: F401
    CLASSES,
    PALETTE,
    LABELLED_CLASSES,
    IGNORE_INDEX,
    IGNORE_COLORS,
    hex_to_rgb,
    rgb_to_hex,
    read_classes,
    mask_to_labels,
    labels_to_rgb,
)
from .hosts import (  # noqa: F401
    Processes,
    initialize_processes,
)
from .devices import (  # noqa: F401
    DataParallel,
    data_parallel,
    use_all_devices,
    mixed_precision_policy,
)
from .run_files import (  # noqa: F401
    RunFiles,
    RunProgress,
    write_into_place,
)
from .files import (  # noqa: F401
    DATASET_DIRNAME,
    KAGGLE_HANDLE,
    IMAGE_SUFFIXES,
    FLAT_LAYOUTS,
    find_dataset_root,
    find_pairs,
    read_pair,
    cut_patches,
    download_dataset,
)
from .batches import (  # noqa: F401
    PatchSequence,
    RandomCropSequence,
    PatchStream,
    MIXES,
    ConsistentCropSequence,
)
from .splits import (  # noqa: F401
    TEST_PARTS,
    SPLITS,
    assign_splits,
)
from .datasets import (  # noqa: F401
    SegmentationDataset,
    dataset_overview,
    class_shares,
    load_dataset,
)
from .synthetic import (  # noqa: F401
    make_tiny_dataset,
    make_custom_dataset,
)
from .few_labels import (  # noqa: F401
    label_subset,
    labelled_patches,
    only_labelled,
    unlabelled_elsewhere,
    pseudo_labelled,
    matched_epochs,
)
from .layers import (  # noqa: F401
    DeviceInvariantDropout,
    RandomSymmetry,
    UndoSymmetry,
    apply_symmetry,
)
from .models import (  # noqa: F401
    TEACHER_FILTERS,
    STUDENT_FILTERS,
    build_unet,
    symmetry_ensemble,
    build_teacher,
    build_student,
    ensemble_teacher,
    count_flops,
    size_multiple,
    model_summary,
    with_dtype_policy,
    save_model,
)
from .losses import (  # noqa: F401
    SegmentationLoss,
    KD_KINDS,
    distillation_loss,
    SegmentationKD,
)
from .distiller import (  # noqa: F401
    BOTTLENECK_LAYER,
    Distiller,
    KDWeightSchedule,
    distillation_settings,
)
from .metrics import (  # noqa: F401
    AnnotatedPixelAccuracy,
    miou_name,
    iou_scores,
    segmentation_metrics,
    calibration,
    error_overlap,
)
from .prediction import (  # noqa: F401
    predict_logits,
    make_predict_function,
    measure_latency,
)
from .tiling import (  # noqa: F401
    predict_image,
)
from .export import (  # noqa: F401
    export_litert,
    load_litert,
)
from .training import (  # noqa: F401
    compile_segmentation,
    SAMPLINGS,
    fit_segmentation,
    read_history,
)
from .evaluation import (  # noqa: F401
    evaluate_segmentation,
    compare_models,
)
from .scenes import (  # noqa: F401
    segment_scene,
    polygonize,
)
from .scene_batch import (  # noqa: F401
    segment_scenes,
)
from .tables import (  # noqa: F401
    LABELS,
    history_rows,
    scores_by_seed,
    paired_differences,
    format_mean_sd,
    format_number,
    format_p_value,
    seed_summary,
    paired_t_test,
    describe_change,
    markdown_table,
)
from .plots import (  # noqa: F401
    save_figure,
    plot_segmentations,
    plot_pr_curves,
    plot_confusion_matrix,
    plot_class_shares,
)
from .run_plots import (  # noqa: F401
    plot_history,
    plot_paired_difference,
    plot_seed_scores,
    plot_sweep,
    plot_tradeoff,
)
from .profiles import (  # noqa: F401
    GITHUB_REPOSITORY,
    REPO_ROOT,
    COMMITTED_MODELS,
    COMMITTED_METRICS,
    DRIVE_ROOT,
    PROFILES,
    Profile,
    in_colab,
    load_profile,
    setup_notebook,
    run_info,
    profile_dataset,
    profile_data_root,
)
from .notebook import (  # noqa: F401
    saved_model_path,
    saved_models,
    load_run,
    saved_history,
    saved_record,
    describe_run,
    write_run_record,
    train_model,
    load_or_train,
)

__all__ = [
    "RunFiles",
    "RunProgress",
    "write_into_place",
    "CLASSES",
    "PALETTE",
    "LABELLED_CLASSES",
    "IGNORE_INDEX",
    "IGNORE_COLORS",
    "hex_to_rgb",
    "rgb_to_hex",
    "read_classes",
    "mask_to_labels",
    "labels_to_rgb",
    "Processes",
    "initialize_processes",
    "DataParallel",
    "data_parallel",
    "use_all_devices",
    "mixed_precision_policy",
    "DATASET_DIRNAME",
    "KAGGLE_HANDLE",
    "IMAGE_SUFFIXES",
    "FLAT_LAYOUTS",
    "find_dataset_root",
    "find_pairs",
    "read_pair",
    "cut_patches",
    "download_dataset",
    "PatchSequence",
    "RandomCropSequence",
    "PatchStream",
    "MIXES",
    "ConsistentCropSequence",
    "TEST_PARTS",
    "SPLITS",
    "assign_splits",
    "SegmentationDataset",
    "dataset_overview",
    "class_shares",
    "load_dataset",
    "make_tiny_dataset",
    "make_custom_dataset",
    "label_subset",
    "labelled_patches",
    "only_labelled",
    "unlabelled_elsewhere",
    "pseudo_labelled",
    "matched_epochs",
    "DeviceInvariantDropout",
    "RandomSymmetry",
    "UndoSymmetry",
    "apply_symmetry",
    "TEACHER_FILTERS",
    "STUDENT_FILTERS",
    "build_unet",
    "symmetry_ensemble",
    "build_teacher",
    "build_student",
    "ensemble_teacher",
    "count_flops",
    "size_multiple",
    "model_summary",
    "with_dtype_policy",
    "save_model",
    "SegmentationLoss",
    "KD_KINDS",
    "distillation_loss",
    "SegmentationKD",
    "BOTTLENECK_LAYER",
    "Distiller",
    "KDWeightSchedule",
    "distillation_settings",
    "AnnotatedPixelAccuracy",
    "miou_name",
    "iou_scores",
    "segmentation_metrics",
    "calibration",
    "error_overlap",
    "predict_logits",
    "make_predict_function",
    "measure_latency",
    "predict_image",
    "export_litert",
    "load_litert",
    "compile_segmentation",
    "SAMPLINGS",
    "fit_segmentation",
    "read_history",
    "evaluate_segmentation",
    "compare_models",
    "segment_scene",
    "polygonize",
    "segment_scenes",
    "save_figure",
    "plot_segmentations",
    "LABELS",
    "plot_history",
    "plot_paired_difference",
    "plot_pr_curves",
    "plot_confusion_matrix",
    "plot_class_shares",
    "plot_sweep",
    "plot_seed_scores",
    "plot_tradeoff",
    "history_rows",
    "scores_by_seed",
    "paired_differences",
    "format_mean_sd",
    "format_number",
    "format_p_value",
    "seed_summary",
    "paired_t_test",
    "describe_change",
    "markdown_table",
    "GITHUB_REPOSITORY",
    "REPO_ROOT",
    "COMMITTED_MODELS",
    "COMMITTED_METRICS",
    "DRIVE_ROOT",
    "PROFILES",
    "Profile",
    "in_colab",
    "load_profile",
    "setup_notebook",
    "run_info",
    "profile_dataset",
    "profile_data_root",
    "saved_model_path",
    "saved_models",
    "load_run",
    "saved_history",
    "saved_record",
    "describe_run",
    "write_run_record",
    "train_model",
    "load_or_train",
]
