"""cnnsuite serve: the real server in a subprocess, called over real HTTP with multipart
uploads; its answers are the lines ``cnnsuite predict`` writes for the same files."""

import gzip
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import requests
from conftest import fit, make_image_folder
from test_biomedical3d import SMALL, make_volume_folder
from test_limits import bomb_png

from cnnsuite.use.predict import Predictor

BATCH = 4  # the server's --max_batch_size in these tests
MAX_UPLOAD_MB = 1  # the recognition2d server's --max_upload_mb
MAX_VOXELS = 20_000  # the biomedical3d server's --max_pixels (its volumes have up to 24^3 = 13,824)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cnnsuite serve`` in a subprocess, in a process group of its own: started on entering,
    stopped on leaving by ``stop`` — SIGTERM to the server (``kill``, ``docker stop``) or
    SIGINT to its whole group (Ctrl+C in a terminal) — which must take its worker processes
    down with it and print no traceback; :meth:`url` waits for ``/health``."""

    def __init__(self, ckpt: Path, log: Path, *extra: str, stop: signal.Signals = signal.SIGTERM) -> None:
        self.ckpt, self.log, self.stop, port = ckpt, log, stop, free_port()
        self.address = f"http://127.0.0.1:{port}"
        self.command = [sys.executable, "-m", "cnnsuite", "serve", "--ckpt", str(ckpt), "--port", str(port), *extra]

    def __enter__(self) -> "Server":
        with self.log.open("w") as out:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even if the tests ignore it
            )
        return self

    def url(self) -> str:
        deadline = time.monotonic() + 120
        while not healthy(self.address):
            assert self.process.poll() is None, (
                f"the server exited ({self.process.returncode}):\n{self.log.read_text()}"
            )
            assert time.monotonic() < deadline, f"no /health after 120 s:\n{self.log.read_text()}"
            time.sleep(0.2)
        return self.address

    def __exit__(self, *exc) -> None:
        workers = child_pids(self.process.pid)
        if self.stop == signal.SIGINT:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(self.stop)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # Children finish their own shutdown a moment after the parent (the resource tracker
        # notices its pipe close): give them a few seconds, then anything still running is left.
        deadline = time.monotonic() + 15
        while (left := [pid for pid in workers if running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        stopped_by = self.stop.name
        assert not left, f"{stopped_by} left the server's processes {left} running:\n{self.log.read_text()}"
        assert "Traceback" not in self.log.read_text(), f"{stopped_by} printed:\n{self.log.read_text()}"


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux; elsewhere none are checked)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # not a zombie
    except OSError:
        return False


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def post(url: str, name: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/predict", files={"file": (name, data)}, timeout=60)


def assert_same_line(served: dict, line: dict) -> None:
    """A served answer is the predictions.jsonl line, with the uploaded filename as its path."""
    assert served.keys() == line.keys()
    assert served["path"] == Path(line["path"]).name
    assert served["class"] == line["class"]
    assert served["score"] == pytest.approx(line["score"], abs=1e-5)
    assert served["probabilities"] == pytest.approx(line["probabilities"], abs=1e-5)


def jsonl_lines(ckpt: Path, files: list[Path]) -> list[dict]:
    """What ``cnnsuite predict`` writes for ``files``: :meth:`Predictor.run`'s records."""
    return [record for _, record in Predictor(ckpt, accelerator="cpu").run(files)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Short recognition2d and biomedical3d runs on user folders, each served; the first
    server starts up (seconds of imports) while the second task trains. recognition2d's
    batches hold up to ``BATCH`` requests and wait long enough to fill, and its bodies are
    limited to ``MAX_UPLOAD_MB``; biomedical3d's volumes to ``MAX_VOXELS``. The first is stopped by
    SIGTERM, the second by Ctrl+C."""
    tmp = tmp_path_factory.mktemp("serve")
    with ExitStack() as stack:
        images = make_image_folder(tmp / "images", per_class=4)
        run = fit("recognition2d", tmp / "recognition2d", "--data.data_dir", str(images),
                  "--trainer.max_epochs", "1", "--evaluate", "false")  # fmt: skip
        recognition = Server(run / "checkpoints" / "best.ckpt", tmp / "recognition2d.log", "--accelerator", "cpu",
                             "--max_batch_size", str(BATCH), "--batch_timeout", "0.5",
                             "--max_upload_mb", str(MAX_UPLOAD_MB))  # fmt: skip
        stack.enter_context(recognition)
        volumes = make_volume_folder(tmp / "volumes")
        run = fit("biomedical3d", tmp / "biomedical3d", *SMALL, "--data.data_dir", str(volumes),
                  "--trainer.max_epochs", "1", "--data.batch_size", "4", "--evaluate", "false")  # fmt: skip
        biomedical = stack.enter_context(
            Server(
                run / "checkpoints" / "best.ckpt",
                tmp / "biomedical3d.log",
                "--max_pixels",
                str(MAX_VOXELS),
                stop=signal.SIGINT,
            )
        )
        yield SimpleNamespace(images=images, recognition=recognition, volumes=volumes, biomedical=biomedical)


def test_concurrent_requests_are_batched_and_answer_as_predict_does(served):
    folder, ckpt, url, log = served.images, served.recognition.ckpt, served.recognition.url(), served.recognition.log
    files = sorted(folder.rglob("*.*"))[: 2 * BATCH]  # PNG and JPEG, RGB and gray, of different sizes
    with ThreadPoolExecutor(len(files)) as pool:
        answers = list(pool.map(lambda f: post(url, f.name, f.read_bytes()), files))
    assert [a.status_code for a in answers] == [200] * len(files), [a.text for a in answers]
    for answer, line in zip(answers, jsonl_lines(ckpt, files), strict=True):
        assert_same_line(answer.json(), line)
    batch_sizes = [int(a.headers["X-Batch-Size"]) for a in answers]
    assert max(batch_sizes) > 1 and all(1 <= n <= BATCH for n in batch_sizes), batch_sizes
    started = log.read_text()
    assert f"cnnsuite serve: {ckpt} at {url}/predict" in started and f"{url}/health" in started
    info = requests.get(f"{url}/info", timeout=5).json()["model"]
    assert info["classes"] == ["cat", "dog", "owl"] and info["checkpoint"] == "best.ckpt"  # the name, not its folders


def test_bad_uploads_get_a_4xx_naming_them_and_the_server_goes_on(served):
    folder, ckpt, url = served.images, served.recognition.ckpt, served.recognition.url()
    garbage = post(url, "x.png", b"\x89PNG\r\n\x1a\n not an image at all")
    assert garbage.status_code == 422 and "x.png" in garbage.json()["error"], garbage.text
    assert garbage.json()["path"] == "x.png"
    text = post(url, "notes.txt", b"not an image")
    assert text.status_code == 415 and "notes.txt" in text.json()["error"] and ".png" in text.json()["error"]
    empty = post(url, "empty.png", b"")
    assert empty.status_code == 400 and "empty.png: empty file" in empty.json()["error"]
    no_field = requests.post(f"{url}/predict", files={"image": ("a.png", b"x")}, timeout=60)
    assert no_field.status_code == 400 and "'file'" in no_field.json()["error"]
    image = folder / "owl" / "0.png"
    two = requests.post(f"{url}/predict", files=[("file", ("a.png", image.read_bytes()))] * 2, timeout=60)
    assert two.status_code == 400 and two.json()["error"].startswith("2 form fields 'file': send one file a request")
    raw_body = requests.post(f"{url}/predict", data=b"\x89PNG", headers={"Content-Type": "image/png"}, timeout=60)
    assert raw_body.status_code == 415 and "multipart/form-data" in raw_body.json()["error"]
    good = post(url, image.name, image.read_bytes())
    assert good.status_code == 200
    assert_same_line(good.json(), *jsonl_lines(ckpt, [image]))
    # a browser's Blob is named "blob": the image is told by its content, and answered by its name
    blob = post(url, "blob", image.read_bytes())
    assert blob.status_code == 200 and blob.json() == {**good.json(), "path": "blob"}


def test_a_bad_upload_fails_alone_in_its_batch(served):
    """LitServe decodes a batch's requests in one try: a bad one must not fail the others."""
    folder, ckpt, url = served.images, served.recognition.ckpt, served.recognition.url()
    files = sorted((folder / "dog").glob("*"))[: BATCH - 1]
    uploads = [(f.name, f.read_bytes()) for f in files] + [("broken.jpg", b"\xff\xd8\xff truncated")]
    with ThreadPoolExecutor(BATCH) as pool:
        *answers, broken = pool.map(lambda upload: post(url, *upload), uploads)
    assert [a.status_code for a in answers] == [200] * len(files), [a.text for a in answers]
    for answer, line in zip(answers, jsonl_lines(ckpt, files), strict=True):
        assert_same_line(answer.json(), line)
    assert broken.status_code == 422 and "broken.jpg" in broken.json()["error"], broken.text
    assert int(broken.headers["X-Batch-Size"]) > 1  # it shared a batch with good uploads


def test_a_nifti_volume_answers_as_predict_does(served):
    """A 3D task, served with the default batching: the upload keeps both suffixes of
    ``.nii.gz``, which the reader goes by."""
    ckpt, url = served.biomedical.ckpt, served.biomedical.url()
    volumes = sorted((served.volumes / "scans").glob("*.nii.gz"))[:2]
    answers = [post(url, volume.name, volume.read_bytes()) for volume in volumes]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    for answer, line in zip(answers, jsonl_lines(ckpt, volumes), strict=True):
        assert_same_line(answer.json(), line)
    png = post(url, "slice.png", b"\x89PNG")
    assert png.status_code == 415 and ".nii.gz" in png.json()["error"]
    # a path the reader builds from the upload's (a detached header's data file) names no server folder
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nspace: left-posterior-superior\n"
              "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw\n"
              "data file: missing.raw\n\n")  # fmt: skip
    detached = post(url, "scan.nhdr", header.encode())
    said = detached.json()["error"]
    assert detached.status_code == 422 and "'missing.raw'" in said and "cnnsuite-serve-" not in said, said


