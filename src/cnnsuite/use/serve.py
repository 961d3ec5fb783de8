"""``cnnsuite serve``: a checkpoint behind HTTP, with LitServe.

    cnnsuite serve --ckpt runs/<task>/version_0/checkpoints/best.ckpt --port 8000
    curl -F file=@photo.png http://127.0.0.1:8000/predict

``POST /predict`` takes the file (an image, a NIfTI volume, a video, a GeoTIFF: what the
checkpoint's task reads) as the multipart form field ``file`` and answers with the JSON of
one line of the ``predictions.jsonl`` that ``cnnsuite predict`` writes for that file,
``{"path": ..., **prediction}``; ``path`` is the uploaded filename, as the client's own
path never reaches the server. The filename's ending tells the file's type; a file named
without an ending the model takes (a browser's ``Blob`` is named ``blob``) is told by its
content (the task's :meth:`~cnnsuite.data.TaskDataModule.content_suffix`). The file goes
through :class:`~cnnsuite.use.predict.Predictor`, so it is preprocessed exactly as ``cnnsuite
predict`` preprocesses it. ``GET /health`` answers ``ok`` once the model is loaded; ``GET /info``
names the checkpoint, its classes and the file types it takes.

Requests that arrive together are predicted together: LitServe gathers up to
``--max_batch_size`` of them, waiting at most ``--batch_timeout`` seconds for a batch to
fill, and one call of :meth:`Predictor.predict` answers them all (the task's
``batch_inputs`` stacks them). The ``X-Batch-Size`` header of an answer says how many
requests were handled together with it.

A bad upload is answered alone, with the error line of ``predictions.jsonl``
(``{"path", "error"}``, the message naming the file and what was expected): 400 for no
file or an empty one, or a body that is not a well-formed multipart form (no boundary,
broken parts, more than a few files or fields); 413 for a body over ``--max_upload_mb``;
415 for a type the task does not take or a body that is not a multipart form; 422 for a
file that cannot be read, or that declares more pixels (voxels, frames × pixels, bands ×
pixels) than ``--max_pixels`` allows (:mod:`cnnsuite.data.limits`, read from its header
before anything decodes it). A bad request costs its sender only: :class:`UploadGuard`
refuses a body from its headers, or the moment it goes wrong or over the limit, before
LitServe stores it, and a decompression bomb is refused from its header in milliseconds,
so the requests batched with it or queued behind it keep their latency. LitServe's
batched loop decodes all the requests of a batch in one ``try``, so an exception raised in
``decode_request`` would fail every request in the batch: here ``decode_request`` never
raises, and a rejected upload travels through the batch as a :class:`Reply` that
``predict`` passes by.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import litserve as ls
import torch
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from litserve.loops import BatchedLoop
from starlette.datastructures import Headers
from starlette.formparsers import FormParserError, multipart, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data import limits
from ..data.errors import BadFileError
from ..data.inputs import Input
from ..errors import ConfigError
from .predict import Predictor

logger = logging.getLogger(__name__)

#: the multipart form field that carries the upload
FIELD = "file"
#: the most a form may hold: the upload and a few fields beside it (Starlette allows 1,000 of
#: each, and refuses more with a 400 that LitServe answers as a 500)
MAX_FILES, MAX_FIELDS, MAX_FIELD_BYTES = 8, 32, 64 * 1024
MIB = 2**20


@dataclass
class Reply:
    """One request's answer: its HTTP status, its JSON line, and how many requests LitServe
    handed to :meth:`PredictorAPI.predict` with it (the ``X-Batch-Size`` header)."""

    status: int
    record: dict
    batch_size: int = 1


def unfoldered(message: str, folder: str) -> str:
    """``message`` with the upload's temporary ``folder`` left out of the paths it names (a
    detached header's missing ``data file``, say): the server's temporary folder is no
    client's business."""
    for place in sorted({folder, os.path.realpath(folder)}, key=len, reverse=True):  # /private/var before /var
        message = message.replace(place + os.sep, "").replace(place, ".")
    return message


