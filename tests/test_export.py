"""cnnsuite export: ONNX and torch.export files that agree with PyTorch, on a 2D task
(recognition2d's LeNet-5 with BatchNorm and C3's parametrized connection table) and a 3D
task (biomedical3d), with the JSON a user needs to feed them."""

import json
import re
from types import SimpleNamespace

import onnx
import pytest
import torch
from conftest import fit, make_image_folder
from test_biomedical3d import SMALL, make_volume_folder
from test_detection2d import make_coco_folder

from cnnsuite.cli import main
from cnnsuite.errors import ConfigError
from cnnsuite.trust.checkpoint import rebuild_for_inference
from cnnsuite.use.export import ExportedNetwork, OnnxNetwork, export
from cnnsuite.use.predict import Predictor

LENET5_WITH_C3_TABLE = "{act: relu, pool: max, norm: batch, c3_table: true}"


@pytest.fixture(scope="module")
def recognition(tmp_path_factory):
    """A one-epoch LeNet-5 run on a user folder, exported to ONNX by the CLI with the
    defaults: ``(image folder, checkpoint, onnx file, printed summary)``."""
    tmp = tmp_path_factory.mktemp("recognition")
    folder = make_image_folder(tmp / "images", per_class=6)
    run = fit("recognition2d", tmp, "--data.data_dir", str(folder), "--data.batch_size", "8",
              "--model.init_args.backbone", "lenet5", "--model.init_args.backbone_kwargs", LENET5_WITH_C3_TABLE,
              "--trainer.max_epochs", "1", "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    return folder, ckpt


@pytest.fixture(scope="module")
def recognition_onnx(recognition):
    folder, ckpt = recognition
    with pytest.MonkeyPatch.context() as mp:
        printed = []
        mp.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        main(["export", "--ckpt", str(ckpt)])
    return ckpt.parent.parent / "export" / "model.onnx", printed


def test_lenet5_exports_to_onnx_in_its_run_folder_with_what_a_user_needs(recognition, recognition_onnx):
    _, ckpt = recognition
    path, printed = recognition_onnx
    model, _ = rebuild_for_inference(ckpt)
    assert any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())  # C3's table
    (line,) = printed
    assert line.startswith(f"exported {path} (") and "max abs diff vs PyTorch logits" in line
    info = json.loads((path.parent / "model.onnx.json").read_text())
    assert info["task"] == "recognition2d" and info["format"] == "onnx" and info["opset"] >= 18
    assert info["class_names"] == ["cat", "dog", "owl"]
    assert info["input"] == {"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32",
                             "channels": ["red", "green", "blue"]}  # fmt: skip
    assert info["preprocessing"]["normalisation"]["mean"] == [0.5] * 3
    assert info["preprocessing"]["normalisation"]["std"] == [0.5] * 3
    assert [o["name"] for o in info["outputs"]] == ["logits"] and info["outputs"][0]["shape"] == ["batch", 3]
    assert info["check"]["max_abs_diff"]["logits"] < 1e-4
    session_input = OnnxNetwork(path).session.get_inputs()[0]
    assert session_input.name == "input" and session_input.shape == ["batch", 3, 32, 32]


