"""Using a trained checkpoint: predict on raw files and compare checkpoints, on a 2D task
(recognition2d) and a 3D task (biomedical3d). detection2d's, localization2d's, video3d's and
multispectral3d's own predictions are tested in their task files."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from conftest import fit, make_image_folder
from test_biomedical3d import SMALL, make_volume_folder
from test_checkpoints import tampered

from cnnsuite.cli import main
from cnnsuite.data.errors import BadFileError
from cnnsuite.data.inputs import Input
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.trust.checkpoint import rebuild
from cnnsuite.use.predict import Predictor, picture_names


@pytest.fixture(scope="module")
def recognition(tmp_path_factory):
    """A short recognition2d run on a user folder: ``(image folder, run folder)``."""
    tmp = tmp_path_factory.mktemp("recognition")
    folder = make_image_folder(tmp / "images", per_class=10)
    run = fit("recognition2d", tmp, "--data.data_dir", str(folder), "--data.batch_size", "8",
              "--trainer.max_epochs", "2", "--evaluate", "false")  # fmt: skip
    return folder, run


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_a_single_image(recognition, tmp_path, capsys):
    """One image of the test split: its line holds the model's probabilities under their
    own class names (as the test loader's sample gives them) and names their argmax."""
    folder, run = recognition
    ckpt = run / "checkpoints" / "best.ckpt"
    model, datamodule = rebuild(ckpt, data={"data_dir": folder})
    test = datamodule.datasets["test"]
    image = folder / test.ids[0]
    main(["predict", "--ckpt", str(ckpt), "--input", str(image), "--out", str(tmp_path)])
    (line,) = read_lines(tmp_path / "predictions.jsonl")
    with torch.no_grad():
        expected = model(test[0][0][None]).softmax(1)[0]
    assert line["path"] == str(image) and list(line["probabilities"]) == ["cat", "dog", "owl"]
    got = torch.tensor([line["probabilities"][c] for c in ("cat", "dog", "owl")])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert line["class"] == ("cat", "dog", "owl")[int(expected.argmax())]
    assert line["score"] == pytest.approx(float(expected.max()), abs=1e-6)
    assert (tmp_path / "pictures" / f"{image.stem}.png").stat().st_size > 0
    assert "predicted 1 of 1 inputs" in capsys.readouterr().out
    # another input predicted into the same folder: its pictures only, not the earlier run's beside them
    other = folder / test.ids[1]
    main(["predict", "--ckpt", str(ckpt), "--input", str(other), "--out", str(tmp_path)])
    assert [p.name for p in (tmp_path / "pictures").iterdir()] == [f"{other.stem}.png"]
    # a pictures/ that links elsewhere: predict would empty it and write where it leads; refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.png").write_bytes(b"the user's")
    shutil.rmtree(tmp_path / "pictures")
    (tmp_path / "pictures").symlink_to(elsewhere)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--ckpt", str(ckpt), "--input", str(other), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'pictures'}: a symbolic link where this command writes" in err
    assert [p.name for p in elsewhere.iterdir()] == ["keep.png"]
    assert (elsewhere / "keep.png").read_bytes() == b"the user's"


def test_a_folder_with_a_bad_file_predicts_the_others_and_names_it(recognition, tmp_path, capsys):
    folder, run = recognition
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "owl", inputs / "owl")
    (inputs / "owl" / "broken.png").write_bytes(b"\x89PNG not really")
    shutil.copy(inputs / "owl" / "0.png", inputs / "owl" / "1.png")  # 1.jpg is there too
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    main(["predict", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(inputs), "--out", str(out)])
    lines = read_lines(out / "predictions.jsonl")
    assert len(lines) == 12  # eleven owls and the broken file; the text file is not an input
    (bad,) = [line for line in lines if "error" in line]
    assert bad["path"].endswith("broken.png") and "broken.png" in bad["error"]
    assert all("class" in line for line in lines if line is not bad)
    pictures = {p.name for p in (out / "pictures").iterdir()}  # named by their stem, unless two share it
    assert pictures == {"owl__1.jpg.png", "owl__1.png.png"} | {f"owl__{i}.png" for i in (0, *range(2, 10))}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 11 and summary["failed"] == [bad["path"]] and len(summary["ignored"]) == 1
    printed = capsys.readouterr().out
    assert "predicted 11 of 12 inputs; 1 could not be read" in printed and "broken.png" in printed


