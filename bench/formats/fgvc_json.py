"""`fgvc-json`: VPT's FGVC splits.

    <root>/<task>/{train,val,test}.json    {"<relative image path>": class_id}
    images under <root>/<task>/<image_dir>/ (the task's `image_dir`)

Class ids are remapped to 0..C-1 in sorted order over all of the task's json splits, so every
split agrees on the mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from . import DataFormat, SplitItems, read_text, register_format

SPLITS = ("train", "val", "test")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{\"<image path>\": class_id}}, "
                        f"got {type(data).__name__}")
    bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise DataError(f"{path}: class id of {bad[0]!r} is {data[bad[0]]!r}, expected an integer")
    return data


def class_map(folder: Path) -> dict[int, int]:
    ids: set[int] = set()
    for s in SPLITS:
        p = folder / f"{s}.json"
        if p.is_file():
            ids.update(int(v) for v in read_json(p).values())
    return {cid: i for i, cid in enumerate(sorted(ids))}


@register_format("fgvc-json")
class FGVCJson(DataFormat):
    layout = ("expected VPT's FGVC layout: <data-root>/<task>/{train,val,test}.json mapping image "
              "paths to class ids, images under <data-root>/<task>/<image_dir>/")

    def read_split(self, task, folder: Path, split: str, strict: bool = True) -> SplitItems:
        path = folder / f"{split}.json"
        if not path.is_file():
            raise DataError(f"task {task.name!r}: split file {path} not found; expected "
                            f"{', '.join(s + '.json' for s in SPLITS)} in {folder}")
        mapping = class_map(folder)
        image_root = folder / task.image_dir if task.image_dir else folder
        items = [(image_root / rel, mapping[int(cid)]) for rel, cid in read_json(path).items()]
        return SplitItems(task.name, split, items, str(path))