def test_a_decompression_bomb_is_refused_from_its_header_and_costs_its_sender_only(served):
    """A 110 KB PNG declaring 30,000 x 30,000 pixels (torchvision would take 40 s and 4 GB to
    decode it, and the requests batched with it would time out) is answered 422 from its
    header, under the default limit, while good requests sent with it are answered as usual."""
    folder, url = served.images, served.recognition.url()
    goods = sorted((folder / "owl").glob("*"))[: BATCH - 1]
    uploads = [("bomb.png", bomb_png())] + [(f.name, f.read_bytes()) for f in goods]
    started = time.monotonic()
    with ThreadPoolExecutor(len(uploads)) as pool:
        bomb, *answers = pool.map(lambda upload: post(url, *upload), uploads)
    assert time.monotonic() - started < 5  # milliseconds, but for the batch timeout and a busy machine
    assert bomb.status_code == 422 and bomb.json()["path"] == "bomb.png", bomb.text
    assert bomb.json()["error"].startswith("bomb.png: declares 30000x30000 = 900,000,000 pixels, over the limit")
    assert [a.status_code for a in answers] == [200] * len(goods), [a.text for a in answers]


def test_a_body_over_max_upload_mb_is_refused_before_it_is_read(served):
    """413 from the headers alone for a Content-Length over ``--max_upload_mb`` (the body is
    never sent here: the answer cannot wait for it), and for a chunked body without one, the
    moment it passes the limit; the server goes on."""
    folder, url = served.images, served.recognition.url()
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=20)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "multipart/form-data; boundary=b")
    connection.putheader("Content-Length", str(400 * 2**20))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413
    error = json.loads(answer.read())
    assert error["path"] is None and error["error"].startswith("the body is 400.0 MB, over this server's limit")
    connection.close()

    def chunks():  # requests sends a generator chunked, without a Content-Length
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(2 * MAX_UPLOAD_MB * 16):
            yield bytes(2**16)
        yield b"\r\n--b--\r\n"

    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    chunked = requests.post(f"{url}/predict", data=chunks(), headers=multipart, timeout=20)
    assert chunked.status_code == 413 and "--max_upload_mb" in chunked.json()["error"], chunked.text
    image = folder / "cat" / "0.png"
    assert post(url, image.name, image.read_bytes()).status_code == 200