def test_picture_names_stay_unique_where_an_input_name_holds_the_separator():
    """``a/b.png`` and ``a__b.png`` both flatten to ``a__b``: one picture would replace the other."""
    root = Path("/inputs")
    paths = [root / "a" / "b.png", root / "a__b.png", root / "c.jpg", root / "c.png", root / "d.png"]
    names = picture_names(paths, root)
    assert list(names.values()) == ["a__b.png.png", "a__b.png-2.png", "c.jpg.png", "c.png.png", "d.png"]


def test_an_output_folder_inside_the_input_folder_or_a_file_is_refused(recognition, tmp_path, capsys):
    """Pictures written among the inputs would replace an input of the same name and be
    predicted by the next run: ``--out`` the input folder, or inside it, is one line, and
    nothing is written."""
    folder, run = recognition
    inputs = tmp_path / "photos"
    shutil.copytree(folder / "owl", inputs)
    before = {p: p.read_bytes() for p in inputs.rglob("*")}
    ckpt = run / "checkpoints" / "best.ckpt"
    for out in (inputs, inputs / "predictions"):
        with pytest.raises(SystemExit):
            main(["predict", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(out)])
        assert capsys.readouterr().err.strip() == (
            f"cnnsuite predict: error: --out {out}: inside the input folder {inputs}, where the pictures would "
            "replace inputs of the same names and be read as inputs by the next run; name a folder outside it"
        )
    assert {p: p.read_bytes() for p in inputs.rglob("*")} == before
    taken = tmp_path / "keep.txt"
    taken.write_text("the user's")
    for command in (["predict", "--input", str(inputs)], ["evaluate", "--data.data_dir", str(folder)],
                    ["inspect", "--data.data_dir", str(folder)]):  # fmt: skip
        with pytest.raises(SystemExit):
            main([command[0], "--ckpt", str(ckpt), *command[1:], "--out", str(taken)])
        assert (
            capsys.readouterr().err.strip()
            == f"cnnsuite {command[0]}: error: --out {taken}: is a file; expected a folder"
        )
    assert taken.read_text() == "the user's"


def test_predict_agrees_with_evaluate_on_the_test_split(recognition, tmp_path):
    """The same files, through predict's reader and through the test loader, give the same
    probabilities, and predict's classes score what evaluate scored."""
    folder, run = recognition
    ckpt = run / "checkpoints" / "best.ckpt"
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    model, datamodule = rebuild(ckpt, data={"data_dir": folder})
    test = datamodule.datasets["test"]
    predictor = Predictor(ckpt, accelerator="cpu")
    inputs = [predictor.read(datamodule.root / sample_id) for sample_id in test.ids]
    predictions = predictor.predict(inputs)
    with torch.no_grad():
        expected = model(torch.stack([test[i][0] for i in range(len(test))])).softmax(1)
    got = torch.tensor([[p["probabilities"][c] for c in model.class_names] for p in predictions])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    hits = [p["class"] == sample_id.split("/")[0] for p, sample_id in zip(predictions, test.ids, strict=True)]
    assert sum(hits) / len(hits) == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_predict_needs_only_the_checkpoint(recognition, tmp_path):
    """The training folder gone (another machine), the checkpoint still predicts."""
    folder, run = recognition
    ckpt = shutil.copy(run / "checkpoints" / "best.ckpt", tmp_path / "moved.ckpt")
    image = shutil.copy(folder / "cat" / "0.png", tmp_path / "cat.png")
    expected = Predictor(ckpt, "cpu").predict([Predictor(ckpt, "cpu").read(image)])
    hidden = folder.rename(folder.with_name("images_moved_away"))
    try:
        predictor = Predictor(ckpt, "cpu")
        assert predictor.predict([predictor.read(image)]) == expected
    finally:
        hidden.rename(folder)