def renamed(message: str, path: Path, name: str) -> str:
    """``message`` with the stored upload ``path`` named by the client's ``name``, where the
    message gives the whole path and where it gives the file's name alone (GDAL and PyTorchVideo
    do); in one pass, so that a client's name like the stored one is left as it is."""
    alone = rf"(?<![\w.-]){re.escape(path.name)}(?![\w-])(?!\.\w)"  # a sentence's full stop may follow
    return re.sub(f"{re.escape(str(path))}|{alone}", lambda _: name, message)


class PredictorAPI(ls.LitAPI):
    """A :class:`~cnnsuite.use.predict.Predictor` as a LitServe API (one per inference worker)."""

    def __init__(self, ckpt_path: str | Path, max_batch_size: int = 8, batch_timeout: float = 0.05) -> None:
        # Always the batched loop, so that predict takes a list even with max_batch_size=1.
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=BatchedLoop())
        self.ckpt_path = str(ckpt_path)

    def setup(self, device: str) -> None:
        # Ctrl+C signals the whole process group. The main process shuts LitServe down and
        # terminates this worker; a KeyboardInterrupt of its own would only print a traceback
        # from LitServe's request loop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # Predictor puts the model on the current CUDA device
        self.predictor = Predictor(self.ckpt_path, "gpu" if device.startswith("cuda") else "cpu")

    def decode_request(self, request) -> Input | Reply:
        """The upload read as the model's input, or the :class:`Reply` that rejects it.
        ``request`` is the parsed multipart form (:class:`UploadGuard` turns other bodies
        away); it has no type annotation, which LitServe would give FastAPI to validate it with."""
        uploads = request.getlist(FIELD)
        expected = "expected " + ", ".join(self.predictor.datamodule.input_extensions)
        if len(uploads) > 1:  # one answer a request: the others would go unpredicted without a word
            return reject(400, None, f"{len(uploads)} form fields '{FIELD}': send one file a request ({expected})")
        upload = uploads[0] if uploads else None
        if upload is None or isinstance(upload, str):
            return reject(400, None, f"no file: send one as the multipart form field '{FIELD}' ({expected})")
        name = Path(upload.filename or "").name
        if name in ("", ".."):
            return reject(400, None, f"the upload has no filename; its extension tells its type ({expected})")
        data = upload.file.read()
        if not data:
            return reject(400, name, f"{name}: empty file")
        # The readers go by the name's ending (".nii.gz" is two), all the file is stored under:
        # the client's name only names the upload in replies, and need not fit the file system.
        datamodule = self.predictor.datamodule
        endings = [e for e in datamodule.input_extensions if name.lower().endswith(e.lower())]
        ending = name[-len(max(endings, key=len)) :] if endings else datamodule.content_suffix(data)  # ("blob")
        if ending is None:
            return reject(415, name, f"{name}: not a file this model takes ({expected})")
        with tempfile.TemporaryDirectory(prefix="cnnsuite-serve-") as folder:
            path = Path(folder) / f"upload{ending}"
            try:
                path.write_bytes(data)
            except OSError as err:  # the server's disk is full, say
                return reject(500, name, f"{name}: cannot be stored ({unfoldered(str(err), folder)})")
            try:
                item = self.predictor.read(path)
            except BadFileError as err:
                return reject(422, name, unfoldered(renamed(str(err), path, name), folder))
            except Exception as err:  # a reader's bug: this request fails, the others of its batch go on
                logger.exception("reading the upload %s failed", name)
                return reject(500, name, f"{name}: cannot read ({type(err).__name__}: {err})")
        return replace(item, path=Path(name))

    def predict(self, items: list[Input | Reply]) -> list[Reply]:
        """One :meth:`Predictor.predict` call for the readable uploads of the batch; where it
        fails, each upload is predicted alone, so only the one the model cannot take fails."""
        inputs = [item for item in items if isinstance(item, Input)]
        with torch.inference_mode():
            try:
                predictions = self.predictor.predict(inputs)
            except Exception:
                logger.exception("a batch of %d uploads failed; predicting each alone", len(inputs))
                predictions = [self.predict_alone(item) for item in inputs]
        count, predicted = len(items), iter(predictions)
        replies = [item if isinstance(item, Reply) else next(predicted) for item in items]
        return [
            replace(reply, batch_size=count) if isinstance(reply, Reply) else answer(item, reply, count)
            for item, reply in zip(items, replies, strict=True)
        ]

    def predict_alone(self, item: Input) -> dict | Reply:
        """The prediction of one upload, or the 500 reply of the upload the model cannot take."""
        try:
            return self.predictor.predict([item])[0]
        except Exception as err:
            logger.exception("predicting the upload %s failed", item.path)
            return reject(500, str(item.path), f"{item.path}: cannot be predicted ({type(err).__name__}: {err})")

    def encode_response(self, reply: Reply) -> JSONResponse:
        return JSONResponse(reply.record, status_code=reply.status, headers={"X-Batch-Size": str(reply.batch_size)})


