"""Tests of mmlib.data.celeba: CelebA in its own layout, its fingerprint and its line-precise errors."""

from __future__ import annotations

import numpy as np
import pytest

from mmlib.data.celeba import CelebAFaces
from mmlib.data.protocol import DatasetError, PairDataset


def test_celeba_reads_images_labels_and_captions(make_celeba):
    faces = CelebAFaces(make_celeba(12))
    assert isinstance(faces, PairDataset) and len(faces) == 12
    assert faces.attribute_names[2] == "Male"
    np.testing.assert_array_equal(faces.labels, [1 if i % 2 else 0 for i in range(1, 13)])  # +1 -> 1 ("man")
    assert faces.filename(0) == "000001.jpg"
    img = faces.image(3)
    assert img.mode == "RGB" and img.size == (24, 24)
    assert faces.caption(0) == "a photo of a person"
    assert "man=6" in repr(faces)



def test_celeba_value_caption_partition_and_limit(make_celeba):
    root = make_celeba(12)
    faces = CelebAFaces(root, attribute="Smiling", values=("not smiling", "smiling"), partition="test",
                        caption="a photo of a {value} person")
    assert [faces.filename(i) for i in range(len(faces))] == ["000002.jpg", "000005.jpg", "000008.jpg", "000011.jpg"]
    assert {faces.caption(i) for i in range(len(faces))} <= {"a photo of a smiling person",
                                                             "a photo of a not smiling person"}
    assert len(CelebAFaces(root, limit=5)) == 5



def test_celeba_fingerprint_tracks_table_and_parameters(make_celeba):
    root = make_celeba(6)
    a, b = CelebAFaces(root), CelebAFaces(root, attribute="Young")
    assert a.fingerprint == CelebAFaces(root).fingerprint and a.fingerprint != b.fingerprint
    table = root / "list_attr_celeba.txt"
    lines = table.read_text().splitlines()
    lines[2] = lines[2][:-2] + ("-1" if lines[2].endswith(" 1") else " 1")  # flip image 1's last value
    table.write_text("\n".join(lines) + "\n")
    assert CelebAFaces(root).fingerprint != a.fingerprint



def test_celeba_unknown_attribute_suggests_close_names(make_celeba):
    with pytest.raises(DatasetError, match=r"unknown attribute 'male'.*Did you mean 'Male'"):
        CelebAFaces(make_celeba(4), attribute="male")



@pytest.mark.parametrize("what", ["root", "table", "images"])
def test_celeba_missing_files(make_celeba, tmp_path, what):
    root = make_celeba(4)
    if what == "root":
        root = tmp_path / "nowhere"
    elif what == "table":
        (root / "list_attr_celeba.txt").unlink()
    else:
        for f in (root / "img_align_celeba").iterdir():
            f.unlink()
        (root / "img_align_celeba").rmdir()
    with pytest.raises(DatasetError, match="does not exist"):
        CelebAFaces(root)



@pytest.mark.parametrize("edit, message", [
    (lambda lines: ["many"] + lines[1:], r"line 1: expected the number of images"),
    (lambda lines: lines[:3] + ["000002.jpg -1 1"] + lines[4:], r"line 4: 3 fields, expected 6"),
    (lambda lines: lines[:3] + [lines[3].replace("-1", "0", 1)] + lines[4:], r"line 4: value '0'"),
    (lambda lines: lines + [lines[2]], r"listed twice"),
    (lambda lines: lines[:-1], r"declares 4 images but the table lists 3"),
    (lambda lines: lines[:1], r"has 1 line"),
])
def test_celeba_malformed_table_names_the_line(make_celeba, edit, message):
    root = make_celeba(4)
    table = root / "list_attr_celeba.txt"
    table.write_text("\n".join(edit(table.read_text().splitlines())) + "\n")
    with pytest.raises(DatasetError, match=message):
        CelebAFaces(root)



def test_celeba_partition_errors(make_celeba):
    root = make_celeba(4, partitions=False)
    with pytest.raises(DatasetError, match="unknown partition 'testing'"):
        CelebAFaces(root, partition="testing")
    with pytest.raises(DatasetError, match="needs .*list_eval_partition.txt"):
        CelebAFaces(root, partition="test")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 7\n")
    with pytest.raises(DatasetError, match="line 2: expected 'FILE 0|1|2'"):
        CelebAFaces(root, partition="test")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(DatasetError, match="no partition for 3 image"):
        CelebAFaces(root, partition="val")
    with pytest.raises(DatasetError, match="limit must be"):
        CelebAFaces(root, limit=0)
    with pytest.raises(DatasetError, match="values must name the two values"):
        CelebAFaces(root, values=("man", "man"))



