"""The scenes of a batch: paths, glob patterns, list files and STAC Items, each once, named.

`find_scenes` turns what a user names (a folder's pattern, a list of paths, a
STAC catalogue's Items) into scenes with distinct output names, for
`segment_scenes`.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import pathlib
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any


Scene = collections.namedtuple("Scene", "path name item item_path")
"""A scene of a batch: its raster's `path`, its output `name`, and the STAC
`item` (and the `item_path` of its JSON) it came from, or `None`."""


def find_scenes(sources: Any, outputs_in: os.PathLike | str | None = None) -> list[Scene]:
    """The scenes `sources` name, each once, with distinct output names.

    `sources` is a path, a glob pattern (`"tiles/**/*.tif"`), a `.txt` file
    listing paths, patterns or Item files (one a line, relative to the list's
    folder; `#` starts a comment), a STAC Item (a dict, or the path of its
    `.json`; an ItemCollection's `.json` gives all its Items), or a list of
    any of these. An Item's scene is its asset keyed "visual", else "image",
    else its one asset with the role "data", and must be a local (or mounted)
    file. A path named twice counts once; a path that does not exist is still
    a scene (it fails when segmented). A folder is refused: name its scenes
    with a pattern (`"tiles/*.tif"`); the folders a pattern matches are left
    out.

    A scene is named after its file stem, or its STAC Item's id. Files of the
    same stem in different folders (`Tile 1/images/image_part_001.jpg`,
    `Tile 2/images/...`) take as many of their parent folders as tell them
    apart: `Tile_1_images_image_part_001`.

    Args:
        sources: the scenes, as above.
        outputs_in: the folder of `segment_scenes`' outputs (its `dst_dir`),
            whose label rasters and their sidecars (`*_labels.tif`,
            `*_labels.json`, a STAC Item) are not scenes even where a pattern
            or a path names them: a rerun whose pattern covers that folder
            finds them.

    Returns:
        A list of `Scene`s, in the order of `sources`.

    Example:

    >>> scenes = find_scenes([image for image, _ in data.files["test"]])
    >>> [scene.name for scene in scenes[:2]]
    ['Tile_1_images_image_part_008', 'Tile_1_images_image_part_009']
    """
    scenes, seen = [], set()
    outputs = None if outputs_in is None else pathlib.Path(outputs_in).resolve()
    for scene in _expand(sources, pathlib.Path(), outputs):
        if scene.path.resolve() not in seen:
            seen.add(scene.path.resolve())
            scenes.append(scene)
    if not scenes:
        raise ValueError(f"sources named no scenes, got {sources!r}.")
    by_name = collections.defaultdict(list)
    for index, scene in enumerate(scenes):
        by_name[scene.name].append(index)
    for name, indices in by_name.items():
        if len(indices) > 1 and all(scenes[i].item is None for i in indices):
            for i, unique in zip(indices, _parent_names([scenes[i].path for i in indices])):
                scenes[i] = scenes[i]._replace(name=unique)
    names = collections.Counter(scene.name for scene in scenes)
    for scene in scenes:
        if names[scene.name] > 1:
            same = [s for s in scenes if s.name == scene.name]
            why = ("STAC Items of the same id" if any(s.item is not None for s in same) else
                   "names that are the same once cleaned for a file name")
            clash = [str(s.item_path or s.path) for s in same]
            raise ValueError(f"{' and '.join(clash)} would all write {scene.name}_labels.tif "
                             f"({why}); segment them into different dst_dir folders, or "
                             f"rename one.")
    return scenes


def _parent_names(paths):
    """Names of same-stem files: the stem after the fewest parent folders that differ."""
    paths = [path.resolve() for path in paths]
    for depth in range(1, max(len(path.parts) for path in paths)):
        names = [_safe_name("_".join([*path.parent.parts[-depth:], path.stem]))
                 for path in paths]
        if len(set(names)) == len(names):
            return names
    return [_safe_name(path.name) for path in paths]  # same folder: a.tif and a.jpg


def _expand(source, base, outputs):
    """Yields the scenes of one source (recursively for lists, globs and list files)."""
    if isinstance(source, dict):
        yield _item_scene(source, None, base)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = base / text
        if outputs is not None and path.name.endswith(("_labels.tif", "_labels.json")) \
                and path.absolute().resolve().parent == outputs:
            return  # an output of the batch, not a scene
        if any(c in text for c in "*?[") and not path.exists():
            matches = [match for match in sorted(glob.glob(str(path), recursive=True))
                       if not os.path.isdir(match)]  # "tiles/*" matches subfolders too
            if not matches:
                raise ValueError(f"The pattern {text!r} matches no files.")
            for match in matches:  # each already under `base`
                yield from _expand(match, pathlib.Path(), outputs)
        elif path.suffix.lower() in (".json", ".txt") and not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; pass a list of scenes (.txt) "
                                    f"or a STAC Item (.json) that does.")
        elif path.suffix.lower() == ".json":
            try:
                collection = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{path} is not a JSON file ({error}); a STAC Item or a "
                                 f"FeatureCollection of them is a JSON object.") from error
            if not isinstance(collection, dict):
                raise ValueError(f"{path} holds a JSON {type(collection).__name__}, not a "
                                 f"STAC Item or a FeatureCollection of them (a JSON object).")
            if collection.get("type") == "FeatureCollection":
                for item in collection.get("features", []):
                    yield _item_scene(item, path, base)
            else:
                yield _item_scene(collection, path, base)
        elif path.suffix.lower() == ".txt":
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    yield from _expand(line, path.parent, outputs)
        elif path.is_dir():
            raise IsADirectoryError(f"{path} is a folder, not a scene; pass a pattern of "
                                    f"its scenes, e.g. {str(path / '*.tif')!r} (or "
                                    f"{str(path / '**' / '*.tif')!r} with its subfolders).")
        else:
            yield Scene(path, _safe_name(path.stem), None, None)
    elif isinstance(source, Iterable):
        for each in source:
            yield from _expand(each, base, outputs)
    else:
        raise TypeError(f"sources must be paths, glob patterns, list files, STAC Items or "
                        f"a list of them, got a {type(source).__name__}.")


def _item_scene(item, item_path, base):
    """The scene of a STAC Item: its "visual", else "image", else only "data" asset."""
    if not isinstance(item, dict):
        raise ValueError(f"{item_path} holds a feature that is a JSON {type(item).__name__}, "
                         f"not a STAC Item (a JSON object).")
    where = f"STAC Item {item.get('id', '?')!r}" + (f" ({item_path})" if item_path else "")
    if item.get("type") != "Feature" or not isinstance(item.get("assets"), dict):
        raise ValueError(f"{where} is not a STAC Item: it needs 'type': 'Feature' and "
                         f"'assets'.")
    assets = item["assets"]
    key = next((k for k in ("visual", "image") if k in assets), None)
    if key is None:
        data = [k for k, asset in assets.items() if "data" in (asset.get("roles") or [])]
        if len(data) != 1:
            raise ValueError(f"{where} has {len(data) or 'no'} assets with the role 'data' "
                             f"and none keyed 'visual' or 'image' (assets: "
                             f"{sorted(assets)}); segment_scenes takes one of those. Pass "
                             f"the scene's path.")
        key = data[0]
    href = assets[key].get("href") if isinstance(assets[key], dict) else None
    if not isinstance(href, str) or not href:
        raise ValueError(f"{where}: its asset {key!r} has no 'href' (the scene's path or "
                         f"URL); add it, or pass the scene's path.")
    if href.startswith("file://"):
        href = urllib.parse.unquote(urllib.parse.urlparse(href).path)
    elif "://" in href:
        raise ValueError(f"{where}: its asset {key!r} is at {href}, not a local file; "
                         f"segment_scenes reads local (or mounted) files. Download it, or "
                         f"pass its local path.")
    path = (item_path.parent if item_path else base) / href
    return Scene(path, _safe_name(str(item.get("id") or path.stem)), item, item_path)


def _safe_name(text):
    return re.sub(r"[^\w.-]+", "_", text)
