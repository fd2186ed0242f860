"""`charrnn serve`: one loaded model over HTTP, on Starlette and uvicorn (the `serve` extra).

    POST /v1/sample  {"prime": "def ", "length": 200, "temperature": 0.8, "seed": 1, ...}
                     -> {"text", "samples", "chars", "seconds"}; with "stream": true, server-sent
                     events `data: {"text": piece}` and a last `data: {"done": true, ...}`
    POST /v1/score   {"text": ..., "per_line": false, "surprisal": false, "exact": false,
                     "unknown": "error"} -> `score --json`'s figures (per line: {"lines": [...]})
    GET  /v1/model   `charrnn info --json`, the checkpoint's path and the server's limits
    GET  /health     {"status": "ok", "running": ..., "served": ..., "disconnected": ...}
    GET  /           page.html: a prime that streams its continuation, a text coloured by surprisal

Requests share only the read-only api.Model: each builds its own SampleOptions and so its own
hidden state and random generator. The NumPy work runs in a pool of `threads` threads, CHUNK
steps per hop, so the event loop stays free to read other requests, to send a stream's text as
it is made and to notice a client that has left (its generation ends at the next hop). A
semaphore caps the computations in flight at limits.max_concurrent; one more gets 503 at once,
not a place in a queue without bound. Every refusal is a JSON {"error": ...} that says why.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from itertools import islice

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .api import Model
from .config import SampleOptions, ServeLimits, json_kind
from .errors import CharRNNError
from .scoring import SURPRISAL_COLOURS
from .surprisal_html import level_css

# sampling steps per hop to the thread pool: a few milliseconds of a 2x256 GRU, short enough that
# a stream looks live and a client that left stops its work at once, long enough that the hops
# cost little
CHUNK = 16
SAMPLE_FIELDS = tuple(SampleOptions.__dataclass_fields__) + ("stream",)
SCORE_FIELDS = ("text", "per_line", "surprisal", "exact", "unknown")
# in-flight requests get this long to finish once Ctrl-C or SIGTERM asks the server to stop
SHUTDOWN_SECONDS = 5
SSE, NO_CACHE = "text/event-stream", {"Cache-Control": "no-cache"}


class RequestError(Exception):
    """A request the server refuses: the status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Counters:
    running: int = 0  # generations and scores in flight
    served: int = 0
    disconnected: int = 0  # generations stopped because their client left


def _advance(pieces: Iterator[list[str]], steps: int) -> tuple[list[str], bool]:
    """Up to `steps` steps of a generation, joined per sample, and whether it has ended."""
    taken = list(islice(pieces, steps))
    return ["".join(p) for p in zip(*taken)], len(taken) < steps