def test_onnx_predictions_agree_with_pytorch_on_real_files(recognition, recognition_onnx):
    folder, ckpt = recognition
    path, _ = recognition_onnx
    predictor = Predictor(ckpt, accelerator="cpu")
    inputs = [predictor.read(p) for p in sorted(folder.rglob("*.*"))[:5]]  # RGB and gray, several sizes
    expected = predictor.predict(inputs)
    got = predictor.predict(inputs, network=OnnxNetwork(path))
    assert [g["class"] for g in got] == [e["class"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.tensor(list(g["probabilities"].values())),
                                   torch.tensor(list(e["probabilities"].values())), atol=1e-4, rtol=0)  # fmt: skip


def test_an_export_that_disagrees_with_pytorch_is_not_kept(recognition, tmp_path):
    _, ckpt = recognition
    out = tmp_path / "strict.onnx"
    with pytest.raises(ValueError, match=r"strict.onnx: the exported network differs from PyTorch's by up to"):
        export(ckpt, "onnx", out, tolerance=0.0)  # ONNX Runtime's float sums are not bit-identical
    assert list(tmp_path.iterdir()) == []


def test_torch_export_round_trip_and_a_named_file_is_not_overwritten(recognition, tmp_path, capsys):
    folder, ckpt = recognition
    out = tmp_path / "lenet.pt2"
    path, info = export(ckpt, "torch-export", out)
    assert path == out and info["check"]["max_abs_diff"]["logits"] == 0.0 and "opset" not in info
    assert json.loads((tmp_path / "lenet.pt2.json").read_text())["class_names"] == ["cat", "dog", "owl"]
    predictor = Predictor(ckpt, accelerator="cpu")
    inputs = [predictor.read(p) for p in sorted(folder.rglob("*.*"))[:3]]
    assert predictor.predict(inputs, network=ExportedNetwork(out)) == predictor.predict(inputs)
    for format_given in (["--format", "torch-export"], []):  # the format out's extension names, by default
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt", str(ckpt), *format_given, "--out", str(out)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == (
            f"cnnsuite export: error: --out {out}: {out} and {out}.json exist already; --force overwrites"
        )
    # an ONNX file under a .pt2 name was written without a word, and read by neither loader
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "other.pt2")])
    assert capsys.readouterr().err.strip() == (
        f"cnnsuite export: error: --out {tmp_path / 'other.pt2'}: a torch-export file's name, for --format onnx; "
        "name it .onnx"
    )
    assert not (tmp_path / "other.pt2").exists()


def test_a_channels_last_network_exports_without_torchs_packaging_warning(recognition, tmp_path, recwarn):
    """torch's .pt2 writer calls a channels_last weight incomplete (not contiguous) and warns
    "No complete tensor found in the group" for each: it saves the whole storage all the same,
    which the round trip above checks. A user can do nothing about it; it is not shown."""
    _, ckpt = recognition
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["channels_last"]
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "quiet.pt2")])
    assert (tmp_path / "quiet.pt2").is_file()
    assert not [w for w in recwarn if "No complete tensor" in str(w.message)]


def test_the_default_output_beside_a_checkpoint_never_replaces_a_users_file(recognition, tmp_path, capsys):
    """A checkpoint outside a run folder exports beside itself, as ``<name>.onnx``: a file of
    that name (or its ``.json``) that exists is the user's, kept unless ``--force``; a
    checkpoint that is itself named ``.onnx`` is never replaced, ``--force`` or not."""
    _, ckpt = recognition
    mine = tmp_path / "mine.ckpt"
    mine.write_bytes(ckpt.read_bytes())
    (tmp_path / "mine.onnx.json").write_text("the user's notes")
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(mine)])
    assert capsys.readouterr().err.strip() == (
        f"cnnsuite export: error: {tmp_path / 'mine.onnx'} (the export's name beside the checkpoint): "
        f"{tmp_path / 'mine.onnx.json'} exists already; --out names another file, --force overwrites"
    )
    assert (tmp_path / "mine.onnx.json").read_text() == "the user's notes" and not (tmp_path / "mine.onnx").exists()
    # a folder named by --out is said to be one first, not that it "exists already"
    (tmp_path / "outd").mkdir()
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(mine), "--out", str(tmp_path / "outd")])
    assert capsys.readouterr().err.strip() == (
        f"cnnsuite export: error: --out {tmp_path / 'outd'}: is a folder; expected a file name such as "
        f"{tmp_path / 'outd' / 'model'}"
    )
    # so is a folder not made yet, named with its slash: it wrote the file 'new' and 'new.json'
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(mine), "--out", f"{tmp_path / 'new'}/"])
    assert capsys.readouterr().err.strip().endswith(f"--out {tmp_path / 'new'}/: is a folder; expected a file name "
                                                    f"such as {tmp_path / 'new' / 'model'}")  # fmt: skip
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.json").exists()
    named_onnx = tmp_path / "net.onnx"
    named_onnx.write_bytes(ckpt.read_bytes())
    for force in ([], ["--force"]):
        with pytest.raises(SystemExit):
            main(["export", "--ckpt", str(named_onnx), *force])
        assert "the export would replace the checkpoint" in capsys.readouterr().err
    assert named_onnx.read_bytes() == ckpt.read_bytes()