def test_malformed_multipart_bodies_get_a_400_with_one_line(served):
    """Starlette refuses these with a 400 that LitServe turned into a 500 with a traceback."""
    url, log = served.recognition.url(), served.recognition.log
    logged = len(log.read_text())
    image = (served.images / "cat" / "0.png").read_bytes()
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="0.png"\r\n\r\n' + image + b"\r\n--b--\r\n"
    nameless = b'--b\r\nContent-Disposition: form-data; filename="0.png"\r\n\r\nxx\r\n--b--\r\n'
    bad = {
        "no boundary": dict(data=part, headers={"Content-Type": "multipart/form-data"}),
        "another boundary": dict(data=part, headers={"Content-Type": "multipart/form-data; boundary=c"}),
        "a 300-byte boundary": dict(data=part, headers={"Content-Type": "multipart/form-data; boundary=" + "b" * 300}),
        "a nameless part": dict(data=nameless, headers={"Content-Type": "multipart/form-data; boundary=b"}),
        "5,000 fields": dict(data={f"f{i}": "x" for i in range(5000)}, files={"file": ("0.png", image)}),
        "2,000 files": dict(files=[(f"f{i}", (f"{i}.png", b"x")) for i in range(2000)]),
    }
    for what, request in bad.items():
        answer = requests.post(f"{url}/predict", timeout=20, **request)
        assert answer.status_code == 400, (what, answer.text)
        error = answer.json()
        assert error.keys() == {"path", "error"} and error["path"] is None and "\n" not in error["error"], what
    # a client that leaves before its body has arrived: a line in the log, not a traceback of twenty
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as left:
        left.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n" + part[:60])  # fmt: skip
    assert post(url, "0.png", image).status_code == 200
    deadline = time.monotonic() + 10
    while "a client left before its upload had arrived" not in log.read_text()[logged:]:
        assert time.monotonic() < deadline, log.read_text()[logged:]
        time.sleep(0.2)
    since = log.read_text()[logged:]
    assert "Traceback" not in since and "Internal server error" not in since, since


