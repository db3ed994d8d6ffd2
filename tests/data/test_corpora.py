"""Tests of mmlib.data.corpora: the CSV/TSV and webdataset adapters, their fingerprints and their error messages."""

from __future__ import annotations

import gzip
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from mmlib.data.corpora import CsvPairs, WebDatasetPairs
from mmlib.data.protocol import DatasetError, PairDataset


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------- CsvPairs

@pytest.mark.parametrize("name", ["pairs.csv", "pairs.tsv"])
def test_csv_reads_pairs(make_csv_corpus, name, pattern_image):
    path = make_csv_corpus(5, name=name)
    ds = CsvPairs(path)
    assert isinstance(ds, PairDataset)
    assert len(ds) == 5
    assert ds.caption(3) == "a photo of 3 yellow things"
    img = ds.image(2)
    assert img.mode == "RGB" and img.size == (20, 20)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pattern_image(2)))
    assert ds.image_path(2) == path.parent / "images" / "00002.png"
    with pytest.raises(IndexError, match="out of range"):
        ds.caption(5)


def test_csv_image_root_and_absolute_paths(tmp_path, pattern_image):
    images = tmp_path / "elsewhere"
    images.mkdir()
    pattern_image(0).save(images / "a.png")
    pattern_image(1).save(tmp_path / "b.png")
    csv_path = write(tmp_path / "meta" / "x.csv", f"title,filepath\nfirst,a.png\nsecond,{tmp_path / 'b.png'}\n")
    ds = CsvPairs(csv_path, image_root=images)
    assert ds.caption(0) == "first" and ds.caption(1) == "second"
    np.testing.assert_array_equal(np.asarray(ds.image(0)), np.asarray(pattern_image(0)))
    np.testing.assert_array_equal(np.asarray(ds.image(1)), np.asarray(pattern_image(1)))


def test_csv_custom_columns_quotes_and_blank_lines(tmp_path):
    csv_path = write(tmp_path / "x.csv",
                     'img,id,text\n\na.png,1,"a caption, with a comma\nand a newline"\n\nb.png,2,plain\n')
    ds = CsvPairs(csv_path, image_key="img", caption_key="text")
    assert len(ds) == 2
    assert ds.caption(0) == "a caption, with a comma\nand a newline"
    assert ds.caption(1) == "plain"


def test_csv_fingerprint_tracks_csv_bytes_and_root(make_csv_corpus, tmp_path):
    path = make_csv_corpus(4)
    fp = CsvPairs(path).fingerprint
    assert CsvPairs(path).fingerprint == fp  # stable
    assert CsvPairs(path, image_root=path.parent).fingerprint == fp  # the default root, explicitly
    assert CsvPairs(path, image_root=tmp_path).fingerprint != fp
    path.write_text(path.read_text().replace("things", "objects"))
    assert CsvPairs(path).fingerprint != fp


def test_csv_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.csv does not exist"):
        CsvPairs(tmp_path / "nope.csv")


def test_csv_unknown_extension_needs_delimiter(tmp_path):
    path = write(tmp_path / "x.txt", "filepath;title\na.png;cap\n")
    with pytest.raises(DatasetError, match="delimiter"):
        CsvPairs(path)
    assert len(CsvPairs(path, delimiter=";")) == 1


def test_csv_empty_file(tmp_path):
    with pytest.raises(DatasetError, match="is empty"):
        CsvPairs(write(tmp_path / "x.csv", ""))


def test_csv_header_only(tmp_path):
    with pytest.raises(DatasetError, match="no rows"):
        CsvPairs(write(tmp_path / "x.csv", "filepath,title\n\n"))


def test_csv_missing_column_lists_header_and_expected(tmp_path):
    with pytest.raises(DatasetError) as err:
        CsvPairs(write(tmp_path / "x.csv", "path,caption\na.png,cap\n"))
    message = str(err.value)
    assert "['path', 'caption']" in message
    assert "'filepath'" in message and "'title'" in message


def test_csv_tsv_read_as_csv_reports_header(tmp_path):
    with pytest.raises(DatasetError, match=r"\['filepath\\ttitle'\]"):
        CsvPairs(write(tmp_path / "x.csv", "filepath\ttitle\na.png\tcap\n"))


def test_csv_wrong_field_count_names_line(tmp_path):
    path = write(tmp_path / "x.csv", "filepath,title\na.png,one\n\nb.png,two,extra\nc.png,three\n")
    with pytest.raises(DatasetError, match=r"line 4: 3 fields, expected 2"):
        CsvPairs(path)


def test_csv_line_number_after_multiline_field(tmp_path):
    path = write(tmp_path / "x.csv", 'filepath,title\na.png,"two\nlines"\nb.png\n')
    with pytest.raises(DatasetError, match=r"line 4: 1 fields"):
        CsvPairs(path)


@pytest.mark.parametrize("row, column", [(",a caption", "filepath"), ("b.png,  ", "title")])
def test_csv_empty_path_or_caption_names_line(tmp_path, row, column):
    path = write(tmp_path / "x.csv", f"filepath,title\na.png,ok\n{row}\n")
    with pytest.raises(DatasetError, match=rf"line 3: empty '{column}'"):
        CsvPairs(path)