def test_an_opset_torch_onnx_does_not_write_is_one_line_before_any_work(recognition, tmp_path, capsys):
    """torch.onnx writes opset 18 and later; for an older one its converter fails on most
    networks (LeNet-5's reductions) with a logged traceback, and the file is quietly written at
    18, exit 0. Below 18 or past ONNX's newest is one line, nothing written; 18 itself is written."""
    _, ckpt = recognition
    out = tmp_path / "old.onnx"
    for opset in ("13", "0", "99"):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt", str(ckpt), "--out", str(out), "--opset", opset])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and list(tmp_path.iterdir()) == []
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.out + captured.err
        assert captured.err.startswith(f"cnnsuite export: error: --opset {opset}: expected 18 to ")
    path, info = export(ckpt, "onnx", tmp_path / "opset18.onnx", opset=18)
    assert info["opset"] == 18 and onnx.load(str(path)).opset_import[0].version == 18


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_a_damaged_or_foreign_checkpoint_is_named_in_one_line(tmp_path, capsys, content):
    bad = tmp_path / "model.ckpt"
    if content is None:
        torch.save({"state_dict": {}}, bad)  # a torch file, but not one cnnsuite fit wrote
    else:
        bad.write_bytes(content)
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(bad)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cnnsuite export: error: {bad}: ")
    assert not (tmp_path / "model.onnx").exists()