def test_max_pixels_reaches_the_inference_workers(served):
    """``--max_pixels`` (set below 30^3 voxels on this server) refuses a volume from its header."""
    url = served.biomedical.url()
    header = nib.Nifti1Header()
    header.set_data_shape((30, 30, 30))
    header.set_data_dtype(np.uint8)
    volume = gzip.compress(header.binaryblock + bytes(4) + bytes(30**3))
    answer = post(url, "big.nii.gz", volume)
    assert answer.status_code == 422, answer.text
    expected = f"big.nii.gz: declares 30x30x30 = 27,000 voxels, over the limit of {MAX_VOXELS:,}"
    assert answer.json()["error"].startswith(expected)


def test_an_upload_the_model_cannot_take_fails_alone_in_its_batch():
    """An upload that reads but fails in the model (all of its batch's predict fails with it)
    gets a 500 naming it; the others of its batch are predicted alone and answered."""
    from cnnsuite.data.inputs import Input
    from cnnsuite.use.serve import PredictorAPI, Reply

    class Model:
        def predict(self, inputs):
            if any(item.sample == "bad" for item in inputs):
                raise RuntimeError("shapes do not match")
            return [{"class": item.sample, "score": 1.0} for item in inputs]

    api = PredictorAPI("unused.ckpt")
    api.predictor = Model()
    refused = Reply(415, {"path": "notes.txt", "error": "notes.txt: not a file this model takes"})
    items = [Input(Path("a.png"), "cat"), Input(Path("b.png"), "bad"), refused, Input(Path("c.png"), "dog")]
    replies = api.predict(items)
    assert [r.status for r in replies] == [200, 500, 415, 200] and {r.batch_size for r in replies} == {4}
    assert [replies[0].record["class"], replies[3].record["class"]] == ["cat", "dog"]
    assert replies[1].record["path"] == "b.png"
    assert replies[1].record["error"].startswith("b.png: cannot be predicted (RuntimeError")


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path, capsys):
    """uvicorn found the port taken only after the banner said the server was up, printed its own
    error and exited 3: the port is tried first, and the checkpoint is not even read."""
    from cnnsuite.cli import main

    (tmp_path / "model.ckpt").write_bytes(b"not read")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--ckpt", str(tmp_path / "model.ckpt"), "--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(
        f"cnnsuite serve: error: --port {port}: cannot serve on 127.0.0.1:{port} (Address already in use)"
    )


