"""Tests of mmlib.data.corpora: the CSV/TSV and webdataset adapters, their fingerprints and their error messages."""

from __future__ import annotations

import gzip
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from mmlib.core.errors import MmlibError
from mmlib.data.corpora import CsvPairs, WebDatasetPairs, open_pairs
from mmlib.data.protocol import DatasetError, PairDataset, validate_caption


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


@pytest.mark.parametrize(("content", "message"), [
    (b"", r"bad\.tar is empty \(0 bytes\)"),
    (b"garbage" * 100, r"bad\.tar is not a readable uncompressed tar"),
    (gzip.compress(b"x" * 2048, mtime=0), r"bad\.tar is gzip-compressed; decompress it"),
])
def test_wds_unreadable_shard(tmp_path, content, message):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
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


# ------------------------------------------------------------------------------- bad inputs (issue 15)


@pytest.mark.parametrize("raw, message", [
    ("", "empty 'cap'"), ("   \n\t ", "empty 'cap'"), (b"  ", "empty 'cap'"),
    (b"caf\xe9", "not valid UTF-8"), ("a\x00b", "U\\+0000"), ("bell\x07", "U\\+0007"), ("x\x7f", "U\\+007F"),
])
def test_validate_caption_rejects_every_class(raw, message):
    with pytest.raises(DatasetError, match=f"^somewhere: .*{message}"):
        validate_caption(raw, "somewhere", "cap")


def test_validate_caption_keeps_valid_text():
    assert validate_caption("  two\nlines\tand tab ", "w") == "two\nlines\tand tab"
    assert validate_caption("café ☕".encode(), "w") == "café ☕"


@pytest.mark.parametrize("caption, message", [('"   "', "empty 'title'"), ('"bad\x01char"', "U\\+0001")])
def test_csv_rejects_blank_or_control_caption_with_shared_rule(tmp_path, caption, message):
    path = write(tmp_path / "x.csv", f"filepath,title\na.png,ok\nb.png,{caption}\n")
    with pytest.raises(DatasetError, match=rf"x\.csv, line 3: .*{message}"):
        CsvPairs(path)


def test_csv_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("filepath,title\na.png,fine\nb.png,caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.csv, line 3, column 10: byte 0xe9 is not valid UTF-8; re-encode"):
        CsvPairs(path)


def test_csv_directory_is_not_missing(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DatasetError, match=r"d\.csv is a directory"):
        CsvPairs(tmp_path / "d.csv")


@pytest.mark.parametrize("kwargs, message", [
    (dict(path=None), "path must be a path"), (dict(path=""), "empty path"),
    (dict(delimiter=";;"), "delimiter must be one character"), (dict(delimiter='"'), "delimiter must be one"),
    (dict(image_key="title"), "both 'title'"), (dict(caption_key=""), "caption_key must be"),
    (dict(image_root="nowhere"), "image_root .*nowhere does not exist"),
])
def test_csv_bad_arguments(make_csv_corpus, kwargs, message):
    kwargs = {"path": make_csv_corpus(2), **kwargs}
    with pytest.raises(DatasetError, match=message):
        CsvPairs(**kwargs)


def test_csv_image_root_that_is_a_file(make_csv_corpus):
    path = make_csv_corpus(2)
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        CsvPairs(path, image_root=path)


def test_csv_duplicate_column(tmp_path):
    with pytest.raises(DatasetError, match="names column 'title' 2 times"):
        CsvPairs(write(tmp_path / "x.csv", "filepath,title,title\na.png,one,two\n"))


def test_csv_image_that_is_a_directory(make_csv_corpus):
    path = make_csv_corpus(2)
    image = path.parent / "images" / "00001.png"
    image.unlink()
    image.mkdir()
    with pytest.raises(DatasetError, match=r"00001\.png is a directory.*row 1"):
        CsvPairs(path).image(1)


@pytest.mark.parametrize("index", ["1", 1.0, True, -1])
def test_bad_index_is_a_dataset_error(make_csv_corpus, index):
    ds = CsvPairs(make_csv_corpus(2))
    with pytest.raises(DatasetError, match="index"):
        ds.caption(index)
    with pytest.raises(IndexError):
        ds.image(index)


@pytest.fixture
def bomb(monkeypatch):
    """Lower PIL's pixel limit so that a 20x20 image is a 'decompression bomb' (error) or near one (warning)."""
    from PIL import Image as PILImage

    def set_limit(pixels):
        monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", pixels)
    return set_limit


@pytest.mark.parametrize("limit", [100, 300])  # 400 px: > 2x100 -> DecompressionBombError; > 300 -> the warning
def test_csv_decompression_bomb_names_the_file(make_csv_corpus, bomb, limit):
    ds = CsvPairs(make_csv_corpus(2))
    bomb(limit)
    with pytest.raises(DatasetError, match=r"00001\.png of row 1 \(line 3 .*\) is too large to decode safely"):
        ds.image(1)


def test_wds_decompression_bomb_names_shard_and_key(make_wds_shards, bomb):
    ds = WebDatasetPairs(make_wds_shards((2,)))
    bomb(300)
    with pytest.raises(DatasetError, match=r"key '000000001' in shard .*00000\.tar is too large"):
        ds.image(1)


@pytest.mark.parametrize("caption, message", [(b"", "empty"), (b"  \n ", "empty"), (b"\xff\xfe", "not valid UTF-8"),
                                              (b"a\x1bb", "U\\+001B")])