def test_predict_refuses_a_checkpoint_naming_a_foreign_class(recognition, tmp_path, capsys):
    _, run = recognition

    def edit(checkpoint):
        checkpoint["cnnsuite_classes"]["model"] = "collections.OrderedDict"

    evil = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "evil.ckpt", edit)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--ckpt", str(evil), "--input", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "names 'collections.OrderedDict' as its TaskModule; refused" in capsys.readouterr().err


def test_several_checkpoints_give_one_comparison_table(recognition, tmp_path, capsys):
    folder, run = recognition
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    main(["evaluate", "--ckpt", str(best), str(last), "--data.data_dir", str(folder), "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert [row["checkpoint"] for row in rows] == [str(best), str(last)]
    for row in rows:
        own = json.loads((tmp_path / row["folder"] / "metrics.json").read_text())
        assert row["metrics"] == own and row["test_samples"] == 6
    table = (tmp_path / "comparison.md").read_text()
    assert "`test/acc`" in table and f"{rows[1]['metrics']['test/acc']:.4f}" in table
    assert "not comparable" not in table
    assert "| checkpoint |" in capsys.readouterr().out
    # a second file that is no checkpoint is named before the first is evaluated
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt", str(best), str(tmp_path / "gone.ckpt"), "--data.data_dir", str(folder),
              "--out", str(tmp_path / "again")])  # fmt: skip
    assert f"{tmp_path / 'gone.ckpt'}: no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_evaluate_on_a_folder_lacking_a_class_labels_it_by_class_name(recognition, tmp_path):
    """A test folder without one of the model's classes is scored by name: its ``owl``, the
    data's second class, is the model's third, scored as in the whole folder; the class it lacks
    has no score."""
    _, run = recognition
    ckpt = run / "checkpoints" / "best.ckpt"
    whole = make_image_folder(tmp_path / "whole", per_class=3, seed=7)
    other = shutil.copytree(whole, tmp_path / "no_dog")
    shutil.rmtree(other / "dog")
    _, datamodule = rebuild(ckpt, None, {"data_dir": str(other)})
    assert datamodule.class_names == ["cat", "dog", "owl"]
    assert {i.split("/")[0]: label for i, label in datamodule.samples()} == {"cat": 0, "owl": 2}
    # a datamodule that has not listed its samples yet (its channels given, not probed) alike
    unlisted = RecognitionDataModule(data_dir=str(other), channels=3)
    unlisted.follow_classes(["cat", "dog", "owl"])
    assert {i.split("/")[0]: label for i, label in unlisted.samples()} == {"cat": 0, "owl": 2}
    scored = {}
    for folder in (whole, other):
        main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder)])
        scored[folder.name] = json.loads((run / f"evaluation-{folder.name}" / "metrics.json").read_text())
    assert scored["no_dog"]["test/acc/dog"] is None
    assert [scored[f]["test/acc/owl"] for f in ("no_dog", "whole")] == [scored["whole"]["test/acc/owl"]] * 2
    assert "| `test/acc/dog` | n/a |" in (run / "evaluation-no_dog" / "report.md").read_text()


def test_evaluate_on_other_data_tests_all_of_it_and_checks_the_classes(recognition, tmp_path):
    _, run = recognition
    ckpt = run / "checkpoints" / "best.ckpt"
    other = make_image_folder(tmp_path / "new_images", per_class=3, seed=7)
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(other)])
    out = run / "evaluation-new_images"  # beside, never over, the run's own evaluation
    facts = json.loads((out / "evaluation.json").read_text())
    assert facts == {"data": str(other), "test_samples": 9}
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["test/acc"] <= 1.0

    renamed = make_image_folder(tmp_path / "renamed", classes=("cat", "dog", "emu"), per_class=2)
    with pytest.raises(ValueError, match=r"renamed: its class emu is not among the 3 classes"):
        main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(renamed), "--debug"])