def test_a_3d_volume_classifier_exports_and_agrees_on_real_volumes(tmp_path, capsys):
    folder = make_volume_folder(tmp_path / "user")
    run = fit("biomedical3d", tmp_path, *SMALL, "--data.data_dir", str(folder), "--trainer.max_epochs", "1",
              "--data.batch_size", "4", "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    volumes = [folder / "scans/s4.nrrd", folder / "scans/s1.nii.gz", folder / "scans/s2.nii"]
    out = tmp_path / "volumes.onnx"
    main(["export", "--ckpt", str(ckpt), "--out", str(out), "--input", *map(str, volumes)])
    assert f"exported {out}" in capsys.readouterr().out
    info = json.loads((tmp_path / "volumes.onnx.json").read_text())
    assert info["input"]["shape"] == ["batch", 1, 16, 16, 16] and info["class_names"] == ["benign", "malignant"]
    assert "z-score of each volume" in info["preprocessing"]["normalisation"]
    assert info["check"]["inputs"].startswith("3 files") and info["check"]["max_abs_diff"]["logits"] < 1e-4
    predictor = Predictor(ckpt, accelerator="cpu")
    inputs = [predictor.read(p) for p in volumes]
    expected, got = predictor.predict(inputs), predictor.predict(inputs, network=OnnxNetwork(out))
    assert [g["class"] for g in got] == [e["class"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert max(abs(g["probabilities"][c] - e["probabilities"][c]) for c in e["probabilities"]) < 1e-4


def test_a_detector_exports_without_files_checked_on_its_own_canvas(tmp_path, capsys):
    """A detector's data has no fixed size, but its transform brings every image to its
    ``min_size``/``max_size`` canvas: ``cnnsuite export --ckpt`` alone (``make export``) checks
    on random images of that canvas, as the transform prepares them."""
    folder = make_coco_folder(tmp_path / "coco")
    run = fit("detection2d", tmp_path, "--data.data_dir", str(folder), "--data.batch_size", "4",
              "--trainer.max_epochs", "1", "--model.init_args.min_size", "64", "--model.init_args.max_size", "64",
              "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    main(["export", "--ckpt", str(ckpt)])
    path = run / "export" / "model.onnx"
    assert f"exported {path}" in capsys.readouterr().out
    info = json.loads((path.parent / "model.onnx.json").read_text())
    assert info["check"]["inputs"] == "3 random samples of (3, 64, 64) and 2 of (3, 192, 256)"
    assert info["input"]["shape"] == ["batch", 3, "free", "free"]
    # its outputs' locations follow the input's size: free too, not those of the check's canvas
    assert [o["shape"] for o in info["outputs"]] == [["batch", "free", 3], ["batch", "free", 4], ["batch", "free", 1]]
    assert max(info["check"]["max_abs_diff"].values()) < 1e-4
    # free as the file says: a wide image's canvas, and a tall one's (traced on the square
    # canvas alone, the file ran on that size only)
    network = Predictor(ckpt, accelerator="cpu").model.inference_network().eval()
    for shape in ((1, 3, 32, 64), (2, 3, 64, 32)):
        batch = torch.rand(shape)
        with torch.no_grad():
            expected = network(batch)
        for found, wanted in zip(OnnxNetwork(path)(batch), expected, strict=True):
            torch.testing.assert_close(found, wanted, atol=1e-4, rtol=1e-4)
    # torch.export keeps a guard that each feature map is more than one cell: traced where they
    # are, its program does not run on this small canvas, and is not kept
    with pytest.raises(ConfigError, match=r"model.pt2: the exported network does not run on 3 random samples"):
        export(ckpt, "torch-export")
    assert not (path.parent / "model.pt2").exists()


def decode_as_the_json_says(info: dict, outputs: dict, resized: tuple[int, int], padded: tuple[int, int],
                            original: tuple[int, int]) -> list[dict]:  # fmt: skip
    """A detector's raw outputs for one image made detections with numpy and the numbers of
    the export's JSON alone, as a program without torchvision would (FCOS)."""
    import numpy as np

    decoding = info["decoding"]
    cls, reg, ctr = outputs["cls_logits"][0], outputs["bbox_regression"][0], outputs["bbox_ctrness"][0]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    thresh, topk = decoding["score_thresh"], decoding["topk_candidates"]
    iou_limit, keep_best = decoding["nms_thresh"], decoding["detections_per_img"]
    boxes, scores, labels, start = [], [], [], 0
    for level in decoding["levels"]:
        rows, cols = -(-padded[0] // level["stride"]), -(-padded[1] // level["stride"])
        sy, sx = padded[0] // rows, padded[1] // cols
        base = np.array(level["anchors"], np.float32)
        i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        shifts = np.stack([j * sx, i * sy, j * sx, i * sy], -1).reshape(-1, 1, 4)
        anchors = (shifts + base[None]).reshape(-1, 4)
        end = start + len(anchors)
        score = np.sqrt(sigmoid(cls[start:end]) * sigmoid(ctr[start:end])).ravel()
        kept = np.nonzero(score > thresh)[0]
        kept = kept[np.argsort(-score[kept], kind="stable")][:topk]
        where, label = kept // cls.shape[1], kept % cls.shape[1]
        a, d = anchors[where], reg[start:end][where]
        cx, cy, w, h = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2, a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        box = np.stack([cx - d[:, 0] * w, cy - d[:, 1] * h, cx + d[:, 2] * w, cy + d[:, 3] * h], -1)
        box = np.clip(box, 0, [resized[1], resized[0], resized[1], resized[0]])
        boxes.append(box), scores.append(score[kept]), labels.append(label)
        start = end
    assert start == len(cls)
    boxes, scores, labels = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    chosen = []
    for k in np.argsort(-scores, kind="stable"):
        b = boxes[k]
        if all(labels[c] != labels[k] or iou(b, boxes[c]) <= iou_limit for c in chosen):
            chosen.append(k)
    chosen = chosen[:keep_best]
    scale = np.array([original[1] / resized[1], original[0] / resized[0]] * 2)
    found = []
    for k in chosen:
        box = boxes[k] * scale
        if box[2] > box[0] and box[3] > box[1]:
            found.append({"class": info["class_names"][labels[k]], "score": float(scores[k]), "box": box.tolist()})
    return found


def iou(a, b) -> float:
    area = lambda v: max(v[2] - v[0], 0) * max(v[3] - v[1], 0)  # noqa: E731
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def test_a_program_reading_only_the_json_decodes_an_exported_detector_as_predict_does(tmp_path):
    """detection2d exports up to its heads' raw outputs; its JSON gave no levels, anchors,
    thresholds or NMS, so no program could turn them into predict's detections. With the
    JSON's ``decoding`` alone, numpy reproduces them (FCOS, images of several sizes)."""
    import numpy as np
    import onnxruntime
    from PIL import Image

    folder = make_coco_folder(tmp_path / "coco")
    run = fit("detection2d", tmp_path, "--data.data_dir", str(folder), "--data.batch_size", "4",
              "--trainer.max_epochs", "1", "--model.init_args.min_size", "64", "--model.init_args.max_size", "96",
              "--model.init_args.score_thresh", "0.02", "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    path, info = export(ckpt, "onnx", tmp_path / "det.onnx")
    info = json.loads((tmp_path / "det.onnx.json").read_text())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictor = Predictor(ckpt, accelerator="cpu")
    said = re.search(r"mean \[(.*?)\] and std \[(.*?)\]", info["preprocessing"]["batch"])
    mean, std = (np.array(json.loads(f"[{v}]"), np.float32)[:, None, None] for v in said.groups())
    rng = np.random.default_rng(1)
    compared = 0
    for k, (height, width) in enumerate(((64, 64), (50, 90), (120, 40))):
        file = tmp_path / f"in{k}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(file)
        (expected,) = predictor.predict([predictor.read(file)])
        image = np.array(Image.open(file).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
        scale = min(64 / min(height, width), 96 / max(height, width))
        resized = (int(height * scale), int(width * scale))
        x = torch.nn.functional.interpolate(torch.from_numpy((image - mean) / std)[None], size=resized,
                                            mode="bilinear", align_corners=False).numpy()  # fmt: skip
        padded = tuple(-(-side // 32) * 32 for side in resized)
        batch = np.zeros((1, 3, *padded), np.float32)
        batch[:, :, : resized[0], : resized[1]] = x
        outputs = dict(zip([o["name"] for o in info["outputs"]], session.run(None, {"input": batch}), strict=True))
        found = decode_as_the_json_says(info, outputs, resized, padded, (height, width))
        assert [d["class"] for d in found] == [d["class"] for d in expected["detections"]]
        for mine, theirs in zip(found, expected["detections"], strict=True):
            assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
            assert mine["box"] == pytest.approx(theirs["box"], abs=1e-2)
        compared += len(found)
    assert compared > 0


def test_the_onnx_file_names_its_outputs_and_their_batch_axis_as_its_json_says(recognition_onnx):
    """A program reading the file alone finds the outputs by the JSON's names, with ``batch``
    for their first axis, not the exporter's own names and symbols."""
    path, _ = recognition_onnx
    info = json.loads((path.parent / "model.onnx.json").read_text())
    outputs = OnnxNetwork(path).session.get_outputs()
    assert [o.name for o in outputs] == [o["name"] for o in info["outputs"]]
    assert [o.shape for o in outputs] == [o["shape"] for o in info["outputs"]]


def test_force_replaces_an_earlier_export_of_the_name_given(recognition, tmp_path):
    """``--force`` overwrites the file ``--out`` names and its JSON."""
    _, ckpt = recognition
    out = tmp_path / "mine.onnx"
    out.write_text("an earlier file")
    (tmp_path / "mine.onnx.json").write_text("its notes")
    path, info = export(ckpt, "onnx", out, force=True)
    assert path == out and OnnxNetwork(out).output_names == ["logits"]
    assert json.loads((tmp_path / "mine.onnx.json").read_text()) == info


def test_a_network_whose_outputs_are_not_finite_is_not_kept(recognition, tmp_path, monkeypatch):
    """Finite weights that overflow make PyTorch's own outputs NaN: the checkpoint is named, not
    an export "differing by up to nan". An exported file giving NaN where PyTorch gives numbers
    is refused too (NaN is within no tolerance), and so is a tolerance of NaN."""
    _, ckpt = recognition

    checkpoint = torch.load(ckpt, weights_only=True)
    first = next(k for k, v in checkpoint["state_dict"].items() if v.dim() == 4)
    checkpoint["state_dict"][first] = checkpoint["state_dict"][first] * 1e38
    huge = tmp_path / "huge.ckpt"
    torch.save(checkpoint, huge)
    with pytest.raises(
        ValueError, match=r"huge.ckpt: its network's own outputs are not finite \(NaN or infinity\) on 3"
    ):
        export(huge, "torch-export", tmp_path / "huge.pt2")
    real_call = ExportedNetwork.__call__
    monkeypatch.setattr(
        ExportedNetwork, "__call__", lambda self, batch: tuple(o * torch.nan for o in real_call(self, batch))
    )
    with pytest.raises(ValueError, match=r"nan.pt2: the exported network differs from PyTorch's by up to nan"):
        export(ckpt, "torch-export", tmp_path / "nan.pt2")
    with pytest.raises(ValueError, match=r"--tolerance nan: expected the largest difference allowed, 0 or more"):
        export(ckpt, "torch-export", tmp_path / "any.pt2", tolerance=float("nan"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.ckpt"]


def test_an_export_is_checked_on_the_batch_it_was_traced_on_too(recognition, tmp_path, monkeypatch):
    """The traced example (another batch size than the check's) is compared as well: a file
    wrong on it alone is not kept."""
    from cnnsuite.use.export import EXAMPLE_BATCH

    _, ckpt = recognition
    real_call = ExportedNetwork.__call__

    def wrong_on_the_example(self, batch):
        outputs = real_call(self, batch)
        return tuple(o + 1 for o in outputs) if len(batch) == EXAMPLE_BATCH else outputs

    monkeypatch.setattr(ExportedNetwork, "__call__", wrong_on_the_example)
    with pytest.raises(ValueError, match=r"traced.pt2: the exported network differs from PyTorch's by up to 1"):
        export(ckpt, "torch-export", tmp_path / "traced.pt2")
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_compared_only_where_their_shapes_agree():
    """An exported network that fixed its batch answers one row for a batch of three: broadcast
    against PyTorch's rows it would seem to agree. A task naming fewer outputs than its network
    gives is its author's bug, said before anything is written."""
    from cnnsuite.use.export import max_difference, output_names

    assert max_difference(torch.zeros(3, 4), torch.zeros(1, 4)) == float("inf")
    assert max_difference(torch.zeros(3, 4), torch.full((3, 4), 0.5)) == 0.5
    with pytest.raises(
        ValueError, match=r"inference_outputs names 1 outputs \(logits\), its inference_network\(\) gives 2"
    ):
        output_names(SimpleNamespace(inference_outputs={"logits": "class scores"}), 2)


def test_force_does_not_write_through_a_linked_json(recognition, tmp_path):
    """``--force`` over an export whose JSON is a link: writing the JSON would replace the file
    the link leads to; refused before any work, and that file kept."""
    _, ckpt = recognition
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's")
    (tmp_path / "linked.pt2.json").symlink_to(mine)
    with pytest.raises(ValueError, match=r"linked.pt2.json: a symbolic link, which the export would write through"):
        export(ckpt, "torch-export", tmp_path / "linked.pt2", force=True)
    assert mine.read_text() == "the user's" and not (tmp_path / "linked.pt2").exists()