def test_wds_rejects_captions_as_csv_does(tmp_path, pattern_image, caption, message):
    path = tmp_path / "s.tar"
    with webdataset.TarWriter(str(path)) as sink:
        sink.write({"__key__": "good", "png": pattern_image(0), "txt": "fine"})
        sink.write({"__key__": "bad", "png": pattern_image(1), "txt": caption})
    with pytest.raises(DatasetError, match=rf"shard .*s\.tar, key 'bad': .*{message}"):
        WebDatasetPairs(path)


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _cut_points(path: Path) -> dict[str, int]:
    members = _members(path)
    second_png = next(m for m in members if m.name == "000000001.png")
    last = members[-1]
    return {"in_header": second_png.offset + 100, "in_data": second_png.offset_data + 10,
            "at_boundary": second_png.offset, "in_last_data": last.offset_data + 1}


@pytest.mark.parametrize("cut", ["in_header", "in_data", "at_boundary", "in_last_data"])
def test_wds_truncated_shard_is_an_error_naming_shard_and_offset(make_wds_shards, cut):
    path = make_wds_shards((3,))[0]
    at = _cut_points(path)[cut]
    path.write_bytes(path.read_bytes()[:at])
    with pytest.raises(DatasetError, match=r"00000\.tar is truncated at byte \d+: .*on_truncated='skip'") as err:
        WebDatasetPairs(path)
    assert "lacking" not in str(err.value)


# members are written {key}.json, {key}.png, {key}.txt: each cut leaves the sample being written incomplete
@pytest.mark.parametrize("cut, kept", [("in_header", 1), ("in_data", 1), ("at_boundary", 1), ("in_last_data", 2)])
def test_wds_truncated_shard_skipped_on_request_is_counted(make_wds_shards, cut, kept):
    paths = make_wds_shards((3, 2))
    at = _cut_points(paths[0])[cut]
    paths[0].write_bytes(paths[0].read_bytes()[:at])
    with pytest.warns(UserWarning, match=r"1 truncated shard\(s\) \(first: .*00000\.tar at byte \d+\)") as record:
        ds = WebDatasetPairs(paths, on_truncated="skip")
    assert not any("lacking" in str(w.message) for w in record)  # not blamed on a missing caption
    assert len(ds) == kept + 2 and ds.n_skipped == 0
    assert ds.truncated == [(str(paths[0]), ds.truncated[0][1])]
    assert ds.n_truncated == 1
    for i in range(len(ds)):
        ds.image(i)
        assert ds.caption(i).startswith("caption")


def test_wds_member_past_end_of_file(make_wds_shards):
    """A member header whose size points beyond the end of the file (the data is missing)."""
    path = make_wds_shards((2,))[0]
    last = _members(path)[-1]
    path.write_bytes(path.read_bytes()[:last.offset_data])  # the header survives, its data does not
    with pytest.raises(DatasetError, match=rf"truncated at byte {last.offset_data}: member '{last.name}'"):
        WebDatasetPairs(path)


def test_wds_corrupt_header_in_the_middle(make_wds_shards):
    path = make_wds_shards((3,))[0]
    second = next(m for m in _members(path) if m.name == "000000001.png")
    data = bytearray(path.read_bytes())
    data[second.offset:second.offset + 512] = b"\x13" * 512
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"unreadable tar header at byte {second.offset}"):
        WebDatasetPairs(path, on_truncated="skip")


@pytest.mark.parametrize("shards, message", [
    (None, "shards must be a path"), ("", "empty string"), ([], "no shard given"), ([3], r"shards\[0\] must be"),
])
def test_wds_bad_shard_arguments(shards, message):
    with pytest.raises(DatasetError, match=message):
        WebDatasetPairs(shards)


def test_wds_directory_and_duplicate_shards(make_wds_shards, tmp_path):
    paths = make_wds_shards((1,))
    (tmp_path / "dir.tar").mkdir()
    with pytest.raises(DatasetError, match=r"dir\.tar is a directory, not a \.tar file"):
        WebDatasetPairs([paths[0], tmp_path / "dir.tar"])
    with pytest.raises(DatasetError, match="given twice"):
        WebDatasetPairs([paths[0], paths[0]])
    with pytest.raises(DatasetError, match="on_truncated must be"):
        WebDatasetPairs(paths, on_truncated="ignore")


def test_open_pairs_routes_and_rejects(make_csv_corpus, make_wds_shards, tmp_path):
    assert isinstance(open_pairs(make_csv_corpus(2)), CsvPairs)
    assert isinstance(open_pairs(str(make_wds_shards((1,))[0])), WebDatasetPairs)
    with pytest.raises(DatasetError, match="is a directory; pass a CSV/TSV file or webdataset shards"):
        open_pairs(tmp_path)
    with pytest.raises(DatasetError, match=r"neither a CSV/TSV file .* nor webdataset shards"):
        open_pairs(tmp_path / "pairs.json")
    with pytest.raises(DatasetError, match="pairs must be a path"):
        open_pairs(3)


def test_dataset_error_is_an_mmlib_input_error():
    from mmlib.core.errors import InputError
    assert issubclass(DatasetError, InputError) and issubclass(DatasetError, MmlibError)
    assert issubclass(DatasetError, ValueError)


def test_wds_every_cut_is_refused_or_loses_nothing(make_wds_shards):
    """Cut a shard at every 64th byte: each cut is an error naming the shard and where it breaks, unless the
    cut falls after the first full zero block of tar's end-of-archive marker (nothing is lost there).
    """
    path = make_wds_shards((3,))[0]
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    end_of_data = members[-1].offset_data + -(-members[-1].size // 512) * 512
    for at in range(1, len(data), 64):
        path.write_bytes(data[:at])
        if at >= end_of_data + 512:
            assert len(WebDatasetPairs(path)) == 3
            continue
        with pytest.raises(DatasetError) as err:
            WebDatasetPairs(path)
        message = str(err.value)
        assert str(path) in message, message
        assert re.search(r"truncated at byte \d+|only \d+ bytes|unreadable tar header at byte \d+", message), message