def test_a_3d_volume_predicts_as_its_test_split_does(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    run = fit("biomedical3d", tmp_path, *SMALL, "--data.data_dir", str(folder), "--trainer.max_epochs", "1",
              "--data.batch_size", "4", "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    model, datamodule = rebuild(ckpt, data={"data_dir": folder})
    test = datamodule.datasets["test"]
    sample_id = datamodule.splits["test"][0]
    out = tmp_path / "out"
    main(["predict", "--ckpt", str(ckpt), "--input", str(folder / sample_id), "--out", str(out)])
    (line,) = read_lines(out / "predictions.jsonl")
    with torch.no_grad():
        expected = model(test[0]["image"][None]).softmax(1)[0]
    got = torch.tensor([line["probabilities"][c] for c in model.class_names])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert len(list((out / "pictures").glob("*.png"))) == 1


def test_a_non_finite_prediction_is_that_files_error_and_every_line_is_strict_json(recognition, tmp_path, monkeypatch):
    folder, run = recognition
    describe = ClassificationModule.describe_outputs

    def first_of_each_batch_nan(self, outputs, inputs):
        predictions = describe(self, outputs, inputs)
        predictions[0]["score"] = float("nan")
        return predictions

    monkeypatch.setattr(ClassificationModule, "describe_outputs", first_of_each_batch_nan)
    main(["predict", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(folder / "cat"),
          "--out", str(tmp_path), "--batch_size", "4"])  # fmt: skip
    lines = [json.loads(line, parse_constant=pytest.fail) for line in (tmp_path / "predictions.jsonl").open()]
    errors = [line for line in lines if "error" in line]
    assert len(lines) == 10 and len(errors) == 3  # one a batch: 4 + 4 + 2
    assert all(line["error"].endswith("the model's output is not finite (score)") for line in errors)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["predicted"] == 7 and sorted(summary["failed"]) == sorted(line["path"] for line in errors)


def test_predicting_nothing_is_an_error_not_a_result(recognition, tmp_path, capsys):
    """``predicted 0 of 1 inputs; 1 could not be read`` ended with exit status 0, so a script
    chaining on it took it for a result. It is one line and status 2; predictions.jsonl still
    says why each input failed. A folder of no input says what an input would have been."""
    from cnnsuite.data.images import IMAGE_EXTENSIONS

    folder, run = recognition
    ckpt = str(run / "checkpoints" / "best.ckpt")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "readme.txt").write_text("no images here")
    cases = [(tmp_path / "notes.png", f"predicted 0 of 1 inputs; 1 could not be read: {tmp_path / 'notes.png'}: "
              "cannot decode as an image"),
             (tmp_path / "only_text", f"no file this model takes (expected {', '.join(IMAGE_EXTENSIONS)}); ignored 1 "
              "files of other types")]  # fmt: skip
    for given, said in cases:
        out = tmp_path / f"out-{given.stem}"
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--ckpt", ckpt, "--input", str(given), "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1
        assert err.startswith(f"cnnsuite predict: error: --input {given}: {said}")
        assert (out / "summary.json").is_file()
    assert "error" in json.loads((tmp_path / "out-notes" / "predictions.jsonl").read_text())


def test_a_batch_size_below_one_is_one_line(recognition, tmp_path, capsys):
    folder, run = recognition
    for size in ("0", "-3"):  # taken as batches of one without a word
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(folder),
                  "--out", str(tmp_path / "out"), "--batch_size", size])  # fmt: skip
        assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
        assert f"--batch_size {size}: expected a count of inputs a batch, 1 or more" in capsys.readouterr().err
    image = next((folder / "owl").iterdir())  # one, the least there is, predicts
    main(["predict", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(image),
          "--out", str(tmp_path / "out"), "--batch_size", "1", "--no_pictures"])  # fmt: skip
    assert "predicted 1 of 1 inputs" in capsys.readouterr().out