def answer(item: Input, prediction: dict, batch_size: int) -> Reply:
    """The line ``cnnsuite predict`` writes for the upload: 200, or 422 with its error when the
    model's output is not finite (:meth:`Predictor.record`)."""
    record = Predictor.record(item, prediction)
    return Reply(422 if "error" in record else 200, record, batch_size)


def reject(status: int, name: str | None, message: str) -> Reply:
    """The error line of ``predictions.jsonl`` for an upload (``name``: its filename)."""
    return Reply(status, {"path": name, "error": message})


class BadForm(ValueError):
    """A multipart body that Starlette's parser would refuse, or more form than an upload needs."""


class FormCheck:
    """Follows a multipart body chunk by chunk with the parser Starlette uses (python-multipart)
    and stricter limits, each chunk before Starlette's parser sees it, so that whatever
    Starlette would refuse (with a 400 that LitServe turns into a 500 and a traceback) raises
    :class:`BadForm` here first: no boundary, a malformed body, a part without a name, too
    many files or fields, a field too long. It keeps nothing of the body."""

    def __init__(self, content_type: str) -> None:
        _, params = parse_options_header(content_type)
        if not params.get(b"boundary"):
            raise BadForm("the Content-Type multipart/form-data names no boundary")
        self.files = self.fields = self.field_bytes = 0
        self.in_file = False
        self.header_name = self.header_value = self.disposition = b""
        callbacks = {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
        }
        try:  # the module Starlette's own MultiPartParser uses
            self.parser = multipart.MultipartParser(params[b"boundary"], callbacks)
        except FormParserError as err:  # a boundary over 256 bytes, say
            raise BadForm(f"the Content-Type's boundary cannot be used ({' '.join(str(err).split())})") from None

    def feed(self, chunk: bytes, last: bool) -> None:
        try:
            self.parser.write(chunk)
            if last:
                self.parser.finalize()
        except FormParserError as err:
            raise BadForm(f"not a well-formed multipart/form-data body ({' '.join(str(err).split())})") from None

    def on_part_begin(self) -> None:
        self.in_file, self.field_bytes, self.disposition = False, 0, b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise BadForm("a part of the form has no name (its Content-Disposition needs name=...)")
        self.in_file = b"filename" in options
        if self.in_file:
            self.files += 1
        else:
            self.fields += 1
        if self.files > MAX_FILES or self.fields > MAX_FIELDS:
            raise BadForm(
                f"too many parts: send one file in the form field '{FIELD}' "
                f"(at most {MAX_FILES} files and {MAX_FIELDS} other fields are taken)"
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            self.field_bytes += end - start
            if self.field_bytes > MAX_FIELD_BYTES:
                raise BadForm(f"a form field (not a file) is over {MAX_FIELD_BYTES // 1024} KB")


class UploadGuard:
    """ASGI middleware in front of ``POST`` to the API path: it lets through only a
    multipart form within ``max_bytes``, refusing with the one-line JSON error
    ``{"path": null, "error": ...}`` of the other rejections, before LitServe stores anything:

    - 415 for a body that is not a multipart form (LitServe would parse it as JSON, and answer
      a raw image body, say, with a bare 500);
    - 413 for a ``Content-Length`` over ``max_bytes``, answered before the body is read, and
      for a body without one (chunked) the moment it passes ``max_bytes``;
    - 400 for a malformed form (:class:`FormCheck`), the moment it goes wrong.

    A refusal closes the connection, so its sender stops sending the rest of the body."""

    def __init__(self, app: ASGIApp, api_path: str, max_bytes: int) -> None:
        self.app, self.api_path, self.max_bytes = app, api_path, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.api_path:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            got = content_type or "no content type"
            message = f"send the file as multipart/form-data in the field '{FIELD}' (got {got})"
            await refusal(415, message)(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await refusal(413, f"the body is {int(length) / MIB:.1f} MB, {self.over_limit()}")(scope, receive, send)
            return
        try:
            form = FormCheck(content_type)
        except BadForm as err:
            await refusal(400, str(err))(scope, receive, send)
            return
        refused: JSONResponse | None = None
        received = 0

        async def checked_receive() -> Message:
            nonlocal refused, received
            message = await receive()
            if message["type"] == "http.request" and refused is None:
                body = message.get("body", b"")
                received += len(body)
                if received > self.max_bytes:
                    refused = refusal(413, f"the body goes {self.over_limit()}")
                else:
                    try:
                        form.feed(body, last=not message.get("more_body", False))
                    except BadForm as err:
                        refused = refusal(400, str(err))
                if refused is not None:
                    # Ends the form parsing upstream; FastAPI's answer to it is dropped for ours.
                    raise HTTPException(refused.status_code)
            return message

        async def guarded_send(message: Message) -> None:
            if refused is None:
                await send(message)

        try:
            await self.app(scope, checked_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None:
            await refused(scope, receive, send)

    def over_limit(self) -> str:
        return f"over this server's limit of {self.max_bytes / MIB:g} MB (cnnsuite serve --max_upload_mb)"


def refusal(status: int, message: str) -> JSONResponse:
    """The answer to a request refused before its upload was read; it closes the connection."""
    return JSONResponse({"path": None, "error": message}, status_code=status, headers={"Connection": "close"})


def serve_main(argv: list[str]) -> None:
    from ..commands import add_accelerator, command_parser

    parser = command_parser(
        "serve",
        description="Serve a checkpoint over HTTP (LitServe): POST /predict with a file as the multipart form field "
        f"'{FIELD}' answers with its line of predictions.jsonl; GET /health.",
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on, 1024-65535 (default: %(default)s)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        choices=["127.0.0.1", "0.0.0.0", "::"],
        help="address to listen on: this machine only, or every IPv4 / IPv6 address (default: %(default)s)",
    )
    parser.add_argument(
        "--max_batch_size", type=int, default=8, help="most requests predicted together (default: %(default)s)"
    )
    parser.add_argument(
        "--batch_timeout",
        type=float,
        default=0.05,
        help="seconds a batch waits to fill before it is predicted (default: %(default)s)",
    )
    add_accelerator(parser)
    parser.add_argument(
        "--max_upload_mb",
        type=float,
        default=100,
        help="largest request body taken, in MB (2^20 bytes); a larger one is answered 413 before it is read "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max_pixels",
        default=None,
        help="most pixels an upload may declare, counting a volume's voxels, a video's frames x width x height, "
        "a GeoTIFF's bands x width x height; a larger one is answered 422 before it is decoded, and a checkpoint "
        "whose samples would hold more is refused (default: "
        f"${limits.ENV} if set, else {limits.DEFAULTS['image']:,} for an image, {limits.DEFAULTS['volume']:,} "
        "for the others)",
    )
    args = parser.parse_args(argv)
    if not 1024 <= args.port <= 65535:
        parser.error(f"--port must be from 1024 to 65535 (LitServe's range), got {args.port}")
    if args.max_batch_size < 1 or args.batch_timeout < 0:
        parser.error("--max_batch_size must be at least 1 and --batch_timeout at least 0")
    if not args.max_upload_mb > 0:
        parser.error(f"--max_upload_mb must be more than 0, got {args.max_upload_mb:g}")
    if args.max_pixels is not None:
        # The inference workers LitServe starts inherit the environment, as the readers do in training.
        os.environ[limits.ENV] = str(limits.parse_count(args.max_pixels, "--max_pixels"))
    limits.max_pixels("image")  # a bad CNNSUITE_MAX_PIXELS ends the command here, with one line
    check_port_free(args.host, args.port)
    # The checkpoint is read here once, so that a bad one ends the command with one line
    # instead of failing in the inference worker.
    predictor = Predictor(args.ckpt, accelerator="cpu")
    metadata = {
        "checkpoint": Path(args.ckpt).name,  # where it lies on the server is no client's business
        "model": type(predictor.model).__name__,
        "classes": list(predictor.model.class_names),
        "inputs": list(predictor.datamodule.input_extensions),
    }
    del predictor
    api = PredictorAPI(args.ckpt, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(
        api,
        accelerator=args.accelerator,
        devices=1,
        model_metadata=metadata,
        middlewares=[(UploadGuard, {"api_path": api.api_path, "max_bytes": int(args.max_upload_mb * MIB)})],
    )
    local = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)  # an address to open
    url = f"http://{local}:{args.port}"
    print(
        f"cnnsuite serve: {args.ckpt} at {url}/predict (POST a file as the form field '{FIELD}'; health: {url}/health)",
        flush=True,
    )
    stop_on_sigterm()
    for quieted in (MonitorAtShutdown(), ClientGone()):
        logging.getLogger("litserve.server").addFilter(quieted)
    server.run(host=args.host, port=args.port, generate_client_file=False)


def check_port_free(host: str, port: int) -> None:
    """uvicorn finds a port taken only after LitServe has started its workers and the banner has
    said the server is up; it prints its own error and the command exits 3. The port is tried
    here first, bound as uvicorn binds it (``SO_REUSEADDR``), and released."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"--port {port}: cannot serve on {host}:{port} ({err.strerror or err}); give another --port"
            ) from None


class MonitorAtShutdown(logging.Filter):
    """LitServe's monitoring thread polls an event its multiprocessing manager holds; stopping
    the server shuts the manager down, and a poll in that moment fails with the manager's pipe
    gone, logged as 'Monitoring worker crashed' with a traceback though nothing crashed. That
    record alone is dropped; a worker that dies while serving is still said."""

    GONE = (BrokenPipeError, EOFError, ConnectionResetError)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage() == "Monitoring worker crashed" and isinstance(error, self.GONE))


class ClientGone(logging.Filter):
    """A client that closes its connection before its body has all arrived makes Starlette
    raise ``ClientDisconnect``, which LitServe logs as an 'Unhandled exception' with a
    traceback of some twenty lines: anyone could fill the log so. The record becomes a
    one-line warning; LitServe's other errors keep their tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        from starlette.requests import ClientDisconnect

        if record.exc_info and isinstance(record.exc_info[1], ClientDisconnect):
            record.msg, record.args = "a client left before its upload had arrived", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def stop_on_sigterm() -> None:
    """SIGTERM (``kill``, ``docker stop``) shuts the server down as Ctrl+C does: LitServe
    stops its worker processes on KeyboardInterrupt only, and would otherwise leave them
    running without their parent. The API server processes it forks inherit the handler and
    re-raise the signal once uvicorn has stopped them: they just exit, at once. Unwound by
    ``SystemExit``, their event loop would cancel Starlette's lifespan task, which logs the
    cancellation with a traceback whenever it has not finished yet."""
    main_pid = os.getpid()

    def stop(signum, frame) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