def test_celeba_empty_partition(make_celeba):
    root = make_celeba(2)  # images 1 and 2: partitions 1 and 2, none in train
    with pytest.raises(DatasetError, match="no image left"):
        CelebAFaces(root, partition="train")



def test_celeba_missing_or_unreadable_image_names_file_and_line(make_celeba):
    root = make_celeba(4)
    (root / "img_align_celeba" / "000002.jpg").unlink()
    (root / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    faces = CelebAFaces(root)
    with pytest.raises(DatasetError, match=r"000002.jpg \(line 4 of .*\) does not exist"):
        faces.image(1)
    with pytest.raises(DatasetError, match=r"000003.jpg \(line 5 of .*\) is unreadable"):
        faces.image(2)
    with pytest.raises(IndexError):
        faces.caption(4)


# ------------------------------------------------------------------------------- bad inputs (issue 15)

def test_celeba_root_that_is_a_file_or_table_that_is_a_folder(make_celeba, tmp_path):
    root = make_celeba(4)
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        CelebAFaces(root / "list_attr_celeba.txt")
    (root / "list_attr_celeba.txt").unlink()
    (root / "list_attr_celeba.txt").mkdir()
    with pytest.raises(DatasetError, match=r"list_attr_celeba\.txt is a directory"):
        CelebAFaces(root)


def test_celeba_image_dir_that_is_a_file(make_celeba):
    root = make_celeba(4)
    with pytest.raises(DatasetError, match=r"image folder .*list_eval_partition\.txt is a file"):
        CelebAFaces(root, image_dir="list_eval_partition.txt")


@pytest.mark.parametrize("name", ["list_attr_celeba.txt", "list_eval_partition.txt"])
def test_celeba_not_utf8_names_file_and_line(make_celeba, name):
    root = make_celeba(4)
    path = root / name
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b".jpg", b"\xe9.jpg", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DatasetError, match=rf"{name}, line 4, column \d+: byte 0xe9 is not valid UTF-8; re-encode"):
        CelebAFaces(root, partition="test")


@pytest.mark.parametrize("edit, message", [
    (lambda lines: ["-2"] + lines[1:], "must not be negative"),
    (lambda lines: lines[:1] + [lines[1] + " Male"] + lines[2:], r"\['Male'\] appear more than once"),
    (lambda lines: lines[:2] + [lines[2].replace("000001.jpg", "../000001.jpg")] + lines[3:], "not a plain file"),
])
def test_celeba_more_malformed_tables(make_celeba, edit, message):
    root = make_celeba(4)
    table = root / "list_attr_celeba.txt"
    table.write_text("\n".join(edit(table.read_text().splitlines())) + "\n")
    with pytest.raises(DatasetError, match=message):
        CelebAFaces(root)


def test_celeba_conflicting_partition_lines(make_celeba):
    root = make_celeba(4)
    part = root / "list_eval_partition.txt"
    part.write_text(part.read_text() + "000001.jpg 2\n")
    with pytest.raises(DatasetError, match="listed again with another partition"):
        CelebAFaces(root, partition="test")


@pytest.mark.parametrize("kwargs, message", [
    (dict(values="mf"), "values must name"), (dict(values=("a", "")), "values must name"),
    (dict(values=("a", 1)), "values must name"), (dict(limit=2.5), "limit must be"), (dict(limit="3"), "limit must"),
    (dict(limit=True), "limit must be"), (dict(attribute=None), "attribute must be"),
    (dict(caption="  "), "caption must be"), (dict(root=None), "root must be a path"),
])
def test_celeba_bad_parameters(make_celeba, kwargs, message):
    kwargs = {"root": make_celeba(4), **kwargs}
    with pytest.raises(DatasetError, match=message):
        CelebAFaces(**kwargs)


def test_celeba_image_that_is_a_directory_or_a_bomb(make_celeba, monkeypatch):
    from PIL import Image as PILImage
    root = make_celeba(4)
    (root / "img_align_celeba" / "000002.jpg").unlink()
    (root / "img_align_celeba" / "000002.jpg").mkdir()
    faces = CelebAFaces(root)
    with pytest.raises(DatasetError, match=r"000002\.jpg \(line 4 of .*\) is a directory"):
        faces.image(1)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # the 24x24 fixture images become "bombs"
    with pytest.raises(DatasetError, match=r"000001\.jpg \(line 3 of .*\) is too large to decode safely"):
        faces.image(0)