def test_the_summary_line_counts_the_inputs_that_failed():
    """One input that failed is said with its reason; several are counted and named (each
    reason is in predictions.jsonl), not told as the first one's reason."""
    from cnnsuite.use.predict import summary_line

    summary = {"predicted": 3, "failed": ["a.png", "b.png"], "ignored": []}
    line = summary_line(summary, Path("out"), "images", ["a.png: cannot decode", "b.png: cannot decode"])
    assert line.startswith("predicted 3 of 5 inputs; 2 could not be read: a.png, b.png\n")
    line = summary_line({**summary, "failed": ["a.png"]}, Path("out"), "images", ["a.png: cannot decode"])
    assert line.startswith("predicted 3 of 4 inputs; 1 could not be read: a.png: cannot decode\n")


def test_a_picture_name_that_fits_keeps_its_name_whole():
    """A stem of just the bytes a picture name may take is kept as it is; one byte more is cut
    to the limit, keeping its end after ``…``."""
    from cnnsuite.use.predict import PICTURE_STEM_BYTES, shortened

    fits = "a" * PICTURE_STEM_BYTES
    assert shortened(fits) == fits
    cut = shortened("b" + fits)
    assert cut.startswith("…a") and len(cut.encode()) == PICTURE_STEM_BYTES


def test_a_batch_of_many_rows_is_predicted_a_chunk_at_a_time(recognition):
    """A 470 KB video of 36,000 tiny frames is some 4,500 clips, one input: run through the
    network at once, their activations took a predict past 3.6 GB. The rows go through a chunk
    at a time, and the predictions are those of the whole batch."""
    from cnnsuite.training.task import PREDICT_ROWS

    folder, run = recognition
    predictor = Predictor(run / "checkpoints" / "best.ckpt", accelerator="cpu")
    inputs = [predictor.read(path) for path in sorted((folder / "cat").iterdir())] * 20
    network = predictor.model.inference_network()
    seen = []

    def watched(batch):
        seen.append(len(batch))
        return network(batch)

    chunked = predictor.predict(inputs, watched)
    assert len(inputs) > PREDICT_ROWS and max(seen) <= PREDICT_ROWS and sum(seen) == len(inputs)
    with torch.no_grad():
        whole = predictor.model.describe_outputs((network(torch.stack([i.sample for i in inputs])),), inputs)
    assert [p["class"] for p in chunked] == [p["class"] for p in whole]
    assert [p["score"] for p in chunked] == pytest.approx([p["score"] for p in whole], abs=1e-5)


def test_finding_the_inputs_of_a_large_folder_takes_a_look_per_file(tmp_path, monkeypatch):
    """A folder of many files: whether a file lies in a series folder already taken is a set
    look-up, not a scan of every input found so far (time quadratic in the folder's files)."""
    import pathlib

    for i in range(1500):
        (tmp_path / f"{i:05d}.png").touch()
    predictor = Predictor.__new__(Predictor)
    predictor.datamodule = type("Images", (), {"is_input": staticmethod(lambda p: p.suffix == ".png")})()
    comparisons = 0
    equal = pathlib.PurePath.__eq__

    def counted(self, other):
        nonlocal comparisons
        comparisons += 1
        return equal(self, other)

    monkeypatch.setattr(pathlib.PurePath, "__eq__", counted)
    inputs, ignored = predictor.find_inputs(tmp_path)
    monkeypatch.undo()
    assert len(inputs) == 1500 and not ignored
    assert comparisons < 10 * len(inputs)