class Server:
    """The endpoints over one model, its limits, thread pool, semaphore and counters."""

    def __init__(self, model: Model, limits: ServeLimits, threads: int):
        self.model, self.limits = model, limits
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="charrnn")
        self.slots = asyncio.Semaphore(limits.max_concurrent)
        self.counters = Counters()
        page = resources.files("charrnn").joinpath("page.html").read_text(encoding="utf-8")
        page = page.replace("/* LEVELS */", level_css())
        self.page = page.replace("LEVEL_COUNT", str(len(SURPRISAL_COLOURS)))

    # ------------------------------------------------------------------ plumbing

    async def body(self, request: Request, fields: tuple[str, ...]) -> dict:
        """The request's JSON object, refused when too large, malformed or with unknown fields."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the body has {declared} bytes; this server accepts at most {limit}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise RequestError(413, f"the body is over this server's limit of {limit} bytes")
        if not raw.strip():
            raise RequestError(400, "empty body: send a JSON object")
        try:
            data = json.loads(raw)
        except ValueError as e:  # UnicodeDecodeError included
            raise RequestError(400, f"malformed JSON: {e}") from None
        if not isinstance(data, dict):
            raise RequestError(400, f"the body must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        return data

    async def slot(self) -> None:
        if self.slots.locked():
            raise RequestError(
                503, f"busy: {self.limits.max_concurrent} generations are running; try again shortly"
            )
        await self.slots.acquire()
        self.counters.running += 1

    def release(self) -> None:
        self.counters.running -= 1
        self.counters.served += 1
        self.slots.release()

    async def steps(self, pieces: Iterator[list[str]]) -> AsyncIterator[list[str]]:
        loop = asyncio.get_running_loop()
        ended = False
        while not ended:
            texts, ended = await loop.run_in_executor(self.pool, _advance, pieces, CHUNK)
            if texts:
                yield texts

    # ------------------------------------------------------------------ endpoints

    async def sample(self, request: Request) -> Response:
        data = await self.body(request, SAMPLE_FIELDS)
        stream = _flag(data, "stream")
        data.pop("stream", None)
        data.setdefault("length", min(SampleOptions.length, self.limits.max_length))
        opts = SampleOptions(**data)
        _within("length", opts.length, self.limits.max_length)
        _within("num_samples", opts.num_samples, self.limits.max_samples)
        if stream and opts.num_samples != 1:
            raise RequestError(400, "stream sends one sample: num_samples must be 1")
        self.model.vocab.encode(opts.prime, opts.unknown)  # unknown characters: refused before any work
        await self.slot()
        if stream:
            events = StreamingResponse(self.events(request, opts), media_type=SSE, headers=NO_CACHE)
            return _Holding(events, self.release)
        try:
            return await self.whole(request, opts)
        finally:
            self.release()

    async def whole(self, request: Request, opts: SampleOptions) -> Response:
        started = time.perf_counter()
        texts = [""] * opts.num_samples
        async for pieces in self.steps(self.model.samples(opts)):
            texts = [t + p for t, p in zip(texts, pieces)]
            if await request.is_disconnected():
                self.counters.disconnected += 1
                return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
        return JSONResponse(
            {
                "text": texts[0],
                "samples": texts,
                "chars": sum(map(len, texts)),
                "seconds": round(time.perf_counter() - started, 4),
            }
        )

    async def events(self, request: Request, opts: SampleOptions) -> AsyncIterator[str]:
        started, chars, finished = time.perf_counter(), 0, False
        try:
            async for pieces in self.steps(self.model.samples(opts)):
                chars += len(pieces[0])
                yield f"data: {json.dumps({'text': pieces[0]})}\n\n"
            finished = True
            seconds = round(time.perf_counter() - started, 4)
            yield f"data: {json.dumps({'done': True, 'chars': chars, 'seconds': seconds})}\n\n"
        finally:
            if not finished:  # the client left: Starlette stopped reading this generator
                self.counters.disconnected += 1

    async def score(self, request: Request) -> Response:
        data = await self.body(request, SCORE_FIELDS)
        text = data.get("text")
        if not isinstance(text, str):
            raise RequestError(400, f"text must be a string, not {json_kind(text)}")
        _within("the length of text", len(text), self.limits.max_score_chars)
        per_line, surprisal, exact = (_flag(data, name) for name in ("per_line", "surprisal", "exact"))
        unknown = data.get("unknown", "error")
        if unknown not in ("error", "skip"):
            raise RequestError(400, f"unknown must be error or skip, not {unknown!r}")
        await self.slot()
        try:
            return JSONResponse(
                await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.figures, text, per_line, surprisal, exact, unknown
                )
            )
        finally:
            self.release()

    def figures(self, text: str, per_line: bool, surprisal: bool, exact: bool, unknown: str) -> dict:
        if per_line:
            result = {"lines": [s.to_dict() for s in self.model.score_lines(text, unknown)]}
        else:
            result = self.model.score(text, exact=exact, unknown=unknown).to_dict()
        if surprisal:  # JSON has no NaN: a character nothing predicted is null
            nats = self.model.surprisal(text, unknown)
            result["surprisal"] = [None if n != n else round(n, 4) for n in nats.tolist()]
        return result

    async def info(self, request: Request) -> Response:
        limits = asdict(self.limits)
        return JSONResponse({**self.model.info(), "checkpoint": str(self.model.path), "limits": limits})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", **asdict(self.counters)})

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)


class _Holding:
    """A response that holds a generation's slot until it has been sent or its client has left,
    however the sending ends (a stream may end before it starts, when the client is gone)."""

    def __init__(self, response: Response, release):
        self.response, self.release = response, release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.release()


def _within(name: str, value: int, limit: int) -> None:
    if value > limit:
        raise RequestError(400, f"{name} {value:,} is over this server's limit of {limit:,}")


def _flag(data: dict, name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(400, f"{name} must be true or false, not {json_kind(value)}")
    return value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(model: Model, limits: ServeLimits | None = None, threads: int = 1) -> Starlette:
    """The ASGI application serving `model` (see the module's docstring); limits None: the defaults."""
    server = Server(model, limits or ServeLimits(), threads)

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.pool.shutdown(wait=False, cancel_futures=True)

    async def refused(request, e: RequestError):
        return _error(e.status, str(e))

    async def bad_data(request, e: CharRNNError):
        return _error(400, str(e))

    async def http_error(request, e: HTTPException):
        return _error(e.status_code, f"{e.detail}: {request.method} {request.url.path}")

    app = Starlette(
        routes=[
            Route("/", server.index),
            Route("/health", server.health),
            Route("/v1/model", server.info),
            Route("/v1/sample", server.sample, methods=["POST"]),
            Route("/v1/score", server.score, methods=["POST"]),
        ],
        exception_handlers={RequestError: refused, CharRNNError: bad_data, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def run(model: Model, host: str, port: int, limits: ServeLimits, threads: int) -> None:
    """Serve until Ctrl-C or SIGTERM, then let requests in flight finish (SHUTDOWN_SECONDS)."""
    config = uvicorn.Config(
        create_app(model, limits, threads),
        host=host,
        port=port,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        log_level="info",
    )
    uvicorn.Server(config).run()
