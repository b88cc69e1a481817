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

The response has the format of transformers' aggregated `token-classification` output: for one input, a list of
`{"entity_group", "score", "word", "start", "end"}` (character offsets into the text); for a list of inputs, one
such list per input. A bad request raises [`BadRequestError`] whose message names the offending field (the toolkit
returns it with status 400).

This file imports no `promptmner` module: it loads the model, the processor and the pipeline from the folder with
`trust_remote_code=True`, exactly as a Hub user would. Run as a script, it serves the folder it is in over HTTP on
127.0.0.1, as an endpoint answers (JSON in, JSON out, 400 with `{"error": ...}` for a bad request), to try requests
before deploying:

    python handler.py --port 8080
    curl -s localhost:8080 -H "Content-Type: application/json" -d '{"inputs": "Kevin Durant arrives in Oklahoma City"}'
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import os
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import pipeline

logger = logging.getLogger(__name__)
TASK = "multimodal-ner"
INPUT_KEYS = ("text", "image")
AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")


class BadRequestError(ValueError):
    """A request body that does not have the documented form; the message names the field."""


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
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequestError(f"{field} is not valid base64 ({error})") from None
    if not data:
        raise BadRequestError(f"{field} is empty")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as error:
        raise BadRequestError(f"{field}: the image is too large ({error})") from None
    except UnidentifiedImageError:
        raise BadRequestError(f"{field}: the {len(data)} decoded bytes are not an image; send a JPEG or PNG") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadRequestError(f"{field}: the image data is truncated or corrupt ({error})") from None
    return image


def parse_example(value: Any, field: str) -> str | dict[str, Any]:
    """One input: a string, or `{"text": str, "image": base64 str | null}` with the image decoded."""
    if isinstance(value, str):
        return value
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
    image = value.get("image")
    if image is None:
        return value["text"]
    return {"text": value["text"], "image": decode_image(image, f"{field}.image")}


def parse_inputs(inputs: Any) -> tuple[list[str | dict[str, Any]], bool]:
    """`(examples, is_batch)` from the request's `inputs`: one input or a non-empty list of them."""
    if isinstance(inputs, list):
        if not inputs:
            raise BadRequestError("inputs is an empty list; give at least one text")
        return [parse_example(value, f"inputs[{index}]") for index, value in enumerate(inputs)], True
    return [parse_example(inputs, "inputs")], False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_parameters(parameters: Any) -> dict[str, Any]:
    """Check `parameters` and return them as pipeline call arguments."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BadRequestError(f"parameters must be an object, got {type(parameters).__name__}")
    checks = {
        "threshold": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                      "a number in [0, 1]"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "stride": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (words)"),
        "max_length": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (tokens)"),
        "ignore_labels": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
        # Sent by token-classification clients (e.g. InferenceClient.token_classification); entities are whole spans.
        "aggregation_strategy": (lambda v: v in AGGREGATION_STRATEGIES, f"one of {list(AGGREGATION_STRATEGIES)}"),
    }  # fmt: skip
    unknown = sorted(set(parameters) - set(checks))
    if unknown:
        raise BadRequestError(f"unknown parameters {unknown}; known: {sorted(checks)}")
    for name, value in parameters.items():
        valid, expected = checks[name]
        if not valid(value):
            raise BadRequestError(f"parameters.{name} must be {expected}, got {value!r}")
    return dict(parameters)


def parse_request(data: Any) -> tuple[list[str | dict[str, Any]], bool, dict[str, Any]]:
    """`(examples, is_batch, pipeline arguments)` from a request body as the endpoint toolkit delivers it."""
    if not isinstance(data, Mapping):
        raise BadRequestError(f"the request body must be a JSON object with 'inputs', got {type(data).__name__}")
    unknown = sorted(set(data) - {"inputs", "parameters"})
    if unknown:
        raise BadRequestError(f"the request body has unknown keys {unknown}; it has 'inputs' and 'parameters'")
    if "inputs" not in data:
        raise BadRequestError("the request body has no 'inputs' (a text, an object with 'text' and 'image', or a list)")
    examples, is_batch = parse_inputs(data["inputs"])
    return examples, is_batch, parse_parameters(data.get("parameters"))


# ----------------------------------------------------------------------------------------------------------------
# The handler
# ----------------------------------------------------------------------------------------------------------------


class EndpointHandler:
    """The Inference Endpoints entry point: the `multimodal-ner` pipeline of the model folder behind a JSON API.

    Args:
        path (`str`, *optional*): the model folder (the endpoint passes its repository copy); defaults to the folder
            of this file.
    """

    def __init__(self, path: str | os.PathLike = ""):
        folder = os.fspath(path) or os.path.dirname(os.path.abspath(__file__))
        device = 0 if torch.cuda.is_available() else -1
        self.pipeline = pipeline(TASK, model=folder, trust_remote_code=True, device=device)

    def __call__(self, data: dict[str, Any]) -> list:
        """Entities of the request's inputs (see the module docstring for the body and the response)."""
        examples, is_batch, arguments = parse_request(data)
        outputs = self.pipeline(examples, **arguments)
        return outputs if is_batch else outputs[0]


# ----------------------------------------------------------------------------------------------------------------
# A local HTTP server around the handler (trying requests before deploying)
# ----------------------------------------------------------------------------------------------------------------


def request_handler_class(endpoint: EndpointHandler) -> type[BaseHTTPRequestHandler]:
    """An `http.server` request handler that POSTs JSON bodies to `endpoint`, as Inference Endpoints does."""

    class EndpointRequestHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                return self.reply(400, {"error": f"the request body is not JSON ({error})"})
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
            self.end_headers()
            self.wfile.write(data)

    return EndpointRequestHandler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve this model folder's EndpointHandler over HTTP, locally.")
    parser.add_argument("--model", default="", help="model folder (default: the folder of this file)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = HTTPServer((args.host, args.port), request_handler_class(EndpointHandler(args.model)))
    print(f"EndpointHandler serving on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
