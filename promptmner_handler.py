"""Inference Endpoints handler of a PromptMNER model, saved as `handler.py` in every model folder.

The Hub's hosted widget and serverless inference do not run `trust_remote_code` models; a dedicated Inference
Endpoint does, with this custom handler. The endpoint's toolkit finds `handler.py` in the repository, puts the
repository folder on `sys.path`, installs its `requirements.txt`, builds `EndpointHandler(path)` once, and calls it
with every request body (JSON, parsed into a dict):

```json
{"inputs": "Kevin Durant arrives in Oklahoma City"}
{"inputs": {"text": "Kevin Durant arrives in Oklahoma City", "image": "<base64 JPEG/PNG, or a data: URL>"}}
{"inputs": ["a text", {"text": "another", "image": "data:image/png;base64,..."}], "parameters": {"batch_size": 8}}
```

`parameters` (all optional): `threshold` (minimum label probability, default 0), `batch_size`, `ignore_labels`
(list of entity types), `stride` and `max_length` (long-text chunking, see the `multimodal-ner` pipeline), and
`aggregation_strategy`, accepted as token-classification clients send it (entities are always whole word spans).

Bounds. Everything in a request that sizes the memory or the time of its answer is bounded, so that one request
cannot hold the model for long; a value past its bound is a 400 that names the field and the bound:

- `inputs`: at most `MAX_INPUTS` (32) examples; each text at most `MAX_TEXT_CHARACTERS` (10,000) characters;
- an image: at most `MAX_IMAGE_BYTES` (10 MB) decoded bytes and `MAX_IMAGE_PIXELS` (25 megapixels);
- `batch_size`: 1 to `MAX_BATCH_SIZE` (32); `stride`: 0 to `MAX_STRIDE` (256) words; `max_length`: from the
  tokenizer's special tokens + 1 to the model's window (in tokens); `ignore_labels`: at most `MAX_IGNORE_LABELS`
  (64) labels.

The response has the format of transformers' aggregated `token-classification` output: for one input, a list of
`{"entity_group", "score", "word", "start", "end"}` (character offsets into the text); for a list of inputs, one
such list per input. A bad request raises [`BadRequestError`] whose message names the offending field (the toolkit
returns it with status 400). Model calls are serialised by a lock, so concurrent calls are safe.

This file imports no `promptmner` module: it loads the model, the processor and the pipeline from the folder with
`trust_remote_code=True`, exactly as a Hub user would. Run as a script, it serves the folder it is in over HTTP on
127.0.0.1, as an endpoint answers (JSON in, JSON out, 400 with `{"error": ...}` for a bad request), to try requests
before deploying:

    python handler.py --port 8080
    curl -s localhost:8080 -H "Content-Type: application/json" -d '{"inputs": "Kevin Durant arrives in Oklahoma City"}'

The local server serves connections concurrently (one thread each, at most `--max_connections`), reads each with a
timeout (`--read_timeout` seconds: 408 for a client that stalls), and answers a body over `--max_body_bytes` with
413, a body without `Content-Length` (or chunked) with 411, a `Content-Length` that is not a byte count or JSON
nested too deeply with 400; a slow or broken client costs only its own request.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import pipeline

logger = logging.getLogger(__name__)
TASK = "multimodal-ner"
INPUT_KEYS = ("text", "image")
AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")

# Bounds of one request (see the module docstring).
MAX_INPUTS = 32
MAX_TEXT_CHARACTERS = 10_000
MAX_IMAGE_BYTES = 10 * 2**20
MAX_IMAGE_PIXELS = 25_000_000
MAX_BATCH_SIZE = 32
MAX_STRIDE = 256
MAX_IGNORE_LABELS = 64
# The local server's defaults.
MAX_BODY_BYTES = 16 * 2**20
READ_TIMEOUT_SECONDS = 30.0
MAX_CONNECTIONS = 64


class BadRequestError(ValueError):
    """A request body that does not have the documented form; the message names the field."""


@dataclass(frozen=True)
class RequestLimits:
    """The bounds a request is checked against; `max_length` depends on the model (`EndpointHandler` sets it)."""

    min_max_length: int = 2
    max_max_length: int = 512


# ----------------------------------------------------------------------------------------------------------------
# Request parsing (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def _base64_payload(value: str, field: str) -> str:
    """The base64 part of a plain base64 string or of a `data:<type>;base64,<payload>` URL."""
    if not value.startswith("data:"):
        return value
    header, comma, payload = value.partition(",")
    if not comma or not header.endswith(";base64"):
        raise BadRequestError(f"{field}: a data URL must look like 'data:image/png;base64,<data>', got {header!r}")
    return payload


def _open_bounded(data: bytes, field: str) -> Image.Image:
    """Open image bytes, refuse more than `MAX_IMAGE_PIXELS` before decoding them, then decode."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise BadRequestError(
                f"{field}: the image has {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS} are accepted"
            )
        image.load()
    except Image.DecompressionBombError as error:
        raise BadRequestError(f"{field}: the image is too large ({error})") from None
    except UnidentifiedImageError:
        raise BadRequestError(f"{field}: the {len(data)} decoded bytes are not an image; send a JPEG or PNG") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, BadRequestError):
            raise
        raise BadRequestError(f"{field}: the image data is truncated or corrupt ({error})") from None
    return image


