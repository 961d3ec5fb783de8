"""CSV files and text lists as spreadsheets and editors save them: a byte-order mark, Windows
or old-Mac line ends, quoted fields."""

import json

import pytest
from cnnsuite.tasks.localization2d.readers import read_csv_labels, read_cub

from cnnsuite.data import read_split_lists
from cnnsuite.data.labels import LABELS_CSV, read_labels_csv
from cnnsuite.data.textfiles import read_csv, read_lines
from cnnsuite.errors import BadFileError, ConfigError

EXCEL_CSV = '\ufeff"image","label"\r\n"a.nii.gz","sick"\r\n"b.nii.gz","well, really"\r\n'


def test_text_files_read_as_excel_and_other_editors_write_them(tmp_path):
    (tmp_path / "labels.csv").write_bytes(EXCEL_CSV.encode("utf-8"))
    assert read_csv(tmp_path / "labels.csv") == [
        {"image": "a.nii.gz", "label": "sick"},
        {"image": "b.nii.gz", "label": "well, really"},
    ]
    (tmp_path / "list.txt").write_bytes("\ufeffa/1.png\r\n\r\nb/2.png\rc/3.png  \n".encode())
    assert read_lines(tmp_path / "list.txt") == ["a/1.png", "", "b/2.png", "c/3.png"]


def test_a_labels_csv_saved_by_excel_is_read(tmp_path):
    (tmp_path / LABELS_CSV).write_bytes(EXCEL_CSV.encode("utf-8"))
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert read_labels_csv(tmp_path, "image") == (["sick", "well, really"], {"a.nii.gz": 0, "b.nii.gz": 1}, False)


def test_split_lists_saved_with_a_byte_order_mark_and_windows_line_ends_are_read(tmp_path):
    for stage in ("train", "val", "test"):
        (tmp_path / f"{stage}.txt").write_bytes(f"\ufeff{stage}/1.png\r\n{stage}/2.png\r\n".encode())
    assert read_split_lists(tmp_path)["val"] == ["val/1.png", "val/2.png"]


def test_box_labels_and_cub_lists_saved_by_excel_or_windows_are_read(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "labels.csv").write_bytes(
        '\ufeff"image","label","x1","y1","x2","y2"\r\n"a.png","bird",1,2,30,40\r\n'.encode()
    )
    names, samples, errors = read_csv_labels(tmp_path)
    assert (names, [s.box for s in samples], errors) == (["bird"], [(1.0, 2.0, 30.0, 40.0)], [])

    (tmp_path / "images" / "001.Gull").mkdir(parents=True)
    (tmp_path / "images" / "001.Gull" / "g.jpg").write_bytes(b"")
    for name, text in {
        "classes.txt": "1 001.Gull",
        "images.txt": "1 001.Gull/g.jpg",
        "image_class_labels.txt": "1 1",
        "bounding_boxes.txt": "1 3.0 4.0 10.0 20.0",
        "train_test_split.txt": "1 1",
    }.items():
        (tmp_path / name).write_bytes(f"\ufeff{text}\r\n".encode())
    names, samples, errors, fixed = read_cub(tmp_path)
    assert names == ["001.Gull"] and samples[0].box == (3.0, 4.0, 13.0, 24.0) and not errors
    assert fixed == {"images/001.Gull/g.jpg": "train"}


def test_a_sample_in_two_split_lists_or_twice_in_a_label_table_is_one_line_naming_it(tmp_path):
    """A sample listed in train.txt and test.txt was trained on and scored as unseen; a second
    row of labels.csv for one sample silently replaced the first row's labels. Each is named."""
    lists = {"train": "cat/0.jpg\ncat/1.jpg\n", "val": "cat/2.jpg\n", "test": "cat/3.jpg\ncat/0.jpg\n"}
    for stage, text in lists.items():
        (tmp_path / f"{stage}.txt").write_text(text)
    with pytest.raises(ConfigError, match=r"\{train,val,test\}\.txt: 'cat/0\.jpg' is in train and test; expected"):
        read_split_lists(tmp_path)
    (tmp_path / "val.txt").write_text("cat/2.jpg\ncat/2.jpg\n")
    (tmp_path / "test.txt").write_text("cat/3.jpg\n")
    with pytest.raises(ConfigError, match=r"'cat/2\.jpg' is twice in val"):
        read_split_lists(tmp_path)
    (tmp_path / "val.txt").unlink()  # train and test alone (validation is drawn from train)
    assert read_split_lists(tmp_path) == {"train": ["cat/0.jpg", "cat/1.jpg"], "test": ["cat/3.jpg"]}
    (tmp_path / "test.txt").rename(tmp_path / "val.txt")  # no test list: no test score to give
    with pytest.raises(ConfigError, match=r"found train, val split lists but not test; expected train, val and test"):
        read_split_lists(tmp_path)

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / LABELS_CSV).write_text("image,lab\na.png,x\nb.png,y\n")  # a typo in label
    with pytest.raises(
        ConfigError, match=r"column lab: 'x'; expected 0 or 1 \(.*a column of class names is headed label\)"
    ):
        read_labels_csv(tmp_path, "image")
    (tmp_path / LABELS_CSV).write_text("image,label\na.png,x\nb.png,y\na.png,y\n")
    with pytest.raises(ConfigError, match=r"labels\.csv, line 4: 'a\.png' again \(line 2 has it\); expected one row"):
        read_labels_csv(tmp_path, "image")


