"""charrnn serve: the endpoints against the Python API they wrap, every refusal as a JSON 4xx,
server-sent events, and, on a real uvicorn server, concurrent clients, the concurrency cap, a
client that leaves, and shutdown on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="charrnn serve needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx: pip install -e '.[serve]'")
uvicorn = pytest.importorskip(
    "uvicorn", reason="charrnn serve needs the serve extra: pip install -e '.[serve]'"
)

from starlette.testclient import TestClient  # noqa: E402

import charrnn  # noqa: E402
from charrnn.config import ServeLimits  # noqa: E402
from charrnn.scoring import SURPRISAL_COLOURS, xterm_rgb  # noqa: E402
from charrnn.serve import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIMITS = ServeLimits(
    max_length=500, max_samples=4, max_body_bytes=4000, max_score_chars=1000, max_concurrent=2
)
SCORE_KEYS = {
    "name",
    "chars",
    "nats",
    "skipped",
    "streams",
    "nats_per_char",
    "bits_per_char",
    "perplexity",
    "exact",
}


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "serve"
    options = dict(hidden_size=16, num_layers=1, seq_len=16, batch_size=4, max_steps=30, eval_every=10)
    charrnn.train(corpus, out, verbose=False, show_progress=False, **options)
    return out


@pytest.fixture(scope="module")
def model(run_dir) -> charrnn.Model:
    return charrnn.load(run_dir)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, LIMITS)) as c:
        yield c


@contextlib.contextmanager
def live(model, limits=LIMITS, threads=2):
    """A real uvicorn server on a free loopback port, in a thread: its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(model, limits, threads), port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def events(lines) -> list[dict]:
    return [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]


def test_health_model_and_page(client, model):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info == {**model.info(), "checkpoint": str(model.path), "limits": LIMITS.__dict__}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f".s0 {{ background: {xterm_rgb(SURPRISAL_COLOURS[0])}; }}" in page.text
    assert f"const LEVELS = {len(SURPRISAL_COLOURS)};" in page.text
    assert not re.search(r"(src|href)=\"?https?:", page.text)  # self-contained: nothing fetched elsewhere


def test_sample_is_the_api_generate(client, model):
    reply = client.post("/v1/sample", json={"prime": "one ", "length": 80, "seed": 3, "temperature": 0.5})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["text"] == model.generate("one ", length=80, seed=3, temperature=0.5)
    assert body["samples"] == [body["text"]] and body["chars"] == len(body["text"])
    many = client.post("/v1/sample", json={"prime": "two", "length": 40, "seed": 1, "num_samples": 3}).json()
    assert many["samples"] == model.generate_many(3, "two", length=40, seed=1)
    penalised = {"length": 60, "seed": 2, "repeat_penalty": 1.5, "repeat_window": 8, "stop": "\n"}
    penalised |= {"dry_multiplier": 1.0, "dry_allowed_length": 2, "dry_window": 16}
    assert client.post("/v1/sample", json=penalised).json()["text"] == model.generate(**penalised)


def test_sample_streams_server_sent_events(client, model):
    request = {"prime": "six", "length": 100, "seed": 7, "stream": True}
    with client.stream("POST", "/v1/sample", json=request) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        received = events(reply.iter_lines())
    *pieces, last = received
    assert len(pieces) > 1  # sent as it was made, not as one block
    assert "".join(p["text"] for p in pieces) == model.generate("six", length=100, seed=7)
    assert last["done"] is True and last["chars"] == len("six") + 100