def test_csv_missing_image_names_file_and_row(make_csv_corpus):
    path = make_csv_corpus(4)
    (path.parent / "images" / "00002.png").unlink()
    ds = CsvPairs(path)  # construction does not open images
    ds.image(1)
    with pytest.raises(DatasetError) as err:
        ds.image(2)
    message = str(err.value)
    assert "00002.png" in message and "does not exist" in message
    assert "row 2" in message and "line 4" in message


def test_csv_unreadable_image_names_file(make_csv_corpus):
    path = make_csv_corpus(3)
    (path.parent / "images" / "00001.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"00001\.png of row 1 \(line 3 .*\) is unreadable"):
        CsvPairs(path).image(1)


# ------------------------------------------------------------------------------------------- WebDatasetPairs

def test_wds_reads_pairs_from_brace_pattern(make_wds_shards, pattern_image):
    paths = make_wds_shards((3, 2))
    ds = WebDatasetPairs(str(paths[0].parent / "{00000..00001}.tar"))
    assert isinstance(ds, PairDataset)
    assert len(ds) == 5
    assert [ds.key(i) for i in range(5)] == ["000000000", "000000001", "000000002", "000010000", "000010001"]
    assert ds.caption(3) == "caption 000010000"
    img = ds.image(4)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pattern_image(101)))
    assert WebDatasetPairs(paths).fingerprint == ds.fingerprint  # a list gives the same dataset


def test_wds_jpg_and_grayscale_are_rgb(tmp_path, pattern_image):
    path = tmp_path / "s.tar"
    with webdataset.TarWriter(str(path)) as sink:
        sink.write({"__key__": "a", "jpg": pattern_image(0), "txt": "color jpg"})
        sink.write({"__key__": "b", "png": Image.new("L", (8, 8), 128), "txt": "gray png"})
    ds = WebDatasetPairs(path)
    assert [ds.image(i).mode for i in range(2)] == ["RGB", "RGB"]
    assert ds.image(1).getpixel((0, 0)) == (128, 128, 128)


def test_wds_fingerprint_changes_with_content(make_wds_shards, pattern_image):
    paths = make_wds_shards((3,))
    fp = WebDatasetPairs(paths).fingerprint
    assert WebDatasetPairs(paths).fingerprint == fp
    with webdataset.TarWriter(str(paths[0])) as sink:  # same keys, one caption longer
        for j in range(3):
            key = f"00000{j:04d}"
            sink.write({"__key__": key, "png": pattern_image(j), "txt": f"caption {key}" + "!" * (j == 1)})
    assert WebDatasetPairs(paths).fingerprint != fp


def test_wds_skips_incomplete_keys_with_a_counted_warning(make_wds_shards, pattern_image):
    paths = make_wds_shards((2,), extra={0: [{"__key__": "noimage", "txt": "orphan caption"},
                                             {"__key__": "nocaption", "png": pattern_image(7)}]})
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 keys .*'noimage'"):
        ds = WebDatasetPairs(paths)
    assert len(ds) == 2 and ds.n_skipped == 2


def test_wds_complete_shards_do_not_warn(make_wds_shards):
    paths = make_wds_shards((2,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WebDatasetPairs(paths)


def test_wds_no_shard_found(tmp_path):
    with pytest.raises(DatasetError, match="no shard found"):
        WebDatasetPairs(str(tmp_path / "{00000..00003}.tar"))


def test_wds_some_shards_missing(make_wds_shards):
    paths = make_wds_shards((1,))
    with pytest.raises(DatasetError, match=r"1 of 2 shards do not exist: .*00001\.tar"):
        WebDatasetPairs(str(paths[0].parent / "{00000..00001}.tar"))


def test_wds_shards_without_pairs(make_wds_shards):
    paths = make_wds_shards((0, 0))
    with pytest.raises(DatasetError, match="hold no complete image\\+caption pair"):
        WebDatasetPairs(paths)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, gzip.compress(b"x" * 2048)])
def test_wds_unreadable_shard(tmp_path, content):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"bad\.tar is not a readable uncompressed tar"):
        WebDatasetPairs([path])


def test_wds_duplicate_member(tmp_path, pattern_image):
    path = tmp_path / "dup.tar"
    with webdataset.TarWriter(str(path)) as sink:
        sink.write({"__key__": "k", "png": pattern_image(0), "txt": "one"})
        sink.write({"__key__": "k", "png": pattern_image(1), "txt": "two"})
    with pytest.raises(DatasetError, match=r"dup\.tar: duplicate member 'k\.png'"):
        WebDatasetPairs(path)


def test_wds_unreadable_image_names_shard_and_key(tmp_path, pattern_image):
    path = tmp_path / "s.tar"
    with webdataset.TarWriter(str(path)) as sink:
        sink.write({"__key__": "good", "png": pattern_image(0), "txt": "fine"})
        sink.write({"__key__": "broken", "jpg": b"\xff\xd8 not really a jpeg", "txt": "bad"})
    ds = WebDatasetPairs(path)
    ds.image(0)
    with pytest.raises(DatasetError, match=re.escape(f"image of key 'broken' in shard {path}")):
        ds.image(1)


# ------------------------------------------------------------------------------------------------ CelebA