def test_the_monitors_poll_of_a_manager_gone_at_shutdown_is_not_said_to_crash():
    """Stopping the server shuts LitServe's manager down under its monitoring thread, whose
    poll then logs 'Monitoring worker crashed' with a BrokenPipeError traceback: that record
    alone is dropped. Any other failure of the monitor, and LitServe's other errors, are said."""
    from litserve import server

    from cnnsuite.use.serve import MonitorAtShutdown

    records = []
    kept = logging.Handler()
    kept.emit = records.append  # what reaches LitServe's handlers, whether its logger propagates or not
    server.logger.addFilter(quiet := MonitorAtShutdown())
    server.logger.addHandler(kept)
    try:
        for error in (BrokenPipeError(32, "Broken pipe"), EOFError(), RuntimeError("a real fault")):
            try:
                raise error
            except Exception:
                server.logger.exception("Monitoring worker crashed")
        server.logger.error("⚠️ Worker inference-worker died; shutting down")
    finally:
        server.logger.removeFilter(quiet)
        server.logger.removeHandler(kept)
    said = [(r.getMessage(), type(r.exc_info[1]).__name__ if r.exc_info else None) for r in records]
    assert said == [
        ("Monitoring worker crashed", "RuntimeError"),
        ("⚠️ Worker inference-worker died; shutting down", None),
    ]


def test_an_error_names_no_server_folder_however_the_folder_resolves(monkeypatch):
    """macOS's temporary folders live in /var/folders/..., which resolves to /private/var/...:
    the shorter, replaced first, left '/private' before the upload's name."""
    from cnnsuite.use import serve

    monkeypatch.setattr(serve.os.path, "realpath", lambda path: "/private" + path)
    said = serve.unfoldered("/private/var/t/up/scan.nhdr: no file '/var/t/up/missing.raw'", "/var/t/up")
    assert said == "scan.nhdr: no file 'missing.raw'"