@pytest.mark.parametrize(
    ("rows", "found"),
    [
        ('a.png,x\nb.png,"y\nc.png,z\nd.png,x\n', r"line 3: unexpected end of data; expected a quoted field closed"),
        ('a.png,x\nb.png,"y"z\n', r"line 3: ',' expected after '\"'; expected a quoted field closed on its row"),
        ('a.png,x\nb.png,"y\nc.png",z\n', r"line 3: a quoted field runs on over the next lines; expected one line"),
        ('a.png,x,"note\nb.png",y\n', r"line 2: a quoted field runs on over the next lines; expected one line"),
    ],
)
def test_a_quote_left_open_in_a_csv_file_is_named_by_its_row(tmp_path, rows, found):
    """An open quote made the rest of the file one label: localization2d said row 7's numbers
    were wrong and printed every later row, and with ``on_bad_file: skip`` trained on the rows
    before it, the rest gone without a word."""
    (tmp_path / "labels.csv").write_text("image,label\n" + rows)
    with pytest.raises(ConfigError, match=rf"labels.csv {found}"):
        read_csv(tmp_path / "labels.csv", ("image", "label"))
    (tmp_path / "labels.csv").write_text('image,label\n"a.png","x, y"\n')
    assert read_csv(tmp_path / "labels.csv", ("image", "label")) == [{"image": "a.png", "label": "x, y"}]


