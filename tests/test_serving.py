"""Serving a trained model where the Hub's widget cannot: the Inference Endpoint handler and the Gradio Space.

- The handler (`handler.py` in every saved model folder) runs in a fresh process that cannot import this package,
  loaded the way the Inference Endpoints toolkit loads it, on every documented body form; its answers equal the
  pipeline's, and bad requests get errors that name the field.
- The Space folder has the app, the requirements and the front matter; the app runs as a real server (without this
  package) and a headless Chromium types a text, uploads an image and reads the entities and the prompt chart.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import InferenceClient, metadata_load
from packaging.requirements import Requirement
from PIL import Image

import mner_model_card
import mner_serving
import promptmner_space
from conftest import TWEET_SENTENCES
from processes import PROJECT_MODULES, child_env, run_python, start, stop, wait_for_server
from mner_arguments import RunArguments
from mner_backbone import model_from_backbone
from mner_model_card import model_card
from pipeline_promptmner import MultimodalNERPipeline
from tiny_models import tiny_roberta

TEXT = "Kevin Durant arrives in Oklahoma City"
OTHER_TEXT = "Barack Obama meets Angela Merkel in Berlin"
SPACE_ID = "org/promptmner-tiny-space"
MODEL_ID = "org/promptmner-tiny"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A PNG and a JPEG photo-like image (real encoders, real files)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    paths = {"png": folder / "tweet.png", "jpeg": folder / "tweet.jpg"}
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(paths["png"])
    Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)).save(paths["jpeg"], quality=90)
    return paths


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def same_entities(actual, expected, tolerance=1e-5) -> bool:
    """Same spans, labels and words; scores equal up to float rounding."""
    strip = lambda batch: [{k: v for k, v in e.items() if k != "score"} for e in batch]  # noqa: E731
    scores = lambda batch: [e["score"] for e in batch]  # noqa: E731
    return strip(actual) == strip(expected) and np.allclose(scores(actual), scores(expected), atol=tolerance, rtol=0)


# --- servers in subprocesses -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_blocked(folder: Path, script: str, arguments: list[str], log: Path, extras: bool = False) -> subprocess.Popen:
    """`python <script> <arguments>` in `folder`, in a process that cannot import this package (nor, unless
    `extras`, the optional extras), offline."""
    env = child_env(hide_project=True, hide_extras=not extras, HF_MODULES_CACHE=str(log.parent / "modules"))
    return start([sys.executable, script, *arguments], folder, log, env=env)


def start_app(space: Path, model: Path, port: int, log: Path) -> subprocess.Popen:
    """The Space's `python app.py --model <folder>` (gradio is its requirement), bound to 127.0.0.1."""
    arguments = ["--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    return start_blocked(space, "app.py", arguments, log, extras=True)


# --- the endpoint files in every saved model folder ---------------------------------------------------------------


def test_saved_folder_has_the_endpoint_handler_and_its_requirements(saved_folder):
    handler = saved_folder / "handler.py"
    assert handler.read_bytes() == Path(mner_serving.HANDLER_SOURCE).read_bytes()
    tree = ast.parse(handler.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & set(PROJECT_MODULES), "handler.py must not need the promptmner package"
    assert any(isinstance(node, ast.ClassDef) and node.name == "EndpointHandler" for node in tree.body)

    wanted = {name.replace("_", "-").lower() for name in ("open_clip_torch", "transformers", "torch", "pillow")}
    requirements = [Requirement(line) for line in (saved_folder / "requirements.txt").read_text().splitlines()]
    names = {requirement.name.replace("_", "-").lower() for requirement in requirements}
    assert wanted <= names
    from importlib.metadata import version

    for requirement in requirements:  # the ranges contain the versions the tests run with, and are bounded above
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), requirement
        assert any(spec.operator == "<" for spec in requirement.specifier), requirement


# --- the handler, in a fresh process, as the endpoint toolkit loads it --------------------------------------------


def request_bodies(images: dict[str, Path]) -> dict[str, dict]:
    png, jpeg = b64(images["png"]), b64(images["jpeg"])
    wrapped = "\n".join(png[i : i + 76] for i in range(0, len(png), 76))  # as the `base64` command writes it
    return {
        "text": {"inputs": TEXT},
        "text_and_base64_png": {"inputs": {"text": TEXT, "image": wrapped}},
        "text_and_jpeg_data_url": {"inputs": {"text": OTHER_TEXT, "image": "data:image/jpeg;base64," + jpeg}},
        "image_null": {"inputs": {"text": TEXT, "image": None}},
        "token_classification_parameters": {
            "inputs": TEXT, "parameters": {"aggregation_strategy": "simple", "ignore_labels": ["LOC"]},
        },
        "batch_with_parameters": {
            "inputs": [
                TEXT, {"text": OTHER_TEXT, "image": png}, {"text": TEXT, "image": "data:image/png;base64," + png}
            ],
            "parameters": {"threshold": 0.25, "batch_size": 2},
        },
    }


def huge_png() -> str:
    """A 6000x5000 PNG (30 megapixels, a few KB of base64): past the handler's pixel bound."""
    buffer = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def bad_bodies(images: dict[str, Path]) -> dict[str, object]:
    return {
        "no_inputs": {"parameters": {"threshold": 0.5}},
        "not_base64": {"inputs": {"text": TEXT, "image": "this is not base64!"}},
        "not_an_image": {"inputs": {"text": TEXT, "image": base64.b64encode(b"%PDF-1.4 not an image").decode()}},
        "truncated_png": {"inputs": [TEXT, {"text": TEXT, "image": b64(images["png"])[:200]}]},
        "image_wrong_type": {"inputs": {"text": TEXT, "image": [1, 2, 3]}},
        "text_wrong_type": {"inputs": [TEXT, {"text": 42}]},
        "inputs_wrong_type": {"inputs": 3.5},
        "empty_batch": {"inputs": []},
        "bad_threshold": {"inputs": TEXT, "parameters": {"threshold": "high"}},
        "bad_batch_size": {"inputs": TEXT, "parameters": {"batch_size": 0}},
        "unknown_parameter": {"inputs": TEXT, "parameters": {"temperature": 2}},
        "bad_aggregation": {"inputs": TEXT, "parameters": {"aggregation_strategy": "mean"}},
        "body_not_an_object": ["inputs", TEXT],
        # Bounds of what sizes a request's memory or time, each named with its bound.
        "huge_batch_size": {"inputs": TEXT, "parameters": {"batch_size": 10**9}},
        "max_length_1": {"inputs": TEXT, "parameters": {"max_length": 1}},
        "max_length_past_the_window": {"inputs": TEXT, "parameters": {"max_length": 10**6}},
        "huge_stride": {"inputs": TEXT, "parameters": {"stride": 10**6}},
        "too_many_ignore_labels": {"inputs": TEXT, "parameters": {"ignore_labels": ["PER"] * 65}},
        "too_many_inputs": {"inputs": [TEXT] * 33},
        "text_too_long": {"inputs": [TEXT, "word " * 2001]},
        "too_many_pixels": {"inputs": [TEXT, {"text": TEXT, "image": huge_png()}]},
        # Input errors the pipeline would find are found first, naming the field: a 400, never a 500.
        "lone_surrogate_in_a_batch": {"inputs": [TEXT, OTHER_TEXT, "Kevin \ud800 Durant"]},
        "lone_surrogate_in_a_text_field": {"inputs": {"text": "\udc00", "image": None}},
    }


HANDLER_SCRIPT = """
import importlib.util, json, sys
from pathlib import Path

model_dir = sys.argv[1]
# What huggingface-inference-toolkit does with a repository that has a handler.py:
sys.path.insert(0, model_dir)
spec = importlib.util.spec_from_file_location("handler.EndpointHandler", Path(model_dir) / "handler.py")
handler = importlib.util.module_from_spec(spec)
sys.modules["handler.EndpointHandler"] = handler
spec.loader.exec_module(handler)
endpoint = handler.EndpointHandler(model_dir)

good, bad = json.loads(Path("good.json").read_text()), json.loads(Path("bad.json").read_text())
results = {"good": {name: endpoint(body) for name, body in good.items()}, "bad": {}}
for name, body in bad.items():
    try:
        endpoint(body)
        results["bad"][name] = None
    except Exception as error:
        results["bad"][name] = [type(error).__name__, str(error)]
results["project_imported"] = sorted(m for m in sys.modules if m in PROJECT_MODULES)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def endpoint_results(saved_folder, images, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("endpoint")
    (work / "good.json").write_text(json.dumps(request_bodies(images)))
    (work / "bad.json").write_text(json.dumps(bad_bodies(images)))
    code = f"PROJECT_MODULES = {PROJECT_MODULES!r}\n" + HANDLER_SCRIPT.replace("sys.argv[1]", repr(str(saved_folder)))
    output = run_python(code, cwd=work, HF_MODULES_CACHE=str(work / "modules"))
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.slow
def test_handler_answers_every_body_form_like_the_pipeline(endpoint_results, pipe, images):
    png, jpeg = Image.open(images["png"]), Image.open(images["jpeg"])
    expected = {
        "text": pipe(TEXT),
        "text_and_base64_png": pipe({"text": TEXT, "image": png}),
        "text_and_jpeg_data_url": pipe({"text": OTHER_TEXT, "image": jpeg}),
        "image_null": pipe(TEXT),
        "token_classification_parameters": pipe(TEXT, ignore_labels=["LOC"]),
        "batch_with_parameters": pipe(
            [TEXT, {"text": OTHER_TEXT, "image": png}, {"text": TEXT, "image": png}], threshold=0.25, batch_size=2
        ),
    }
    answers = endpoint_results["good"]
    assert endpoint_results["project_imported"] == []
    assert answers["text"] and all(TEXT[e["start"] : e["end"]] == e["word"] for e in answers["text"])
    assert any(e["entity_group"] == "LOC" for e in answers["text"])
    assert not any(e["entity_group"] == "LOC" for e in answers["token_classification_parameters"])
    single = ("text", "text_and_base64_png", "text_and_jpeg_data_url", "image_null", "token_classification_parameters")
    for name in single:
        assert same_entities(answers[name], expected[name]), name
    batch = answers["batch_with_parameters"]
    assert len(batch) == 3 and all(same_entities(a, e) for a, e in zip(batch, expected["batch_with_parameters"]))
    assert all(e["score"] >= 0.25 for example in batch for e in example)
    assert set(answers["text"][0]) == {"entity_group", "score", "word", "start", "end"}
    # The image matters: the same text with and without it gets other scores.
    assert [e["score"] for e in answers["text_and_base64_png"]] != [e["score"] for e in answers["text"]]


@pytest.mark.slow
def test_handler_rejects_bad_requests_naming_the_field(endpoint_results):
    errors = endpoint_results["bad"]
    expected = {
        "no_inputs": r"no 'inputs'",
        "not_base64": r"^inputs\.image is not valid base64",
        "not_an_image": r"^inputs\.image: the \d+ decoded bytes are not an image",
        "truncated_png": r"^inputs\[1\]\.image: the image data is truncated or corrupt",
        "image_wrong_type": r"^inputs\.image must be a base64 string or a data URL, got list",
        "text_wrong_type": r"^inputs\[1\]\.text must be a string, got int",
        "inputs_wrong_type": r"^inputs must be a string or an object",
        "empty_batch": r"^inputs is an empty list",
        "bad_threshold": r"^parameters\.threshold must be a number in \[0, 1\], got 'high'",
        "bad_batch_size": r"^parameters\.batch_size must be an integer in \[1, 32\], got 0",
        "unknown_parameter": r"^unknown parameters \['temperature'\]",
        "bad_aggregation": r"^parameters\.aggregation_strategy must be one of \['none', 'simple'",
        "body_not_an_object": r"^the request body must be a JSON object",
        "huge_batch_size": r"^parameters\.batch_size must be an integer in \[1, 32\], got 1000000000$",
        "max_length_1": r"^parameters\.max_length must be an integer in \[3, \d+\] \(tokens\), got 1$",
        "max_length_past_the_window": r"^parameters\.max_length must be an integer in \[3, \d+\]",
        "huge_stride": r"^parameters\.stride must be an integer in \[0, 256\] \(words\), got 1000000$",
        "too_many_ignore_labels": r"^parameters\.ignore_labels must be a list of at most 64 strings",
        "too_many_inputs": r"^inputs has 33 examples; at most 32 are accepted per request$",
        "text_too_long": r"^inputs\[1\] has 10005 characters; at most 10000 are accepted$",
        "too_many_pixels": r"^inputs\[1\]\.image: the image has 6000x5000 pixels; at most 25000000 are accepted$",
        "lone_surrogate_in_a_batch": r"^inputs\[2\] holds a lone surrogate U\+D800 at character 6, which UTF-8",
        "lone_surrogate_in_a_text_field": r"^inputs\.text holds a lone surrogate U\+DC00 at character 0",
    }
    assert set(errors) == set(expected)
    for name, pattern in expected.items():
        assert errors[name] is not None, f"{name} was accepted"
        kind, message = errors[name]
        assert kind == "BadRequestError" and re.search(pattern, message), (name, message)
        assert "Traceback" not in message and len(message) < 300


def post(port: int, body: bytes, timeout: float = 600) -> tuple[int, object]:
    """POST `body` as JSON to the local endpoint; `(status, decoded JSON answer)`. A hang is a failure, after
    `timeout` seconds."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw_exchange(port: int, data: bytes, timeout: float = 600) -> tuple[int, dict]:
    """Send `data` as is on a new connection; `(status, JSON answer)` of what the server replies before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        return read_reply(connection)


def read_reply(connection: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the HTTP reply on `connection`, read until the server closes it."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture(scope="module")
def served_handler(saved_folder, tmp_path_factory):
    """`python handler.py` of the saved folder on 127.0.0.1 (reads time out after 15 s): `(port, process)`."""
    folder = tmp_path_factory.mktemp("served_handler")
    port, log = free_port(), folder / "handler.log"
    process = start_blocked(saved_folder, "handler.py", ["--port", str(port), "--read_timeout", "15"], log)
    try:
        wait_for_server(process, f"127.0.0.1:{port}", log)
        yield port, process
    finally:
        stop(process)


@pytest.mark.slow
def test_handler_server_answers_everyone_while_a_client_stalls(served_handler, pipe, images):
    """A client declares 1000 bytes and sends 15, then stalls; 50 concurrent well-formed requests are all answered
    meanwhile, each with the pipeline's entities (one server thread per connection, the model calls in turn), and the
    stalled client alone gets a 408 when its read times out."""
    port, process = served_handler
    png = b64(images["png"])
    examples = [
        {"text": f"{TWEET_SENTENCES[i % len(TWEET_SENTENCES)]} {i}", "image": png if i % 5 == 0 else None}
        for i in range(50)
    ]
    stalled = socket.create_connection(("127.0.0.1", port), timeout=600)
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    stalled.sendall(head + b'{"inputs": "Kev')  # 15 of the 1000 bytes
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:  # all 50 connections open at once
        answers = list(pool.map(lambda e: post(port, json.dumps({"inputs": e}).encode(), timeout=300), examples))
    elapsed = time.monotonic() - started
    with stalled:
        stalled_reply = read_reply(stalled)
    assert process.poll() is None
    assert [status for status, _ in answers] == [200] * 50
    image = Image.open(images["png"])
    expected = pipe([{"text": e["text"], "image": image if e["image"] else None} for e in examples])
    assert all(same_entities(answer, entities) for (_, answer), entities in zip(answers, expected))
    assert elapsed < 300, f"50 requests took {elapsed:.0f} s"  # generous: a server that waits on the stall hangs
    assert stalled_reply[0] == 408 and "stopped sending" in stalled_reply[1]["error"]
    print(f"50 concurrent requests answered in {elapsed:.1f} s while a client stalled; the stalled one got 408")


@pytest.mark.slow
def test_handler_server_answers_bad_requests_with_their_status(served_handler, pipe):
    """Each bad request gets an answer naming what is wrong, with its status, never a closed connection or a 500."""
    port, _ = served_handler
    request = lambda headers, body=b"": b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body  # noqa
    deep = b"[" * 100_000 + b"]" * 100_000
    body = lambda data: json.dumps(data).encode()  # noqa: E731
    cases = {
        "Content-Length abc": (request(b"Content-Length: abc\r\n"), 400, "Content-Length 'abc' is not a byte count"),
        "no Content-Length": (request(b""), 411, "no Content-Length"),
        "chunked": (request(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 411,
                    "Transfer-Encoding is not supported"),
        "too large": (request(b"Content-Length: 999999999\r\n"), 413, "at most 16777216"),
        "100k-deep JSON": (request(b"Content-Length: %d\r\n" % len(deep), deep), 400, "nested too deeply"),
    }  # fmt: skip
    for name, (data, status, fragment) in cases.items():
        answer = raw_exchange(port, data)
        assert answer[0] == status and fragment in answer[1]["error"], (name, answer)
    assert post(port, body({"inputs": TEXT, "parameters": {"max_length": 1}})) == (
        400, {"error": f"parameters.max_length must be an integer in [3, {pipe.window(False)}] (tokens), got 1"}
    )  # fmt: skip
    status, answer = post(port, body({"inputs": [TEXT, TEXT, "Kevin \ud800 Durant"]}))
    assert status == 400 and answer["error"].startswith("inputs[2] holds a lone surrogate U+D800 at character 6")
    assert post(port, body({"inputs": TEXT, "parameters": {"batch_size": 10**9}}))[0] == 400


@pytest.mark.slow
def test_handler_script_answers_json_over_http(saved_folder, pipe, images, tmp_path):
    port, log = free_port(), tmp_path / "handler.log"
    process = start_blocked(saved_folder, "handler.py", ["--port", str(port)], log)
    try:
        wait_for_server(process, f"127.0.0.1:{port}", log)
        body = {"inputs": {"text": TEXT, "image": "data:image/png;base64," + b64(images["png"])}}
        status, answer = post(port, json.dumps(body).encode())
        bad_field = post(port, json.dumps({"inputs": {"text": TEXT, "image": "%%%"}}).encode())
        not_json = post(port, b'{"inputs": ')
        client = InferenceClient(model=f"http://127.0.0.1:{port}")  # a token-classification client, as is
        from_client = client.token_classification(TEXT, aggregation_strategy="simple", ignore_labels=["LOC"])
    finally:
        stop(process)
    client_entities = [{key: getattr(e, key) for key in ("entity_group", "score", "word", "start", "end")}
                       for e in from_client]  # fmt: skip
    assert client_entities and same_entities(client_entities, pipe(TEXT, ignore_labels=["LOC"]))
    assert status == 200 and same_entities(answer, pipe({"text": TEXT, "image": Image.open(images["png"])}))
    assert bad_field == (400, {"error": "inputs.image is not valid base64 (Only base64 data is allowed)"})
    assert not_json[0] == 400 and not_json[1]["error"].startswith("the request body is not JSON")


# --- the Space folder ----------------------------------------------------------------------------------------------


def test_space_folder_has_app_requirements_front_matter_and_examples(tmp_path, images):
    examples = [(TEXT, images["png"]), (OTHER_TEXT, Image.open(images["jpeg"])), ("no image here", None)]
    folder = mner_serving.write_space(tmp_path / "space", model_id=MODEL_ID, examples=examples)
    assert (folder / "app.py").read_bytes() == Path(mner_serving.SPACE_APP_SOURCE).read_bytes()
    meta = metadata_load(folder / "README.md")
    assert meta["sdk"] == "gradio" and meta["models"] == [MODEL_ID] and meta["app_file"] == "app.py"
    names = {Requirement(line).name for line in (folder / "requirements.txt").read_text().splitlines()}
    assert {"gradio", "open_clip_torch", "transformers"} <= names
    assert not list(folder.glob("**/*.partial"))

    # The app reads the model id and the examples from the folder it is in.
    assert promptmner_space.resolve_model(None, folder) == MODEL_ID
    assert promptmner_space.resolve_model("other/model", folder) == "other/model"
    loaded = promptmner_space.load_examples(folder)
    assert [text for text, _ in loaded] == [TEXT, OTHER_TEXT, "no image here"]
    assert Path(loaded[0][1]).read_bytes() == images["png"].read_bytes()
    assert np.array_equal(np.asarray(Image.open(loaded[1][1])), np.asarray(Image.open(images["jpeg"])))
    assert loaded[2][1] is None


def test_space_examples_and_app_errors_name_the_problem(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    rows = [
        {"tokens": ["a", "b"], "image_path": None},
        {"tokens": ["missing", "file"], "image_path": str(tmp_path / "gone.jpg")},
        {"tokens": ["Kevin", "Durant"], "image_path": str(tmp_path / "x.jpg")},
        {"tokens": ["Hub", "row"], "image": Image.new("RGB", (4, 4))},
    ]
    examples = mner_serving.space_examples(rows, count=2)
    assert [text for text, _ in examples] == ["Kevin Durant", "Hub row"] and examples[0][1] == str(tmp_path / "x.jpg")
    assert mner_serving.space_examples(rows, count=1, with_images=False) == [("Kevin Durant", None)]
    assert mner_serving.space_examples(rows[:2], count=3) == [("a b", None), ("missing file", None)]
    (tmp_path / "examples.json").write_text(json.dumps([{"text": "t", "image": "missing.png"}]))
    with pytest.raises(ValueError, match=r"examples\.json: entry 0 names the image 'missing\.png'"):
        promptmner_space.load_examples(tmp_path)
    (tmp_path / "examples.json").write_text("[{")
    with pytest.raises(ValueError, match=r"examples\.json: not valid JSON"):
        promptmner_space.load_examples(tmp_path)
    with pytest.raises(SystemExit, match="no model to serve"):
        promptmner_space.resolve_model(None, tmp_path)


def test_app_explains_discrete_prompts_by_their_words(tiny_roberta_processor, images):
    processor = tiny_roberta_processor
    backbone = tiny_roberta(len(processor.tokenizer), processor.tokenizer.pad_token_id, max_positions=64)
    model = model_from_backbone(backbone, processor=processor, prompts="custom").eval()
    ner = MultimodalNERPipeline(model=model, processor=processor, device="cpu")
    explainer = promptmner_space.PromptExplainer(ner, top=3)
    entries = explainer(Image.open(images["png"]))
    clues = model.promptmner.visual_clues
    image_embeds = processor.image_scorer.encode_images([str(images["png"])])
    probabilities = (float(clues.logit_scale) * torch.nn.functional.normalize(image_embeds, dim=-1)
                     @ torch.nn.functional.normalize(clues.prompt_embeds, dim=-1).T).softmax(-1)[0]  # fmt: skip
    top = probabilities.topk(3)
    assert [promptmner_space.prompt_name(e) for e in entries] == [processor.prompt_vocabulary[i] for i in top.indices]
    assert np.allclose([e["probability"] for e in entries], top.values.tolist(), atol=1e-6)
    chart = promptmner_space.prompt_chart(entries)
    assert list(chart.columns) == ["prompt", "probability"] and len(chart) == 3


def test_app_explains_with_the_models_own_clue_options(tiny_roberta_processor, images):
    """With standardised image embeddings and a learned temperature, the chart is the model's own p(P_i|I)."""
    processor = tiny_roberta_processor
    backbone = tiny_roberta(len(processor.tokenizer), processor.tokenizer.pad_token_id, max_positions=64)
    model = model_from_backbone(
        backbone, processor=processor, prompts="continuous", num_prompts=5, standardize_image_embeds=True,
        learnable_logit_scale=True,
    ).eval()  # fmt: skip
    clues = model.promptmner.visual_clues
    rng = np.random.default_rng(0)
    training_images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    clues.set_image_statistics(processor.image_scorer.encode_images(training_images))
    with torch.no_grad():
        clues.prompt_log_logit_scale.fill_(1.5)
    ner = MultimodalNERPipeline(model=model, processor=processor, device="cpu")
    entries = promptmner_space.PromptExplainer(ner, top=5)(Image.open(images["png"]))
    with torch.no_grad():
        expected = clues.prompt_probabilities(processor.image_scorer.encode_images([str(images["png"])]))[0]
    assert [e["index"] for e in entries] == expected.argsort(descending=True).tolist()
    assert np.allclose([e["probability"] for e in entries], expected.sort(descending=True).values, atol=1e-6)


def test_app_names_a_threshold_that_is_not_a_number(pipe):
    """The Space passes the slider's value to the pipeline, which names `threshold` for anything but a number in
    [0, 1] (a cleared field gives None); the page shows that message."""
    gr = pytest.importorskip("gradio", reason="the Space app needs gradio: pip install -e '.[space]'")
    explainer = promptmner_space.PromptExplainer(pipe, top=3)
    for threshold in (None, "high", True, 1.5):
        with pytest.raises(gr.Error, match=r"threshold must be a number in \[0, 1\]"):
            promptmner_space.predict(pipe, explainer, TEXT, None, threshold)
    _, rows, _, note = promptmner_space.predict(pipe, explainer, TEXT, None, 0.25)
    assert rows == promptmner_space.entity_rows(pipe(TEXT, threshold=0.25)) and note.startswith(f"{len(rows)} entities")


def test_model_card_serving_section_says_what_works():
    section = mner_model_card.serving_section(MODEL_ID, SPACE_ID)
    assert "does not run this model" in section and "trust_remote_code" in section
    assert f'pipeline("multimodal-ner", model="{MODEL_ID}", trust_remote_code=True)' in section
    assert f"https://huggingface.co/spaces/{SPACE_ID}" in section
    body = re.search(r"-d '(\{.*\})'", section).group(1)
    assert json.loads(body)["inputs"]["text"] == TEXT  # the curl example's body is valid JSON
    assert "--hub_space_id" in mner_model_card.serving_section(MODEL_ID)


def test_model_card_keeps_its_metadata_and_gains_the_serving_section(tmp_path):
    arguments = RunArguments(
        demo=True, output_dir=str(tmp_path), push_to_hub=True, hub_model_id=MODEL_ID, hub_space_id=SPACE_ID
    )
    scores = {"precision": 0.5, "recall": 0.4, "f1": 0.444, "number": 10}
    summary = {"results": {"test": {**scores, "per_type": {"PER": scores}}}}
    card = model_card(arguments, summary, ["O", "PER"])
    card.save(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    assert meta["pipeline_tag"] == "token-classification" and "promptmner" in meta["tags"]
    widget_texts = [example["text"] for example in mner_model_card.WIDGET_EXAMPLES]
    assert [example["text"] for example in meta["widget"]] == widget_texts
    assert meta["model-index"][0]["results"]
    text = (tmp_path / "README.md").read_text()
    assert mner_model_card.serving_section(MODEL_ID, SPACE_ID).strip() in text
    with pytest.raises(ValueError, match="--hub_space_id needs --push_to_hub"):
        RunArguments(demo=True, output_dir=str(tmp_path), hub_space_id=SPACE_ID)


# --- the Space app in a real browser -------------------------------------------------------------------------------


def chromium(tmp_path: Path):
    """Headless Debian Chromium through its chromedriver, with nothing that reaches the network on its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1300",
    ):  # fmt: skip
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def expected_chart(model, processor, image: Path, model_folder: Path) -> list[tuple[str, float]]:
    """The prompts the page must chart, computed in this process with `prompt_vocabularies.explain`."""
    from prompt_vocabularies import explain, load_vocabulary_embeds

    vocab_embeds, _ = load_vocabulary_embeds(model_folder, processor.prompt_vocabulary, processor.prompt_template)
    clues = model.promptmner.visual_clues
    entries = explain(
        processor.image_scorer.encode_images([str(image)]), clues.prompt_embeds, float(clues.logit_scale),
        processor.prompt_vocabulary, continuous=True, vocab_embeds=vocab_embeds, k=10,
    )[0]  # fmt: skip
    return [(promptmner_space.prompt_name(entry), entry["probability"]) for entry in entries]


def read_page(driver) -> dict:
    """What the page shows: highlighted entities, the table, the chart's bars (Vega's SVG labels) and the note."""
    from selenium.webdriver.common.by import By

    marks = driver.find_elements(By.CSS_SELECTOR, "#entities .token.highlighted")
    bars = [
        element.get_attribute("aria-label")
        for element in driver.find_elements(By.CSS_SELECTOR, "#prompts svg [aria-roledescription='bar']")
    ]
    rows = driver.find_elements(By.CSS_SELECTOR, "#entity-table [role='row'].virtual-row")

    def text_of(element, selector: str) -> list[str]:
        return [e.get_attribute("innerText").strip() for e in element.find_elements(By.CSS_SELECTOR, selector)]

    return {
        "marks": [text_of(mark, ".text") + text_of(mark, ".label") for mark in marks],
        "rows": [text_of(row, "[role='gridcell']") for row in rows],
        "bars": bars,
        "note": driver.find_element(By.CSS_SELECTOR, "#note").get_attribute("innerText"),
        "page_text": driver.find_element(By.TAG_NAME, "body").get_attribute("innerText"),
    }


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
)
@pytest.mark.slow
def test_space_app_in_headless_chromium(saved_folder, model, tiny_roberta_processor, pipe, images, tmp_path):
    pytest.importorskip("gradio", reason="the Space app needs gradio: pip install -e '.[space]'")
    pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium: pip install -e '.[tests]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    space = mner_serving.write_space(tmp_path / "space", examples=[(TEXT, images["png"]), (OTHER_TEXT, None)])
    port, log = free_port(), tmp_path / "app.log"
    process = start_app(space, saved_folder, port, log)
    driver = None
    try:
        wait_for_server(process, f"127.0.0.1:{port}", log)
        driver = chromium(tmp_path)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        textbox = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, "#text textarea")))
        textbox.send_keys(TEXT)
        driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(images["png"]))
        wait.until(until.presence_of_element_located((By.CSS_SELECTOR, "#image img")))
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompts svg [aria-roledescription='bar']"))
        wait.until(lambda d: "entities" in d.find_element(By.CSS_SELECTOR, "#note").get_attribute("innerText"))
        page = read_page(driver)
        driver.save_screenshot(str(tmp_path / "space_app.png"))
    finally:
        if driver is not None:
            driver.quit()
        stop(process)
    duration = time.monotonic() - started

    entities = pipe({"text": TEXT, "image": Image.open(images["png"])})
    assert entities
    # What the page shows, against the pipeline in this process (scores as rounded on the page).
    marks = [(word, mark.split()[0]) for word, mark in page["marks"]]
    assert marks == [(e["word"], e["entity_group"]) for e in entities]
    assert np.allclose([float(mark.split()[1]) for _, mark in page["marks"]], [e["score"] for e in entities], atol=6e-3)
    assert [row[:2] + row[3:] for row in page["rows"]] == [
        [e["word"], e["entity_group"], str(e["start"]), str(e["end"])] for e in entities
    ]
    assert np.allclose([float(row[2]) for row in page["rows"]], [e["score"] for e in entities], atol=6e-5)
    chart = expected_chart(model, tiny_roberta_processor, images["png"], saved_folder)
    bars = [re.fullmatch(r"prompt: (.*); probability: ([0-9.e-]+)", label).groups() for label in page["bars"]]
    assert [name for name, _ in bars] == [name for name, _ in chart]  # most probable first, with nearest words
    assert np.allclose([float(p) for _, p in bars], [p for _, p in chart], atol=1e-6)
    assert all(" ~ " in name for name, _ in bars)  # continuous prompts are named by their nearest words
    assert page["note"].startswith(f"{len(entities)} entities")
    assert OTHER_TEXT in page["page_text"]  # the examples of examples.json are on the page
    assert (tmp_path / "space_app.png").stat().st_size > 10_000
    print(f"browser test: {duration:.1f} s, screenshot {tmp_path / 'space_app.png'}")