def test_file_names_that_are_not_utf8_are_predicted_and_said(recognition, tmp_path):
    """A name in another system's encoding (Latin-1 ``café.png`` from an old archive): Python
    keeps its bytes as lone surrogates, which matplotlib refused in a picture's title, ending
    the whole run with a traceback, and a UTF-8 terminal refuses in the summary line."""
    import os
    import subprocess
    import sys

    folder, run = recognition
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(folder / "owl" / "0.png", inputs / os.fsdecode(b"caf\xe9.png"))
    (inputs / os.fsdecode(b"bad\xff.png")).write_bytes(b"not an image")
    out = tmp_path / "out"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    ckpt = str(run / "checkpoints" / "best.ckpt")
    done = subprocess.run([sys.executable, "-m", "cnnsuite", "predict", "--ckpt", ckpt, "--input", str(inputs),
                           "--out", str(out)], capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "predicted 1 of 2 inputs; 1 could not be read: " in done.stdout and "bad\ufffd.png" in done.stdout
    lines = read_lines(out / "predictions.jsonl")  # the path as the file system has it, escaped
    assert [line["path"] for line in lines] == [str(inputs / os.fsdecode(n)) for n in (b"bad\xff.png", b"caf\xe9.png")]
    assert (out / "pictures" / os.fsdecode(b"caf\xe9.png")).stat().st_size > 0


def test_a_folder_nested_past_pythons_recursion_limit_is_walked(tmp_path):
    """rglob walks a tree by recursion: a folder a thousand deep (an archive made so) ended
    predict in a RecursionError traceback. Here the limit is lowered to 100 frames above the
    test's own instead, under a tree 200 deep. Linked folders are still listed, not entered."""
    import sys

    from cnnsuite.data.folders import list_files

    predictor = Predictor.__new__(Predictor)
    predictor.datamodule = type(
        "Images", (), {"is_input": staticmethod(lambda p: p.suffix == ".png" and p.is_file())}
    )()
    (tmp_path / "top.png").touch()
    deep = tmp_path.joinpath(*["a"] * 200)
    deep.mkdir(parents=True)
    (deep / "x.png").touch()
    (tmp_path / "linked").symlink_to(tmp_path / "a")
    frames, frame = 0, sys._getframe()
    while frame is not None:
        frames, frame = frames + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames + 100)
    try:
        inputs, ignored = predictor.find_inputs(tmp_path)
        listed = list_files(tmp_path, [".png"])  # a data folder's listing, training's and evaluation's
    finally:
        sys.setrecursionlimit(limit)
    assert inputs == [deep / "x.png", tmp_path / "top.png"] and not ignored
    assert listed == inputs


def test_picture_names_fit_a_file_systems_limit_however_deep_the_input():
    """A picture is named after its input's path below the folder, flattened: a long file name
    in a sub-folder, or a deep tree, made a name over the 255 bytes a file system takes, and
    predict ended at that picture with 'File name too long'. Long names keep their end."""
    root = Path("/inputs")
    long_file = root / ("album " * 10) / ("é" * 100 + ".jpg")  # 200 bytes of name in a folder
    deep = root.joinpath(*["a"] * 300, "x.png")
    twins = [root / "d" / ("y" * 300 + ".png"), root / "e" / ("y" * 300 + ".png")]
    names = picture_names([long_file, deep, *twins], root)
    assert all(len(name.encode()) <= 255 for name in names.values()), names
    assert names[long_file].endswith("é" * 20 + ".png") and names[deep].endswith("a__a__x.png")
    assert len(set(names.values())) == 4


def test_lines_keep_the_inputs_order_around_a_file_that_cannot_be_read(tmp_path):
    """``predictions.jsonl`` has one line per input, in the order of the inputs: a file that
    cannot be read is said where it lies, after the lines of the readable inputs before it in
    its batch, not ahead of them."""

    def read_input(path):
        if path.name.startswith("bad"):
            raise BadFileError(f"{path}: cannot decode as an image")
        return Input(path, torch.zeros(1))

    predictor = Predictor.__new__(Predictor)
    predictor.datamodule = SimpleNamespace(read_input=read_input)
    predictor.model = SimpleNamespace(
        check_input=lambda item: None,
        predict_inputs=lambda inputs, network=None: [{"class": item.path.stem} for item in inputs],
    )
    paths = [tmp_path / name for name in ("a.png", "b.png", "bad.png", "c.png", "d.png", "e.png", "f.png")]
    for path in paths:
        path.touch()
    records = [record for _, record in predictor.run(paths, batch_size=3)]
    assert [record["path"] for record in records] == [str(path) for path in paths]
    assert [record.get("class") for record in records] == ["a", "b", None, "c", "d", "e", "f"]