def test_a_csv_row_is_named_by_its_line_past_blank_lines(tmp_path):
    """A blank line is skipped, and the rows after it keep their own line numbers."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / LABELS_CSV).write_text("image,label\na.png,cat\n\n\nmissing.png,dog\n")
    assert [row.line for row in read_csv(tmp_path / LABELS_CSV)] == [2, 5]
    with pytest.raises(BadFileError, match=r"labels\.csv, line 5: .*missing\.png does not exist"):
        read_labels_csv(tmp_path, "image")


def test_a_csv_row_with_more_values_than_the_header_is_one_line_naming_it(tmp_path):
    """A row's values past the header's last column were dropped without a word: several labels
    written as ``a.png,beach,sunset`` trained on ``beach`` alone. Empty cells past it (a
    spreadsheet's trailing commas) still read."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / LABELS_CSV).write_text("image,label\na.png,beach,,\nb.png,beach,sunset\n")
    with pytest.raises(ConfigError, match=r"labels\.csv line 3: 3 values, 'sunset' under no name of the") as err:
        read_labels_csv(tmp_path, "image")
    # several labels go in one cell separated by ';': quoting "beach,sunset" would make it one class
    assert "separated by ';'" in str(err.value) and "quote" not in str(err.value)
    from cnnsuite.tasks.multispectral3d.readers import read_labels_table

    (tmp_path / "table.csv").write_text("patch,label\np1,Forest,Water\n")
    with pytest.raises(ConfigError, match=r"table\.csv line 2: .*'Water' under no name .* separated by ';'"):
        read_labels_table(tmp_path / "table.csv", ["p1"])
    (tmp_path / "boxes.csv").write_text("file,label\na.png,beach,1\n")
    with pytest.raises(ConfigError, match=r'quote a value that holds a comma: "a, b"'):
        read_csv(tmp_path / "boxes.csv")
    (tmp_path / LABELS_CSV).write_text("image,label\na.png,beach,,\nb.png,sunset\n")
    assert read_labels_csv(tmp_path, "image") == (["beach", "sunset"], {"a.png": 0, "b.png": 1}, False)
    # a file of one 0/1 column per class has no label cell to hold several: a class needs its column
    (tmp_path / LABELS_CSV).write_text("image,beach,sunset\na.png,1,0,1\n")
    with pytest.raises(
        ConfigError, match=r"'1' under no name .*\(a class's 0/1 value goes under its own column"
    ) as err:
        read_labels_csv(tmp_path, "image")
    assert "separated by" not in str(err.value)


def test_a_csv_value_under_an_unnamed_or_twice_named_column_is_one_line_naming_it(tmp_path):
    """A header ending in a comma (``image,label,``, a spreadsheet's export) names a column of no
    name, whose values no reader looks at, and a column named twice keeps only the second's
    value: either way a value was dropped without a word. Empty cells there still read."""
    (tmp_path / "boxes.csv").write_text("file,label,\na.png,cat,\nb.png,dog,fox\n")
    with pytest.raises(ConfigError, match=r"boxes\.csv line 3: 3 values, 'fox' under no name of the header's"):
        read_csv(tmp_path / "boxes.csv")
    (tmp_path / "boxes.csv").write_text("file,label,\na.png,cat,\n")
    assert [dict(row) for row in read_csv(tmp_path / "boxes.csv")] == [{"file": "a.png", "label": "cat", "": ""}]
    (tmp_path / "boxes.csv").write_text("file,label,label\na.png,cat,dog\n")
    with pytest.raises(ConfigError, match=r"boxes\.csv: column label named twice in its header"):
        read_csv(tmp_path / "boxes.csv")


def test_a_split_file_saved_by_a_windows_editor_reads_and_one_not_utf8_is_one_line(tmp_path):
    from cnnsuite.data.splits import load_splits

    lists = '{"train": ["caf\u00e9/1.png"], "val": [], "test": ["b/2.png"]}'
    (tmp_path / "split.json").write_bytes("\ufeff".encode() + lists.encode())
    assert load_splits(tmp_path / "split.json")["train"] == ["caf\u00e9/1.png"]
    (tmp_path / "split.json").write_bytes(lists.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"split.json: cannot read the split lists \('utf-8' codec can't decode"):
        load_splits(tmp_path / "split.json")


def folder_and_outside(tmp_path, outside_mode: str):
    """``(data folder, folder beside it)``: gray ``imgs/b.png`` and ``imgs/c.png`` in the first,
    an ``a.png`` of ``outside_mode`` in the second, which a label file may name through ``..``."""
    from PIL import Image

    folder, outside = tmp_path / "data", tmp_path / "outside"
    for where in (folder / "imgs", outside):
        where.mkdir(parents=True)
    for name in ("b.png", "c.png"):
        Image.new("L", (12, 12)).save(folder / "imgs" / name)
    Image.new(outside_mode, (12, 12)).save(outside / "a.png")
    return folder, outside


@pytest.mark.parametrize("listed", ["../outside/a.png", "/tmp/elsewhere/a.png"])
def test_a_sample_a_label_table_names_outside_the_data_folder_is_refused(tmp_path, listed):
    """A downloaded dataset's labels.csv (or annotation file) naming ``/home/me/private.jpg`` or
    ``../x.png`` had the suite read that file, and ``cnnsuite prepare`` copy it into shards to share."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    folder, outside = folder_and_outside(tmp_path, "L")
    listed = listed if listed.startswith("..") else str(outside / "a.png")
    (folder / LABELS_CSV).write_text(f"image,label\n{listed},x\nimgs/b.png,y\nimgs/c.png,x\n")
    with pytest.raises(BadFileError, match=rf"sample '{listed}' lies outside the data folder"):
        RecognitionDataModule(data_dir=str(folder), data_root=str(tmp_path / "cache")).setup("fit")


@pytest.mark.parametrize("listed", ["../outside/a.png", "../outside/none.png"])
def test_a_localization_row_naming_an_image_outside_the_data_folder_is_refused_before_it_is_looked_at(tmp_path, listed):
    """localization2d's labels.csv naming ``../outside/a.png`` beside a row of a missing image:
    every good row's image is opened to name all there is to fix at once, so the outside file's
    size (a box past its 12x12 pixels) reached the message, and whether such a file exists
    (``does not exist``) was told. The row is refused as it is read, the same words whether the
    file exists or not."""
    from cnnsuite.tasks.localization2d.datamodule import LocalizationDataModule

    folder, _ = folder_and_outside(tmp_path, "RGB")
    rows = [f"{listed},x,1,1,25,25", "imgs/missing.png,x,1,1,5,5", "imgs/b.png,y,1,1,5,5", "imgs/c.png,x,1,1,5,5"]
    (folder / LABELS_CSV).write_text("\n".join(["image,label,x1,y1,x2,y2", *rows]) + "\n")
    with pytest.raises(BadFileError) as raised:
        LocalizationDataModule(data_dir=str(folder), data_root=str(tmp_path / "cache"))
    message = str(raised.value)
    assert f"line 2: image '{listed}' lies outside the data folder; expected a path inside it" in message
    assert "image 'imgs/missing.png' does not exist" in message and "12x12" not in message


def test_an_annotation_naming_an_image_outside_the_data_folder_is_refused_before_it_is_opened(tmp_path):
    """localization2d's labels.csv and a COCO file naming ``../outside/a.png``: the datamodule
    decided the run's channels from that file's header (and COCO's reader found its size there)
    before the ids were checked at setup. Each is refused as it is read, the file left alone."""
    from cnnsuite.tasks.detection2d.datamodule import DetectionDataModule
    from cnnsuite.tasks.localization2d.datamodule import LocalizationDataModule

    folder, _ = folder_and_outside(tmp_path, "RGB")
    rows = ["image,label,x1,y1,x2,y2", "../outside/a.png,x,1,1,5,5", "imgs/b.png,y,1,1,5,5", "imgs/c.png,x,1,1,5,5"]
    (folder / LABELS_CSV).write_text("\n".join(rows) + "\n")
    with pytest.raises(BadFileError, match=r"line 2: image '\.\./outside/a\.png' lies outside the data folder"):
        LocalizationDataModule(data_dir=str(folder), data_root=str(tmp_path / "cache"))
    (folder / LABELS_CSV).unlink()
    images = [
        {"id": i, "file_name": name} for i, name in enumerate(["../outside/a.png", "imgs/b.png", "imgs/c.png"], 1)
    ]
    boxes = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 4, 4]} for i in (1, 2, 3)]
    coco = {"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "x"}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"image id 1: file_name '\.\./outside/a\.png' lies outside the data"):
        DetectionDataModule(data_dir=str(folder), data_root=str(tmp_path / "cache"))


def test_a_csv_whose_first_unnamed_column_numbers_its_rows_reads_without_it(tmp_path):
    """pandas' ``to_csv`` (by default) and R's ``write.csv`` write each row's number first, under
    a column of no name: those numbers are no value of the data, so the file reads as without
    them. Anything else there is still a value under no name, refused."""
    pandas, r = ",image,label\n0,a.png,cat\n1,b.png,dog\n", '"","image","label"\n"1","a.png","cat"\n"2","b.png","dog"\n'
    for text in (pandas, r):
        (tmp_path / "labels.csv").write_text(text)
        rows = [{k: v for k, v in row.items() if k} for row in read_csv(tmp_path / "labels.csv")]
        assert rows == [{"image": "a.png", "label": "cat"}, {"image": "b.png", "label": "dog"}]
    (tmp_path / "labels.csv").write_text(",image,label\nbeach,a.png,cat\n")
    with pytest.raises(ConfigError, match=r"labels\.csv line 2: 3 values, 'beach' under no name"):
        read_csv(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("image,,label\na.png,3,cat\n")
    with pytest.raises(ConfigError, match=r"labels\.csv line 2: 3 values, '3' under no name"):
        read_csv(tmp_path / "labels.csv")


def test_json_nested_past_the_recursion_limit_is_one_line_naming_the_file(tmp_path):
    """A few kilobytes of ``[`` make ``json.loads`` raise ``RecursionError``: a downloaded
    annotation, split or metadata file so nested is a bad file, not a bug's traceback."""
    from cnnsuite.tasks.multispectral3d.readers import METADATA, read_metadata_labels

    from cnnsuite.data.coco import read_categories
    from cnnsuite.data.prepare import RECORD, check_record
    from cnnsuite.data.shards.verify import read_verified
    from cnnsuite.data.splits import load_splits

    deep = "[" * 100_000 + "]" * 100_000
    for name in ("train.json", "split.json", f"p/p{METADATA}"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(deep)
    with pytest.raises(BadFileError, match=r"train\.json: not valid JSON \(nested too deeply"):
        read_categories(tmp_path / "train.json")
    with pytest.raises(ConfigError, match=r"split\.json: cannot read the split lists \(nested too deeply"):
        load_splits(tmp_path / "split.json")
    with pytest.raises(BadFileError, match=rf"p{METADATA}: cannot read .*nested too deeply"):
        read_metadata_labels(tmp_path, ["p"], tmp_path / "labels.csv")
    # the records the suite keeps beside data it generated or copied, were one tampered with
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / RECORD).write_text(deep)
    with pytest.raises(ConfigError, match=r"generated: no readable record of how it was generated"):
        check_record(tmp_path / "generated", {"default_size": 10})
    assert read_verified(tmp_path / "split.json") == {}