def decode_image(value: Any, field: str) -> Image.Image:
    """Decode a base64 JPEG/PNG (or any image PIL reads), plain or as a data URL, into a loaded PIL image.

    Args:
        value: the request's image field.
        field: its name in the request, for error messages (e.g. `"inputs[2].image"`).
    """
    if not isinstance(value, str):
        raise BadRequestError(f"{field} must be a base64 string or a data URL, got {type(value).__name__}")
    if value.startswith(("http://", "https://", "/", "file:")):
        raise BadRequestError(f"{field}: URLs and paths are not fetched; send the image bytes as base64")
    payload = "".join(_base64_payload(value, field).split())  # line breaks of `base64` output are fine
    if len(payload) // 4 * 3 > MAX_IMAGE_BYTES:
        raise BadRequestError(
            f"{field}: about {len(payload) // 4 * 3} image bytes; at most {MAX_IMAGE_BYTES} are accepted"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequestError(f"{field} is not valid base64 ({error})") from None
    if not data:
        raise BadRequestError(f"{field} is empty")
    return _open_bounded(data, field)


def check_text(text: str, field: str) -> str:
    """`text` if it is within `MAX_TEXT_CHARACTERS` and UTF-8 can encode it (JSON's `"\ud800"` is a lone surrogate,
    which it cannot), else a `BadRequestError` naming the field and the character."""
    if len(text) > MAX_TEXT_CHARACTERS:
        raise BadRequestError(f"{field} has {len(text)} characters; at most {MAX_TEXT_CHARACTERS} are accepted")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRequestError(
            f"{field} holds a lone surrogate U+{ord(text[error.start]):04X} at character {error.start}, which UTF-8 "
            "cannot encode"
        ) from None
    return text


def parse_example(value: Any, field: str) -> str | dict[str, Any]:
    """One input: a string, or `{"text": str, "image": base64 str | null}` with the image decoded."""
    if isinstance(value, str):
        return check_text(value, field)
    if not isinstance(value, Mapping):
        raise BadRequestError(
            f"{field} must be a string or an object with 'text' and optionally 'image', got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(INPUT_KEYS))
    if unknown:
        raise BadRequestError(f"{field} has unknown keys {unknown}; an input has 'text' and optionally 'image'")
    if "text" not in value:
        raise BadRequestError(f"{field}.text is missing")
    if not isinstance(value["text"], str):
        raise BadRequestError(f"{field}.text must be a string, got {type(value['text']).__name__}")
    text = check_text(value["text"], f"{field}.text")
    image = value.get("image")
    if image is None:
        return text
    return {"text": text, "image": decode_image(image, f"{field}.image")}


def parse_inputs(inputs: Any) -> tuple[list[str | dict[str, Any]], bool]:
    """`(examples, is_batch)` from the request's `inputs`: one input or a non-empty list of at most `MAX_INPUTS`."""
    if isinstance(inputs, list):
        if not inputs:
            raise BadRequestError("inputs is an empty list; give at least one text")
        if len(inputs) > MAX_INPUTS:
            raise BadRequestError(f"inputs has {len(inputs)} examples; at most {MAX_INPUTS} are accepted per request")
        return [parse_example(value, f"inputs[{index}]") for index, value in enumerate(inputs)], True
    return [parse_example(inputs, "inputs")], False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_labels(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_IGNORE_LABELS and all(isinstance(x, str) for x in value)


def parse_parameters(parameters: Any, limits: RequestLimits = RequestLimits()) -> dict[str, Any]:
    """Check `parameters` against their types and `limits`, and return them as pipeline call arguments."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BadRequestError(f"parameters must be an object, got {type(parameters).__name__}")
    low, high = limits.min_max_length, limits.max_max_length
    checks = {
        "threshold": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                      "a number in [0, 1]"),
        "batch_size": (lambda v: _is_int(v) and 1 <= v <= MAX_BATCH_SIZE, f"an integer in [1, {MAX_BATCH_SIZE}]"),
        "stride": (lambda v: _is_int(v) and 0 <= v <= MAX_STRIDE, f"an integer in [0, {MAX_STRIDE}] (words)"),
        "max_length": (lambda v: _is_int(v) and low <= v <= high, f"an integer in [{low}, {high}] (tokens)"),
        "ignore_labels": (_is_labels, f"a list of at most {MAX_IGNORE_LABELS} strings"),
        # Sent by token-classification clients (e.g. InferenceClient.token_classification); entities are whole spans.
        "aggregation_strategy": (lambda v: v in AGGREGATION_STRATEGIES, f"one of {list(AGGREGATION_STRATEGIES)}"),
    }  # fmt: skip
    unknown = sorted(set(parameters) - set(checks))
    if unknown:
        raise BadRequestError(f"unknown parameters {unknown}; known: {sorted(checks)}")
    for name, value in parameters.items():
        valid, expected = checks[name]
        if not valid(value):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise BadRequestError(f"parameters.{name} must be {expected}, got {shown}")
    return dict(parameters)


def parse_request(
    data: Any, limits: RequestLimits = RequestLimits()
) -> tuple[list[str | dict[str, Any]], bool, dict[str, Any]]:
    """`(examples, is_batch, pipeline arguments)` from a request body as the endpoint toolkit delivers it."""
    if not isinstance(data, Mapping):
        raise BadRequestError(f"the request body must be a JSON object with 'inputs', got {type(data).__name__}")
    unknown = sorted(set(data) - {"inputs", "parameters"})
    if unknown:
        raise BadRequestError(f"the request body has unknown keys {unknown}; it has 'inputs' and 'parameters'")
    if "inputs" not in data:
        raise BadRequestError("the request body has no 'inputs' (a text, an object with 'text' and 'image', or a list)")
    arguments = parse_parameters(data.get("parameters"), limits)  # first: cheap, and decoding images is not
    examples, is_batch = parse_inputs(data["inputs"])
    return examples, is_batch, arguments


# ----------------------------------------------------------------------------------------------------------------
# The handler
# ----------------------------------------------------------------------------------------------------------------


class EndpointHandler:
    """The Inference Endpoints entry point: the `multimodal-ner` pipeline of the model folder behind a JSON API.

    Requests are parsed and checked concurrently; the model calls run one at a time (a lock), so the handler can be
    called from several threads.

    Args:
        path (`str`, *optional*): the model folder (the endpoint passes its repository copy); defaults to the folder
            of this file.
    """

    def __init__(self, path: str | os.PathLike = ""):
        folder = os.fspath(path) or os.path.dirname(os.path.abspath(__file__))
        device = 0 if torch.cuda.is_available() else -1
        self.pipeline = pipeline(TASK, model=folder, trust_remote_code=True, device=device)
        special = self.pipeline.processor.tokenizer.num_special_tokens_to_add()
        self.limits = RequestLimits(min_max_length=special + 1, max_max_length=self.pipeline.window(False))
        self.reads_images = self.pipeline.processor.image_scorer.vision is not None
        self._model_lock = threading.Lock()

    def __call__(self, data: dict[str, Any]) -> list:
        """Entities of the request's inputs (see the module docstring for the body and the response)."""
        examples, is_batch, arguments = parse_request(data, self.limits)
        if not self.reads_images:
            for index, example in enumerate(examples):
                if isinstance(example, dict):
                    field = f"inputs[{index}].image" if is_batch else "inputs.image"
                    raise BadRequestError(f"{field}: this model is text-only (no CLIP image tower); send no image")
        with self._model_lock:
            outputs = self.pipeline(examples, **arguments)
        return outputs if is_batch else outputs[0]


# ----------------------------------------------------------------------------------------------------------------
# A local HTTP server around the handler (trying requests before deploying)
# ----------------------------------------------------------------------------------------------------------------


class HTTPError(Exception):
    """An answer other than 200, with its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_json_body(headers, rfile, max_body_bytes: int) -> Any:
    """The request's JSON body, read with its `Content-Length`; an `HTTPError` says what is wrong with it: 411 for a
    chunked body or none declared, 400 for a length that is not a byte count, 413 past `max_body_bytes`, 408 when
    the client stops sending (the socket's timeout), 400 for a body that ends early, is not JSON or nests too deep."""
    if headers.get("Transfer-Encoding"):
        raise HTTPError(411, "send the body with a Content-Length (Transfer-Encoding is not supported)")
    declared = headers.get_all("Content-Length") or []
    if not declared:
        raise HTTPError(411, "the request has no Content-Length; send the JSON body with its length")
    if len(declared) > 1 or not declared[0].strip().isdigit() or not declared[0].strip().isascii():
        raise HTTPError(400, f"Content-Length {', '.join(declared)!r} is not a byte count")
    length = int(declared[0])
    if length > max_body_bytes:
        raise HTTPError(413, f"the request body has {length} bytes; this server accepts at most {max_body_bytes}")
    try:
        body = rfile.read(length)
    except TimeoutError:
        raise HTTPError(408, f"the client stopped sending before the {length} bytes of its Content-Length") from None
    if len(body) < length:
        raise HTTPError(400, f"the request body ended after {len(body)} of its {length} bytes")
    try:
        return json.loads(body)
    except RecursionError:
        raise HTTPError(400, "the request body is JSON nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPError(400, f"the request body is not JSON ({error})") from None


def request_handler_class(
    endpoint: EndpointHandler, max_body_bytes: int = MAX_BODY_BYTES, read_timeout: float = READ_TIMEOUT_SECONDS
) -> type[BaseHTTPRequestHandler]:
    """An `http.server` request handler that POSTs JSON bodies to `endpoint`, as Inference Endpoints does; each
    connection's reads time out after `read_timeout` seconds."""

    class EndpointRequestHandler(BaseHTTPRequestHandler):
        timeout = read_timeout  # `StreamRequestHandler` sets it on the connection's socket

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            try:
                data = read_json_body(self.headers, self.rfile, max_body_bytes)
            except HTTPError as error:
                self.close_connection = True  # the rest of the body, if any, is not read
                return self.reply(error.status, {"error": str(error)})
            try:
                return self.reply(200, endpoint(data))
            except BadRequestError as error:
                return self.reply(400, {"error": str(error)})
            except Exception as error:  # a bug, not a bad request: logged with its traceback, answered with 500
                logger.exception("the handler failed on a request")
                return self.reply(500, {"error": f"{type(error).__name__}: {error}"})

        def reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    return EndpointRequestHandler


class EndpointServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` serving at most `max_connections` connections at once (more wait in the listen queue),
    each in a daemon thread."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, handler_class, max_connections: int = MAX_CONNECTIONS):
        super().__init__(address, handler_class)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def positive(kind):
    """An argparse type: a positive `kind` (int or float)."""

    def convert(text: str):
        value = kind(text)
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
        return value

    return convert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve this model folder's EndpointHandler over HTTP, locally.")
    parser.add_argument("--model", default="", help="model folder (default: the folder of this file)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--max_body_bytes", type=positive(int), default=MAX_BODY_BYTES,
                        help=f"largest request body (default {MAX_BODY_BYTES}); larger ones get 413")  # fmt: skip
    parser.add_argument("--read_timeout", type=positive(float), default=READ_TIMEOUT_SECONDS,
                        help=f"seconds a client may stall (default {READ_TIMEOUT_SECONDS:g}); then 408")  # fmt: skip
    parser.add_argument("--max_connections", type=positive(int), default=MAX_CONNECTIONS,
                        help=f"connections served at once (default {MAX_CONNECTIONS}); more wait")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    handler_class = request_handler_class(EndpointHandler(args.model), args.max_body_bytes, args.read_timeout)
    server = EndpointServer((args.host, args.port), handler_class, args.max_connections)
    print(f"EndpointHandler serving on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