def test_hidden_files_are_not_counted_as_ignored_inputs(tmp_path):
    predictor = Predictor.__new__(Predictor)
    predictor.datamodule = SimpleNamespace(is_input=lambda p: p.suffix == ".png")
    (tmp_path / "a.png").touch()
    (tmp_path / "notes.txt").touch()
    (tmp_path / ".DS_Store").touch()
    inputs, ignored = predictor.find_inputs(tmp_path)
    assert inputs == [tmp_path / "a.png"] and ignored == [tmp_path / "notes.txt"]


def test_a_series_folder_given_as_the_input_is_one_input(tmp_path):
    """``--input`` naming a DICOM series folder itself predicts the series, not its slices."""
    predictor = Predictor.__new__(Predictor)
    predictor.datamodule = SimpleNamespace(is_input=lambda p: p.is_dir() and p.name.startswith("series"))
    series = tmp_path / "series1"
    series.mkdir()
    for i in range(3):
        (series / f"{i}.dcm").touch()
    assert predictor.find_inputs(series) == ([series], [])
    assert predictor.find_inputs(tmp_path) == ([series], [])  # found in a folder, taken whole too


def test_checkpoints_of_runs_named_alike_are_compared_in_their_own_folders(tmp_path, monkeypatch):
    """Two runs' ``version_0/checkpoints/best.ckpt`` (two tasks, two machines) share their run
    folder's and their file's names: each is evaluated into its own folder, and a table of
    checkpoints tested on different data says that its figures are not comparable."""
    from cnnsuite.use import evaluate as evaluation

    tested = iter([("digits", 6, 0.5), ("photos", 9, 0.75)])

    def evaluate(ckpt, out_dir, accelerator, data):
        data_dir, samples, acc = next(tested)
        out_dir.mkdir(parents=True, exist_ok=True)  # evaluate writes into its own earlier folder
        (out_dir / "evaluation.json").write_text(json.dumps({"data": data_dir, "test_samples": samples}))
        (out_dir / "metrics.json").write_text(json.dumps({"test/acc": acc}))
        return {"test/acc": acc}

    monkeypatch.setattr(evaluation, "load_checkpoint", lambda ckpt: None)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    ckpts = [tmp_path / run / "version_0" / "checkpoints" / "best.ckpt" for run in ("digits", "photos")]
    rows = evaluation.compare(ckpts, tmp_path / "comparison")
    assert len({row["folder"] for row in rows}) == 2
    for row in rows:
        folder = tmp_path / "comparison" / row["folder"]
        assert json.loads((folder / "metrics.json").read_text()) == row["metrics"]
    assert [(row["data"], row["test_samples"]) for row in rows] == [("digits", 6), ("photos", 9)]
    table = (tmp_path / "comparison" / "comparison.md").read_text()
    assert "not comparable" in table and "0.5000" in table and "0.7500" in table


def test_a_metric_undefined_on_the_data_reads_n_a_in_the_comparison_as_in_the_report(tmp_path, monkeypatch):
    """An AUROC of a test split holding one class is NaN: report.md shows it ``n/a``, and
    comparison.md wrote ``nan`` for the same figure. Per-class figures stay in each report."""
    from cnnsuite.use import evaluate as evaluation

    def evaluate(ckpt, out_dir, accelerator, data):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "evaluation.json").write_text(json.dumps({"data": "digits", "test_samples": 6}))
        return {"test/acc": 0.5, "test/acc/cat": 1.0, "test/auroc": float("nan")}

    monkeypatch.setattr(evaluation, "load_checkpoint", lambda ckpt: None)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    evaluation.compare([tmp_path / "run" / "checkpoints" / "best.ckpt"], tmp_path / "comparison")
    header, _, *rows = (tmp_path / "comparison" / "comparison.md").read_text().splitlines()[2:]
    (row,) = rows
    assert "acc/cat" not in header
    assert row.endswith("| 0.5000 | n/a |") and "nan" not in row