def test_score_uses_score_json_names(client, model):
    text = "one two three\nfour five\n"
    reply = client.post("/v1/score", json={"text": text})
    assert reply.status_code == 200, reply.text
    assert reply.json() == model.score(text).to_dict() and set(reply.json()) == SCORE_KEYS
    lines = client.post("/v1/score", json={"text": text, "per_line": True}).json()["lines"]
    assert lines == [s.to_dict() for s in model.score_lines(text)]
    nats = client.post("/v1/score", json={"text": text, "surprisal": True}).json()["surprisal"]
    assert len(nats) == len(text) and nats[0] is None and all(isinstance(n, float) for n in nats[1:])
    assert sum(nats[1:]) == pytest.approx(model.score(text, exact=True).nats, abs=1e-3)
    skipped = client.post("/v1/score", json={"text": "one \u732b two", "unknown": "skip"}).json()
    assert skipped["skipped"] == 1


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/sample", b'{"prime": "one"', 400, "malformed JSON"),
        ("/v1/sample", b"", 400, "empty body"),
        ("/v1/sample", b"[1, 2]", 400, "must be a JSON object, not list"),
        ("/v1/sample", b"\xff\xfe{}", 400, "malformed JSON"),
        ("/v1/sample", {"lenght": 10}, 400, "unknown field(s) lenght"),
        ("/v1/sample", {"length": "ten"}, 400, "length must be an integer, not str"),
        ("/v1/sample", {"temperature": None}, 400, "temperature must be a number, not null"),
        ("/v1/sample", {"top_p": 2}, 400, "top_p must be a finite number in (0, 1]"),
        ("/v1/sample", {"stream": "yes"}, 400, "stream must be true or false"),
        ("/v1/sample", {"prime": "one \u732b"}, 400, "U+732B"),
        ("/v1/sample", {"length": 501}, 400, "length 501 is over this server's limit of 500"),
        ("/v1/sample", {"num_samples": 5}, 400, "num_samples 5 is over this server's limit of 4"),
        ("/v1/sample", {"num_samples": 2, "stream": True}, 400, "num_samples must be 1"),
        ("/v1/sample", {"prime": "x" * 5000}, 413, "at most 4000"),
        ("/v1/score", {"text": ""}, 400, "nothing to score"),
        ("/v1/score", {"text": 12}, 400, "text must be a string, not int"),
        ("/v1/score", {}, 400, "text must be a string, not null"),
        ("/v1/score", {"text": "one " * 300}, 400, "the length of text 1,200 is over this server's limit"),
        ("/v1/score", {"text": "one \u732b"}, 400, "U+732B"),
        ("/v1/score", {"text": "one", "unknown": "drop"}, 400, "unknown must be error or skip"),
    ],
)
def test_refusals_are_json_that_says_why(client, path, body, status, message):
    if isinstance(body, bytes):
        reply = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        reply = client.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


def test_unknown_paths_and_methods_are_json(client):
    missing, wrong = client.get("/v1/nothing"), client.get("/v1/sample")
    assert (missing.status_code, wrong.status_code) == (404, 405)
    assert missing.json()["error"] == "Not Found: GET /v1/nothing"
    assert wrong.json()["error"] == "Method Not Allowed: GET /v1/sample"


def test_concurrent_clients_get_their_own_state(model):
    seeds = range(12)
    wanted = [model.generate("one", length=150, seed=s, temperature=1.0) for s in seeds]
    limits = ServeLimits(max_concurrent=16)
    with live(model, limits, threads=4) as url, httpx.Client(base_url=url, timeout=30) as http:

        def ask(seed):
            reply = http.post(
                "/v1/sample", json={"prime": "one", "length": 150, "seed": seed, "temperature": 1.0}
            )
            return reply.json()["text"]

        with ThreadPoolExecutor(len(seeds)) as pool:
            got = list(pool.map(ask, seeds))
    assert got == wanted


def test_a_full_server_says_busy_and_a_client_that_leaves_stops_its_work(model):
    limits = ServeLimits(max_length=10_000_000, max_concurrent=1)
    with live(model, limits) as url, httpx.Client(base_url=url, timeout=30) as http:
        long = {"length": 10_000_000, "stream": True, "seed": 1}
        with http.stream("POST", "/v1/sample", json=long) as reply:
            lines = reply.iter_lines()  # kept: dropping it would close the connection
            assert next(lines).startswith("data: ")
            busy = http.post("/v1/sample", json={"length": 5})
            assert busy.status_code == 503 and "busy: 1 generations are running" in busy.json()["error"]
            assert http.get("/health").json()["running"] == 1
        # the client has gone: its generation (minutes of work at full length) must stop now
        deadline = time.monotonic() + 5
        while (health := http.get("/health").json())["running"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["disconnected"] == 1
        assert http.post("/v1/sample", json={"length": 5}).status_code == 200  # the slot is free again


def test_a_non_streaming_client_that_leaves_stops_its_work(model):
    limits = ServeLimits(max_length=10_000_000)
    with live(model, limits) as url, httpx.Client(base_url=url, timeout=30) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/sample", json={"length": 10_000_000}, timeout=0.5)
        deadline = time.monotonic() + 5
        while (health := http.get("/health").json())["running"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["disconnected"] == 1


def test_serve_command_binds_loopback_and_stops_on_sigterm(run_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "serve",
            "-c",
            str(run_dir),
            "--port",
            "0",
            "--max-length",
            "100000",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = None
        for line in proc.stderr:
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
                break
        assert url, "no 'running on' line"
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/health").json()["status"] == "ok"
            with http.stream("POST", "/v1/sample", json={"length": 99_999, "stream": True}) as reply:
                lines = reply.iter_lines()  # kept: dropping it would close the connection
                next(lines)
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(httpx.HTTPError):
                    for _ in lines:
                        pass
        proc.wait(timeout=15)
        assert time.monotonic() - started < 10
        assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutting down
        assert "Finished server process" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_extra_is_one_error_line(run_dir):
    # a fresh process: here starlette's modules are loaded already, and would be found
    blocked = "import sys; sys.modules['starlette'] = None; from charrnn.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", blocked, "serve", "-c", str(run_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == "Error: charrnn serve needs starlette: pip install -e '.[serve]'\n"