def test_an_upload_is_read_under_its_ending_alone_whatever_its_name():
    """The readers go by the name's ending, so the upload is stored under that alone: a name
    longer than a file system holds (300 bytes, or a CJK name of 90 characters) is predicted, and
    answered under its own name, where storing it under that name was refused with a 400. The
    longest ending the task takes wins (``.nii.gz`` over ``.gz``), in the client's own case."""
    import io
    from types import SimpleNamespace

    from cnnsuite.data import Input
    from cnnsuite.use.serve import PredictorAPI

    read = []

    def reader(path):
        read.append((path.name, path.read_bytes()))
        return Input(path, None)

    api = PredictorAPI("unused.ckpt")
    api.predictor = SimpleNamespace(
        datamodule=SimpleNamespace(input_extensions=(".gz", ".nii.gz", ".png")), read=reader
    )
    for name, stored in [("a" * 300 + ".png", "upload.png"), ("猫" * 90 + ".png", "upload.png"),
                         ("scan.NII.GZ", "upload.NII.GZ")]:  # fmt: skip
        upload = SimpleNamespace(filename=name, file=io.BytesIO(b"data"))
        item = api.decode_request(SimpleNamespace(getlist=lambda field, upload=upload: [upload]))
        assert item.path == Path(name), item
        assert read[-1] == (stored, b"data")


def test_a_readers_message_names_the_upload_by_its_clients_name_not_the_stored_one():
    """GDAL and PyTorchVideo name the file they could not read by its base name alone, which was
    the stored ``upload<ending>`` in the reply; the client's own name stays as it is, however
    like the stored name it reads."""
    import io
    from types import SimpleNamespace

    from cnnsuite.data import BadFileError
    from cnnsuite.use.serve import PredictorAPI

    def reader(path):
        raise BadFileError(f"{path}: cannot read ({path.name}, band 1: failed. Failed to open {path.name}. x)")

    api = PredictorAPI("unused.ckpt")
    api.predictor = SimpleNamespace(datamodule=SimpleNamespace(input_extensions=(".tif",)), read=reader)
    for name in ("cut.tif", "my_upload.tif", "upload.tif"):
        upload = SimpleNamespace(filename=name, file=io.BytesIO(b"data"))
        reply = api.decode_request(SimpleNamespace(getlist=lambda field, upload=upload: [upload]))
        assert reply.record["error"] == f"{name}: cannot read ({name}, band 1: failed. Failed to open {name}. x)"


def api_with(predictions):
    """A PredictorAPI whose predictor answers ``predictions``."""
    from cnnsuite.use.serve import PredictorAPI

    api = PredictorAPI("unused.ckpt")
    api.predictor = SimpleNamespace(predict=lambda inputs: predictions[: len(inputs)])
    return api


def test_a_non_finite_prediction_is_answered_422_and_the_others_of_its_batch_200():
    """As ``predict`` makes a NaN prediction that file's error, ``serve`` answers it with 422
    and the error line, never 200 (and never a JSON body with NaN in it)."""
    from cnnsuite.data import Input

    api = api_with([{"class": "cat", "score": 0.9}, {"class": "cat", "score": float("nan")}])
    items = [Input(Path("good.png"), None), Input(Path("bad.png"), None)]
    good, bad = api.predict(items)
    assert (good.status, bad.status) == (200, 422) and good.batch_size == bad.batch_size == 2
    assert good.record == {"path": "good.png", "class": "cat", "score": 0.9}
    assert bad.record == {"path": "bad.png", "error": "bad.png: the model's output is not finite (score)"}
    assert json.loads(api.encode_response(bad).body) == bad.record


def test_an_upload_named_with_the_clients_folders_is_answered_by_its_name_alone():
    """A client may send its own path as the filename (``photos/2024/cat.png``): the reply
    names the file, never the folders of the client's machine."""
    import io

    from cnnsuite.data import Input
    from cnnsuite.use.serve import PredictorAPI

    api = PredictorAPI("unused.ckpt")
    api.predictor = SimpleNamespace(
        datamodule=SimpleNamespace(input_extensions=(".png",)), read=lambda path: Input(path, None)
    )
    for name in ("photos/2024/cat.png", "../../cat.png", "/home/me/cat.png"):
        upload = SimpleNamespace(filename=name, file=io.BytesIO(b"data"))
        item = api.decode_request(SimpleNamespace(getlist=lambda field, upload=upload: [upload]))
        assert item.path == Path("cat.png"), item