def test_per_class_metrics_are_kept_out_of_the_headline_tables(tmp_path):
    """report.md lists the headline metrics, then each class's in a table of their own."""
    from cnnsuite.use.evaluate import write_report

    datamodule = SimpleNamespace(root=tmp_path / "data", datasets={"test": [0] * 6}, num_classes=2)
    metrics = {"test/acc": 0.5, "test/acc/cat": 1.0, "test/acc/dog": float("nan")}
    write_report(tmp_path / "report.md", tmp_path / "best.ckpt", datamodule, metrics, [])
    headline, per_class = (tmp_path / "report.md").read_text().split("Per class")
    assert "`test/acc`" in headline and "test/acc/" not in headline
    assert "| `test/acc/cat` | 1.0000 |" in per_class and "| `test/acc/dog` | n/a |" in per_class


def test_a_users_own_file_of_the_markers_name_does_not_make_out_the_commands(tmp_path):
    """``--out mydir`` holding the user's own ``summary.json`` (a common name) was taken for a
    folder predict wrote before, and the file written over: only the stamp a command leaves as
    it starts says it wrote a folder."""
    from cnnsuite.errors import ConfigError
    from cnnsuite.training.runs import output_folder

    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "summary.json").write_text("the user's")
    with pytest.raises(ConfigError, match=r"holds files this command did not write \(summary\.json\)"):
        output_folder(mine, given=True, marker="summary.json")
    assert [p.name for p in mine.iterdir()] == ["summary.json"]
    out = output_folder(tmp_path / "out", given=True, marker="summary.json")
    (out / "summary.json").write_text("{}")
    assert output_folder(out, given=True, marker="summary.json") == out


def test_a_not_implemented_error_in_read_input_is_the_tasks_bug_not_the_files(tmp_path):
    """``NotImplementedError`` is a ``RuntimeError``, which a reader raises for a file it cannot
    decode: a task's ``read_input`` that leaves something unimplemented was told as the file's
    "cannot read", one line and no traceback, for every file of the folder."""

    def unfinished(path):
        raise NotImplementedError("MyDataModule.read_input reads no volumes yet")

    def broken(path):
        raise RuntimeError("truncated frame")

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    predictor = Predictor.__new__(Predictor)  # read needs only the datamodule's read_input
    predictor.datamodule = SimpleNamespace(read_input=unfinished)
    with pytest.raises(NotImplementedError, match="reads no volumes yet"):
        predictor.read(image)
    predictor.datamodule = SimpleNamespace(read_input=broken)
    with pytest.raises(BadFileError, match=r"a\.png: cannot read \(RuntimeError: truncated frame\)"):
        predictor.read(image)


def test_an_output_folder_is_refused_only_where_writing_in_place_could_harm(tmp_path):
    """An empty folder the user names is taken and stamped; a folder the command chose itself
    (a run's ``evaluation/``) is written again without a stamp; a link among a folder's entries
    is refused, and the folder itself a link only where the command chose it."""
    from cnnsuite.errors import ConfigError
    from cnnsuite.training.runs import STAMP, output_folder

    empty = tmp_path / "empty"
    empty.mkdir()
    assert output_folder(empty, given=True, marker="summary.json") == empty
    assert (empty / STAMP).read_text() == "summary.json\n"
    chosen = tmp_path / "run" / "evaluation"
    chosen.mkdir(parents=True)
    (chosen / "report.md").write_text("of an earlier evaluation")
    assert output_folder(chosen, given=False, marker="evaluation.json") == chosen
    (chosen / "report.md").unlink()
    (chosen / "report.md").symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(ConfigError, match=r"report\.md: a symbolic link where this command writes its output"):
        output_folder(chosen, given=False, marker="evaluation.json")
    linked = tmp_path / "linked"
    linked.symlink_to(empty)
    assert output_folder(linked, given=True, marker="summary.json") == linked
    with pytest.raises(ConfigError, match=r"linked: a symbolic link where this command writes its output"):
        output_folder(linked, given=False, marker="summary.json")
