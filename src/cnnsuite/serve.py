"""``cnnsuite serve``: a checkpoint behind HTTP, with LitServe.

    cnnsuite serve --ckpt runs/recognition2d/version_0/checkpoints/best.ckpt --port 8000
    curl -F file=@photo.png http://127.0.0.1:8000/predict

``POST /predict`` takes the file (an image, a NIfTI volume, a video, a GeoTIFF: what the
checkpoint's task reads) as the multipart form field ``file`` and answers with the JSON of
one line of the ``predictions.jsonl`` that ``cnnsuite predict`` writes for that file,
``{"path": ..., **prediction}``; ``path`` is the uploaded filename, as the client's own
path never reaches the server. The file goes through :class:`~cnnsuite.predict.Predictor`,
so it is preprocessed exactly as ``cnnsuite predict`` preprocesses it. ``GET /health``
answers ``ok`` once the model is loaded; ``GET /info`` names the checkpoint, its classes and
the file types it takes.

Requests that arrive together are predicted together: LitServe gathers up to
``--max_batch_size`` of them, waiting at most ``--batch_timeout`` seconds for a batch to
fill, and one call of :meth:`Predictor.predict` answers them all (the task's
``batch_inputs`` stacks them). The ``X-Batch-Size`` header of an answer says how many
requests were handled together with it.

A bad upload is answered alone, with the error line of ``predictions.jsonl``
(``{"path", "error"}``, the message naming the file and what was expected): 400 for no
file or an empty one, 415 for a type the task does not take or a body that is not a
multipart form, 422 for a file that cannot be read. LitServe's batched loop decodes all
the requests of a batch in one ``try``, so an exception raised in ``decode_request`` would
fail every request in the batch: here ``decode_request`` never raises, and a rejected
upload travels through the batch as a :class:`Reply` that ``predict`` passes by.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import litserve as ls
import torch
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from litserve.loops import BatchedLoop
from starlette.middleware.base import BaseHTTPMiddleware

from .data.errors import BadFileError
from .data.inputs import Input
from .predict import Predictor

logger = logging.getLogger(__name__)

#: the multipart form field that carries the upload
FIELD = "file"


@dataclass
class Reply:
    """One request's answer: its HTTP status, its JSON line, and how many requests LitServe
    handed to :meth:`PredictorAPI.predict` with it (the ``X-Batch-Size`` header)."""

    status: int
    record: dict
    batch_size: int = 1


class PredictorAPI(ls.LitAPI):
    """A :class:`~cnnsuite.predict.Predictor` as a LitServe API (one per inference worker)."""

    def __init__(self, ckpt_path: str | Path, max_batch_size: int = 8, batch_timeout: float = 0.05) -> None:
        # Always the batched loop, so that predict takes a list even with max_batch_size=1.
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=BatchedLoop())
        self.ckpt_path = str(ckpt_path)

    def setup(self, device: str) -> None:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # Predictor puts the model on the current CUDA device
        self.predictor = Predictor(self.ckpt_path, "gpu" if device.startswith("cuda") else "cpu")

    def decode_request(self, request) -> Input | Reply:
        """The upload read as the model's input, or the :class:`Reply` that rejects it.
        ``request`` is the parsed multipart form (:class:`OnlyMultipart` turns other bodies
        away); it has no type annotation, which LitServe would give FastAPI to validate it with."""
        upload = request.get(FIELD)
        expected = "expected " + ", ".join(self.predictor.datamodule.input_extensions)
        if upload is None or isinstance(upload, str):
            return reject(400, None, f"no file: send one as the multipart form field '{FIELD}' ({expected})")
        name = Path(upload.filename or "").name
        if name in ("", ".."):
            return reject(400, None, f"the upload has no filename; its extension tells its type ({expected})")
        data = upload.file.read()
        if not data:
            return reject(400, name, f"{name}: empty file")
        # The readers go by extension (".nii.gz" is two): the file keeps its whole name.
        with tempfile.TemporaryDirectory(prefix="cnnsuite-serve-") as folder:
            path = Path(folder) / name
            try:
                path.write_bytes(data)
            except (OSError, ValueError) as err:  # a name too long for the file system, say
                return reject(400, name, f"{name}: cannot be stored under this filename ({err})")
            if not self.predictor.datamodule.is_input(path):
                return reject(415, name, f"{name}: not a file this model takes ({expected})")
            try:
                item = self.predictor.read(path)
            except BadFileError as err:
                return reject(422, name, str(err).replace(str(path), name))
            except Exception as err:  # a reader's bug: this request fails, the others of its batch go on
                logger.exception("reading the upload %s failed", name)
                return reject(500, name, f"{name}: cannot read ({type(err).__name__}: {err})")
        return replace(item, path=Path(name))

    def predict(self, items: list[Input | Reply]) -> list[Reply]:
        """One :meth:`Predictor.predict` call for the readable uploads of the batch."""
        with torch.inference_mode():
            predictions = iter(self.predictor.predict([item for item in items if isinstance(item, Input)]))
        return [
            replace(item, batch_size=len(items))
            if isinstance(item, Reply)
            else Reply(200, {"path": str(item.path), **next(predictions)}, len(items))
            for item in items
        ]

    def encode_response(self, reply: Reply) -> JSONResponse:
        return JSONResponse(reply.record, status_code=reply.status, headers={"X-Batch-Size": str(reply.batch_size)})


def reject(status: int, name: str | None, message: str) -> Reply:
    """The error line of ``predictions.jsonl`` for an upload (``name``: its filename)."""
    return Reply(status, {"path": name, "error": message})


class OnlyMultipart(BaseHTTPMiddleware):
    """Answers a ``POST`` whose body is not a multipart form with 415: LitServe would parse
    it as JSON and answer a raw image body, say, with a bare 500."""

    def __init__(self, app, api_path: str) -> None:
        super().__init__(app)
        self.api_path = api_path

    async def dispatch(self, request: Request, call_next) -> Response:
        if request.method == "POST" and request.url.path == self.api_path:
            content_type = request.headers.get("content-type", "")
            if not content_type.startswith("multipart/form-data"):
                got = content_type or "no content type"
                message = f"send the file as multipart/form-data in the field '{FIELD}' (got {got})"
                return JSONResponse({"path": None, "error": message}, status_code=415)
        return await call_next(request)


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnsuite serve",
        description="Serve a checkpoint over HTTP (LitServe): POST /predict with a file as the multipart form field "
        f"'{FIELD}' answers with its line of predictions.jsonl; GET /health.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by cnnsuite fit")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    parser.add_argument("--max_batch_size", type=int, default=8, help="most requests predicted together")
    parser.add_argument(
        "--batch_timeout", type=float, default=0.05, help="seconds a batch waits to fill before it is predicted"
    )
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    args = parser.parse_args(argv)
    if not 1024 <= args.port <= 65535:
        parser.error(f"--port must be from 1024 to 65535 (LitServe's range), got {args.port}")
    if args.max_batch_size < 1 or args.batch_timeout < 0:
        parser.error("--max_batch_size must be at least 1 and --batch_timeout at least 0")
    # The checkpoint is read here once, so that a bad one ends the command with one line
    # instead of failing in the inference worker.
    predictor = Predictor(args.ckpt, accelerator="cpu")
    metadata = {
        "checkpoint": str(args.ckpt),
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
        middlewares=[(OnlyMultipart, {"api_path": api.api_path})],
    )
    local = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)  # an address to open
    url = f"http://{local}:{args.port}"
    print(
        f"cnnsuite serve: {args.ckpt} at {url}/predict (POST a file as the form field '{FIELD}'; health: {url}/health)",
        flush=True,
    )
    stop_on_sigterm()
    server.run(host=args.host, port=args.port, generate_client_file=False)


def stop_on_sigterm() -> None:
    """SIGTERM (``kill``, ``docker stop``) shuts the server down as Ctrl+C does: LitServe
    stops its worker processes on KeyboardInterrupt only, and would otherwise leave them
    running without their parent. The API server processes it forks inherit the handler and
    re-raise the signal once uvicorn has stopped them: they just exit."""
    main_pid = os.getpid()

    def stop(signum, frame) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
