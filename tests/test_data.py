"""npfrcnn.data: the wheat and COCO readers (hand-written files), their errors, the folder reader
and the synthetic generator (determinism, both layouts agreeing, variety)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npfrcnn.data import (
    SYNTHETIC_CLASSES,
    DataError,
    dataset_sha256,
    load_image,
    make_synthetic,
    read_coco,
    read_dataset,
    read_folder,
    read_wheat,
    synthetic_sample,
)


def _jpeg(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


def _wheat(root: Path, rows: list[str], images: dict[str, tuple[int, int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in images.items():
        _jpeg(root / "train" / f"{name}.jpg", w, h)
    (root / "train.csv").write_text(
        "image_id,width,height,bbox,source\n" + "".join(r + "\n" for r in rows)
    )
    return root


# Wheat ---------------------------------------------------------------------------------------


def test_wheat_hand_worked(tmp_path: Path) -> None:
    root = _wheat(
        tmp_path,
        ['b,64,48,"[10.0, 5.0, 20.0, 8.5]",usask_1', 'b,64,48,"[0, 0, 64, 48]",usask_1',
         'a,32,32,"[1, 2, 3, 4]",arvalis_1'],
        {"a": (32, 32), "b": (64, 48), "empty": (16, 16)},
    )
    ds = read_wheat(root)
    assert ds.classes == ["wheat"]
    assert [s.image_id for s in ds] == ["a", "b", "empty"]
    a, b, empty = ds.samples
    # [x, y, w, h] -> (x, y, x + w, y + h), worked by hand.
    np.testing.assert_array_equal(a.boxes, np.array([[1, 2, 4, 6]], np.float32))
    np.testing.assert_array_equal(
        b.boxes, np.array([[10, 5, 30, 13.5], [0, 0, 64, 48]], np.float32)
    )
    assert (b.width, b.height) == (64, 48)
    assert b.boxes.dtype == np.float32 and b.classes.dtype == np.int64
    np.testing.assert_array_equal(b.classes, [0, 0])
    # A JPEG without rows is an image without boxes, its size from the file.
    assert empty.boxes.shape == (0, 4) and (empty.width, empty.height) == (16, 16)


def test_wheat_classes_from_source(tmp_path: Path) -> None:
    root = _wheat(
        tmp_path,
        ['a,32,32,"[1, 2, 3, 4]",zebra', 'a,32,32,"[5, 6, 7, 8]",ant'],
        {"a": (32, 32)},
    )
    ds = read_wheat(root, classes_from_source=True)
    assert ds.classes == ["ant", "zebra"]  # sorted names
    np.testing.assert_array_equal(ds.samples[0].classes, [1, 0])


@pytest.mark.parametrize(
    "row, message",
    [
        ('a,32,32,"[1, 2, 3]",s', "line 2: bbox must be 4 numbers"),
        ('a,32,32,"1, 2; 3",s', "line 2: bbox must look like"),
        ('a,32,32,"[1, 2, 0, 4]",s', "line 2: bbox width and height must be positive"),
        ('a,32,32,"[20, 2, 30, 4]",s', "line 2: bbox [20, 2, 30, 4] lies outside"),
        ('a,zero,32,"[1, 2, 3, 4]",s', "line 2: width must be a positive integer"),
        ('a,32,-3,"[1, 2, 3, 4]",s', "line 2: height must be a positive integer"),
        (',32,32,"[1, 2, 3, 4]",s', "line 2: empty image_id"),
        ('a,32,32,"[1, 2, nan, 4]",s', "line 2: bbox must look like"),
    ],
)
def test_wheat_malformed_row_names_the_line(tmp_path: Path, row: str, message: str) -> None:
    root = _wheat(tmp_path, [row], {"a": (32, 32)})
    with pytest.raises(DataError, match=None) as e:
        read_wheat(root)
    assert message in str(e.value)
    assert "train.csv" in str(e.value)


def test_wheat_inconsistent_size_and_missing_file(tmp_path: Path) -> None:
    root = _wheat(
        tmp_path / "x", ['a,32,32,"[1, 2, 3, 4]",s', 'a,32,40,"[1, 2, 3, 4]",s'], {"a": (32, 32)}
    )
    with pytest.raises(DataError, match="line 3: image 'a' has size 32x40 here but 32x32"):
        read_wheat(root)
    root = _wheat(tmp_path / "y", ['gone,32,32,"[1, 2, 3, 4]",s'], {})
    with pytest.raises(DataError, match=r"gone\.jpg.*image_id 'gone' is missing"):
        read_wheat(root)
    assert read_wheat(root, check_files=False).samples[0].image_id == "gone"


def test_wheat_missing_csv_or_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train.csv"):
        read_wheat(tmp_path)
    (tmp_path / "train.csv").write_text("image_id,width,height,bbox\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['source'\]"):
        read_wheat(tmp_path)


# COCO ----------------------------------------------------------------------------------------


def _coco(root: Path, doc: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def _doc() -> dict:
    return {
        "images": [
            {"id": 10, "file_name": "p.png", "width": 40, "height": 30},
            {"id": 4, "file_name": "q.png", "width": 20, "height": 20},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
            {"id": 3, "image_id": 4, "category_id": 3, "bbox": [2.5, 3, 4, 4]},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


def test_coco_hand_worked(tmp_path: Path) -> None:
    _jpeg(tmp_path / "p.png", 40, 30)
    _jpeg(tmp_path / "images" / "q.png", 20, 20)  # found under images/ as well
    ds = read_coco(_coco(tmp_path, _doc()))
    assert ds.classes == ["cat", "dog"]  # category ids 3, 7 -> classes 0, 1
    p, q = ds.samples
    assert (p.image_id, q.image_id) == ("10", "4")  # JSON order
    assert q.path == tmp_path / "images" / "q.png"
    np.testing.assert_array_equal(p.boxes, np.array([[1, 2, 11, 7]], np.float32))
    np.testing.assert_array_equal(p.classes, [1])
    np.testing.assert_array_equal(p.crowd, np.array([[0, 0, 40, 30]], np.float32))
    np.testing.assert_array_equal(q.boxes, np.array([[2.5, 3, 6.5, 7]], np.float32))
    np.testing.assert_array_equal(q.classes, [0])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][2].update(category_id=99),
         "annotations[2] (id 3): category_id 99 is not in categories"),
        (lambda d: d["annotations"][0].update(image_id=5),
         "annotations[0] (id 1): image_id 5 is not in images"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -1, 5]),
         "annotations[0] (id 1): bbox width and height must be positive"),
        (lambda d: d["annotations"][2].update(bbox=[18, 3, 4, 4]),
         "annotations[2] (id 3): bbox [18, 3, 4, 4] lies outside the 20x20 image"),
        (lambda d: d["images"][1].pop("width"), "images[1]: width must be a positive integer"),
        (lambda d: d.pop("categories"), "needs a list under 'categories'"),
        (lambda d: d["images"][0].update(file_name="nope.png"), "images[0] (id 10): image file"),
    ],
)
def test_coco_errors_name_the_annotation(tmp_path: Path, edit, message: str) -> None:
    _jpeg(tmp_path / "p.png", 40, 30)
    _jpeg(tmp_path / "q.png", 20, 20)
    doc = _doc()
    edit(doc)
    with pytest.raises(DataError) as e:
        read_coco(_coco(tmp_path, doc))
    assert message in str(e.value)


def test_coco_missing_or_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="annotations.json' does not exist"):
        read_coco(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_coco(tmp_path)


# Folder and images ----------------------------------------------------------------------------


def test_folder_reader(tmp_path: Path) -> None:
    _jpeg(tmp_path / "b.jpg", 8, 6)
    _jpeg(tmp_path / "a.png", 5, 7)
    (tmp_path / "notes.txt").write_text("x")
    ds = read_folder(tmp_path)
    assert [s.path.name for s in ds] == ["a.png", "b.jpg"]
    assert [(s.width, s.height) for s in ds] == [(5, 7), (8, 6)]
    with pytest.raises(DataError, match="has no image files"):
        read_folder(_empty(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        read_folder(tmp_path / "missing")
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        read_folder(tmp_path)
    with pytest.raises(DataError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match="format must be one of"):
        read_dataset(tmp_path, "voc")


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty"
    p.mkdir()
    return p


# Synthetic data --------------------------------------------------------------------------------


def test_synthetic_is_deterministic_by_seed() -> None:
    a = synthetic_sample(5, 3)
    b = synthetic_sample(5, 3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = synthetic_sample(6, 3)
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint8 and a[0].shape == (128, 128, 3)


def test_synthetic_variety_and_valid_boxes() -> None:
    boxes, classes = [], []
    for i in range(60):
        _, b, c = synthetic_sample(0, i)
        assert b.shape[0] >= 1 and b.shape == (c.shape[0], 4)
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all()
        assert (b[:, 2] - b[:, 0] >= 10).all() and (b[:, 3] - b[:, 1] >= 10).all()
        boxes.append(b)
        classes.append(c)
    b = np.concatenate(boxes)
    c = np.concatenate(classes)
    assert set(c.tolist()) == {0, 1, 2}  # the 3 classes appear
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert w.min() < 20 and w.max() > 45  # varied size
    assert (h / w).min() < 0.7 and (h / w).max() > 1.4  # varied aspect ratio
    overlaps = 0
    for bb in boxes:  # some objects overlap
        for i in range(len(bb)):
            for j in range(i + 1, len(bb)):
                iw = min(bb[i, 2], bb[j, 2]) - max(bb[i, 0], bb[j, 0])
                ih = min(bb[i, 3], bb[j, 3]) - max(bb[i, 1], bb[j, 1])
                overlaps += int(iw > 0 and ih > 0)
    assert overlaps > 0


def test_synthetic_objects_have_their_class_colour() -> None:
    # Invariant of the generator: the centre pixel of an unoccluded rectangle is its colour
    # family's dominant channel (red, green, blue for classes 0, 1, 2) for rectangles.
    hits = 0
    for i in range(30):
        image, b, c = synthetic_sample(1, i)
        last = len(b) - 1  # drawn last: never occluded
        if c[last] != 0:
            continue
        x = int((b[last, 0] + b[last, 2]) / 2)
        y = int((b[last, 1] + b[last, 3]) / 2)
        assert int(np.argmax(image[y, x])) == 0
        hits += 1
    assert hits > 0


def test_make_synthetic_layouts_agree(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "s", 12, seed=4)
    coco = read_coco(root)
    wheat = read_wheat(root, classes_from_source=True)
    assert coco.classes == list(SYNTHETIC_CLASSES)
    assert coco.meta["seed"] == 4 and len(coco) == len(wheat) == 12
    by_id = {s.path: s for s in wheat}
    for s in coco:
        w = by_id[s.path]
        np.testing.assert_array_equal(s.boxes, w.boxes)
        names_c = [coco.classes[k] for k in s.classes]
        names_w = [wheat.classes[k] for k in w.classes]
        assert names_c == names_w
        _, boxes, classes = synthetic_sample(4, int(s.image_id) - 1)
        np.testing.assert_array_equal(s.boxes, boxes)  # written exactly (integer pixel edges)
        np.testing.assert_array_equal(s.classes, classes)
        assert load_image(s.path).shape == (128, 128, 3)
    # Same seed, same bytes; the sha covers boxes and image bytes.
    again = read_coco(make_synthetic(tmp_path / "t", 12, seed=4))
    assert dataset_sha256(again) == dataset_sha256(coco)
    coco.samples[0].boxes[0, 0] += 1
    assert dataset_sha256(again) != dataset_sha256(coco)


# Issue 12: each file once, stable ids, duplicates refused, empty datasets refused -------------


def test_folder_reader_visits_each_file_once(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg", 8, 6)
    _jpeg(tmp_path / "a.png", 5, 7)  # same stem, another image
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")  # a second name of a.jpg
    _jpeg(tmp_path / ".hidden.jpg", 4, 4)  # e.g. macOS ._ files
    (tmp_path / "loop").symlink_to(tmp_path)  # a folder loop: not walked into
    ds = read_folder(tmp_path)
    assert [s.path.name for s in ds] == ["a.jpg", "a.png"]
    assert [s.image_id for s in ds] == ["a.jpg", "a.png"]  # distinct ids


def test_wheat_rowless_alias_is_not_a_second_image(tmp_path: Path) -> None:
    root = _wheat(tmp_path, ['a,32,32,"[1, 2, 3, 4]",s'], {"a": (32, 32)})
    (root / "train" / "z.jpg").symlink_to(root / "train" / "a.jpg")
    ds = read_wheat(root)
    assert [s.image_id for s in ds] == ["a"]
    assert ds.files == [root / "train.csv"]


def test_wheat_two_ids_of_one_file_and_empty(tmp_path: Path) -> None:
    root = _wheat(tmp_path / "x", ['a,32,32,"[1, 2, 3, 4]",s', 'b,32,32,"[1, 2, 3, 4]",s'],
                  {"a": (32, 32)})
    (root / "train" / "b.jpg").symlink_to(root / "train" / "a.jpg")
    with pytest.raises(DataError, match="are the same file"):
        read_wheat(root)
    empty = _wheat(tmp_path / "y", [], {})
    with pytest.raises(DataError, match="the dataset is empty"):
        read_wheat(empty)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["categories"].append({"id": 7, "name": "cow"}), "duplicate category id 7"),
        (lambda d: d["categories"].append({"id": 9, "name": "dog"}),
         "categories 7 and 9 are both named 'dog'"),
        (lambda d: d["images"].append({"id": 4, "file_name": "p.png", "width": 40,
                                       "height": 30}), "duplicate image id 4"),
        (lambda d: d["images"].append({"id": 5, "file_name": "./p.png", "width": 40,
                                       "height": 30}), "are the same file"),
        (lambda d: d["annotations"][2].update(id=1),
         "duplicate annotation id 1 (also annotations[0])"),
        (lambda d: d["images"].__setitem__(1, 4), "images[1] must be an object"),
        (lambda d: d["annotations"][0].update(area=float("nan")), "area must be a finite"),
        (lambda d: d.update(images=[], annotations=[]), "the dataset has no image"),
    ],
)
def test_coco_duplicates_and_empty_are_errors(tmp_path: Path, edit, message: str) -> None:
    _jpeg(tmp_path / "p.png", 40, 30)
    _jpeg(tmp_path / "q.png", 20, 20)
    doc = _doc()
    edit(doc)
    with pytest.raises(DataError) as e:
        read_coco(_coco(tmp_path, doc))
    assert message in str(e.value)


def test_coco_keeps_crowd_classes_and_areas(tmp_path: Path) -> None:
    _jpeg(tmp_path / "p.png", 40, 30)
    _jpeg(tmp_path / "q.png", 20, 20)
    doc = _doc()
    doc["annotations"][0]["area"] = 12.5  # a segmentation's area, not the box's 50
    ds = read_coco(_coco(tmp_path, doc), annotations=tmp_path / "annotations.json")
    p, q = ds.samples
    np.testing.assert_array_equal(p.crowd_classes, [0])  # the crowd box is a "cat" (id 3)
    np.testing.assert_array_equal(p.areas, [12.5])
    np.testing.assert_array_equal(p.crowd_areas, [1200.0])  # no area given: w * h
    np.testing.assert_array_equal(q.areas, [16.0])
    assert ds.files == [tmp_path / "annotations.json"]


def test_coco_class_ids_follow_category_ids_not_file_order(tmp_path: Path) -> None:
    _jpeg(tmp_path / "p.png", 40, 30)
    _jpeg(tmp_path / "q.png", 20, 20)
    doc = _doc()
    doc["categories"] = [{"id": 7, "name": "dog"}, {"id": 1, "name": "ant"},
                         {"id": 3, "name": "cat"}]
    ds = read_coco(_coco(tmp_path, doc))
    assert ds.classes == ["ant", "cat", "dog"]  # ids 1, 3, 7 -> classes 0, 1, 2
    doc["categories"] = doc["categories"][::-1]
    doc["images"] = doc["images"][::-1]
    again = read_coco(_coco(tmp_path, doc))
    assert again.classes == ds.classes
    by_id = {s.image_id: s for s in again}
    for s in ds:
        np.testing.assert_array_equal(by_id[s.image_id].classes, s.classes)


def test_bad_image_files_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a truncated PNG
    with pytest.raises(DataError, match="x.png"):
        load_image(tmp_path / "x.png")
    with pytest.raises(DataError, match="format must be one of"):
        read_dataset(tmp_path, "voc")
