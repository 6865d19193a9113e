"""FastAPI on offloop: native work awaited, the event loop never blocked.

Endpoints
---------
GET  /calc/{n}              2 * n, by native_ext.double (a C function)
POST /process-numbers       {"numbers": [...], "rounds": 1000}, native_ext
GET  /sum-squares?a=&b=     a*a + b*b, native_ext.sum_squares
POST /similarity            {"a": [...], "b": [...]}, offloop.cosine_similarity
POST /normalize             {"vectors": [[...], ...]}, offloop.batch_normalize
POST /search                {"query": [384 floats], "k": 10}, or {"like": i}
                            for row i as the query: offloop.top_k over an
                            in-memory matrix of seeded random unit vectors
                            (100,000 x 384), built at startup
GET  /health                {"status": "ok"}
GET  /stats                 offloop.stats()

Input rules; a 500 is a bug:

- A request body over ``MAX_BODY`` bytes (1 MiB; ``--max-body``) gets
  413: a larger Content-Length is refused before the body is read, and a
  chunked body is counted as it arrives.  JSON is parsed and validated on
  the event loop, so this bounds how long one request can hold it.
- Numbers must be finite: 1e309 (which parses to inf), NaN and Infinity
  get 422.  Each vector is divided by its largest magnitude before the
  float32 kernels (cosine, normalization and top-k by cosine ignore a
  vector's scale), so every finite input has a finite, correct answer:
  no float32 overflow (1e20 squared) or underflow (1e-20 squared).
- Bad input gives 422 with, for each error (the first 20), its location
  and pydantic's message, never the input itself; or the native
  function's own message (wrong length, int64 overflow...).  A full
  queue gives 503.
- A client that disconnects while its /search, /normalize or
  /process-numbers job is queued or running has that job cancelled
  (uvicorn does not cancel the endpoint's task itself).

native_ext is the C extension in examples/native_ext, built against
offloop.h: ``pip install --no-build-isolation ./examples/native_ext``.

Run it (uvicorn on 127.0.0.1:8000; prints curl lines to try)::

    python examples/fastapi_app.py [--port 8000] [--rows 100000]
                                   [--max-body 1048576]
"""

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, Self, TypeVar

import numpy
import numpy.typing as npt
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, FiniteFloat, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import offloop

try:
    import native_ext
except ImportError:  # the seed endpoints answer 503 until it is built
    HAVE_NATIVE_EXT = False
else:
    HAVE_NATIVE_EXT = True

T = TypeVar("T")
Floats32 = npt.NDArray[numpy.float32]

#: Rows and dimension of the search matrix (OFFLOOP_DEMO_ROWS overrides
#: the rows, e.g. for tests).
ROWS = 100_000
DIM = 384
SEED = 0
MAX_ITEMS = 1_000_000  # numbers or floats per request
MAX_BODY = 1 << 20  # bytes of a request body; over it, 413
MAX_ERRORS = 20  # validation errors listed in a 422


class NativeError(Exception):
    """A native call refused its input, or offloop could not take it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---- the request body: bounded, and never echoed back -----------------


class BodyTooLarge(HTTPException):
    """413.  An HTTPException, because FastAPI turns any other exception
    raised while it reads the body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over this app's limit "
                              f"of {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``.

    A Content-Length over the limit is answered at once, before anything
    is read.  A body without one (chunked) is counted as it streams in:
    the receive() that passes the limit raises :class:`BodyTooLarge`, so
    no more than ``max_bytes`` is ever buffered or parsed.  Either way
    uvicorn reads and discards whatever the client still sends.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive,
                       send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        declared = content_length(scope)
        if declared is not None and declared > limit:
            exc = BodyTooLarge(limit)
            response = JSONResponse({"detail": exc.detail}, exc.status_code)
            return await response(scope, receive, send)
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as exc:  # not answered by the app's handler
            if started:
                raise
            response = JSONResponse({"detail": exc.detail}, exc.status_code)
            await response(scope, receive, send)


def content_length(scope: Scope) -> int | None:
    """The request's Content-Length header as an int, or None."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses such a request itself
    return None


async def validation_error(request: Request,
                           exc: RequestValidationError) -> JSONResponse:
    """422 with each error's location, message and type: never the input
    (pydantic's default puts it in every error, a 50 MB body included),
    and at most MAX_ERRORS of them."""
    errors = exc.errors()
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
              for e in errors[:MAX_ERRORS]]
    return JSONResponse({"detail": detail, "errors": len(errors)}, 422)


# ---- native calls ------------------------------------------------------


async def native(call: Callable[[], asyncio.Future[T]],
                 request: Request | None = None) -> T:
    """Await ``call()``, a native call such as
    ``lambda: offloop.top_k(q, m, k=k)``; map its errors to HTTP statuses.

    Bad input (TypeError, ValueError, OverflowError, raised at the call or
    by the job) becomes 422; RuntimeError (queue full, shutting down)
    becomes 503.  Anything else is a bug and stays a 500.  With
    ``request``, the job is cancelled if that client disconnects first
    (see :func:`cancel_on_disconnect`).
    """
    try:
        fut = call()
        if request is None or fut.done():
            return await fut
        return await cancel_on_disconnect(request, fut)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NativeError(422, str(exc)) from exc
    except RuntimeError as exc:
        raise NativeError(503, str(exc)) from exc


async def cancel_on_disconnect(request: Request,
                               fut: asyncio.Future[T]) -> T:
    """Await ``fut``; cancel it if the client disconnects first.

    uvicorn does not cancel an endpoint whose client went away: without
    this, a dropped /search still scans the whole matrix.  Once the body
    is read, the request's next receive() returns ``http.disconnect``
    when the client goes (or once the response is sent), so a task waits
    for that message and cancels ``fut``: offloop then drops a queued job
    and stops a running one at its next chunk.  No polling.

    Raises NativeError(499) when the client is gone: nobody reads the
    answer, and uvicorn sends nothing to a closed connection.
    """
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the rest of a body the endpoint did not read
        gone = True
        fut.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await fut
    except asyncio.CancelledError:
        if not gone:
            raise  # our own task was cancelled
        raise NativeError(499, "the client disconnected") from None
    finally:
        watcher.cancel()


def scaled(values: Sequence[float] | Sequence[Sequence[float]],
           name: str) -> Floats32:
    """``values`` (a vector, or rows) as float32, each vector divided by
    its largest magnitude.

    The kernels compute in float32: the squares of a vector of 1e20s
    overflow, those of 1e-20s underflow to zero.  Cosines, unit vectors
    and top-k by cosine do not depend on a vector's scale, so scaling
    first gives the exact answer for every finite input.
    """
    try:
        x = numpy.array(values, dtype=numpy.float64)
    except ValueError as exc:  # ragged rows
        raise NativeError(422, f"{name} must be rows of one length") from exc
    if x.size:
        peak = numpy.abs(x).max(axis=-1, keepdims=True)
        peak[peak == 0] = 1.0  # a zero vector stays zero
        x /= peak
    return x.astype(numpy.float32)


def need_native_ext() -> None:
    if not HAVE_NATIVE_EXT:
        raise HTTPException(503, "native_ext is not installed: pip install "
                                 "--no-build-isolation ./examples/native_ext")


def make_matrix(rows: int, dim: int, seed: int) -> Floats32:
    """Seeded random float32 vectors, shape (rows, dim), not yet unit."""
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((rows, dim), dtype=numpy.float32)


# Lists stop at their first bad item (fail_fast): a body of a million bad
# numbers costs one error, not a million.  Floats must be finite.


class Numbers(BaseModel):
    numbers: list[int] = Field(max_length=MAX_ITEMS, fail_fast=True)
    rounds: int = Field(1000, ge=0, le=1_000_000)


Vector = Annotated[list[FiniteFloat],
                   Field(min_length=1, max_length=MAX_ITEMS, fail_fast=True)]


class Pair(BaseModel):
    a: Vector
    b: Vector


class Vectors(BaseModel):
    vectors: list[Vector] = Field(min_length=1, max_length=10_000,
                                  fail_fast=True)


class Query(BaseModel):
    """A query vector, or ``like``: the index of a row to use as one."""

    query: list[FiniteFloat] | None = Field(None, min_length=1,
                                            max_length=4096, fail_fast=True)
    like: int | None = Field(None, ge=0)
    k: int = Field(10, ge=1, le=1000)

    @model_validator(mode="after")
    def one_query(self) -> Self:
        if (self.query is None) == (self.like is None):
            raise ValueError("give exactly one of 'query' and 'like'")
        return self


# Response models: FastAPI serializes them with pydantic's compiled
# serializer instead of walking plain dicts in Python (1.3 s for the
# 340,000 numbers that fit in a 1 MiB body).  Their floats are finite:
# pydantic would write inf as null.


class Processed(BaseModel):
    results: list[int]


class Similarity(BaseModel):
    similarity: FiniteFloat


class Normalized(BaseModel):
    vectors: list[list[FiniteFloat]]


class Hit(BaseModel):
    index: int
    score: FiniteFloat


class SearchResults(BaseModel):
    """Best first."""

    results: list[Hit]

    @classmethod
    def of(cls, scores: npt.NDArray[numpy.floating[Any]],
           indices: npt.NDArray[numpy.integer[Any]]) -> Self:
        return cls(results=[Hit(index=i, score=s) for i, s in
                            zip(indices.tolist(), scores.tolist())])


def create_app(rows: int | None = None, dim: int = DIM, seed: int = SEED,
               max_body: int = MAX_BODY) -> FastAPI:
    """The application; the search matrix is built by its lifespan.

    Parameters
    ----------
    rows : int, optional
        Rows of the search matrix; default ``OFFLOOP_DEMO_ROWS`` or
        100,000.
    dim, seed : int
        Its dimension, and the seed of its random vectors.
    max_body : int
        Bytes a request body may have; over it, 413.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        n = rows or int(os.environ.get("OFFLOOP_DEMO_ROWS", ROWS))
        matrix = make_matrix(n, dim, seed)
        # Unit rows, so that top_k can skip the norms (normalized=True).
        app.state.matrix = await offloop.batch_normalize(matrix, out=matrix)
        yield
        del app.state.matrix

    app = FastAPI(title="offloop demo", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    # The decorator's form: Starlette's add_exception_handler() types a
    # handler as taking any Exception, not the class it is registered for.
    app.exception_handler(RequestValidationError)(validation_error)

    @app.exception_handler(NativeError)
    async def native_error(request: Request, exc: NativeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    # response_model=None: FastAPI sends these dicts as they are; without
    # it, it would make a response model of the return annotation and
    # validate every answer against it.

    @app.get("/calc/{n}", response_model=None)
    async def calc(n: int) -> dict[str, int]:
        need_native_ext()
        return {"n": n, "result": await native(lambda: native_ext.double(n))}

    @app.post("/process-numbers")
    async def process_numbers(body: Numbers, request: Request) -> Processed:
        need_native_ext()
        out = await native(lambda: native_ext.process_numbers(
            body.numbers, rounds=body.rounds), request)
        return Processed(results=out.tolist())

    @app.get("/sum-squares", response_model=None)
    async def sum_squares(a: int, b: int) -> dict[str, int]:
        need_native_ext()
        return {"a": a, "b": b,
                "result": await native(lambda: native_ext.sum_squares(a, b))}

    @app.post("/similarity")
    async def similarity(body: Pair) -> Similarity:
        a, b = scaled(body.a, "a"), scaled(body.b, "b")
        return Similarity(similarity=await native(
            lambda: offloop.cosine_similarity(a, b)))

    @app.post("/normalize")
    async def normalize(body: Vectors, request: Request) -> Normalized:
        x = scaled(body.vectors, "vectors")  # a new array: ours to reuse
        out = await native(lambda: offloop.batch_normalize(x, out=x),
                           request)
        return Normalized(vectors=out.tolist())

    @app.post("/search")
    async def search(body: Query, request: Request) -> SearchResults:
        matrix: Floats32 = request.app.state.matrix
        if body.like is not None and body.like >= len(matrix):
            raise HTTPException(422, f"like must be below {len(matrix)}")
        if body.like is not None:
            query = matrix[body.like]  # a unit row already
        else:
            assert body.query is not None  # Query.one_query checked it
            query = scaled(body.query, "query")
        k = min(body.k, len(matrix))
        scores, idx = await native(lambda: offloop.top_k(
            query, matrix, k=k, normalized=True), request)
        return SearchResults.of(scores, idx)

    @app.get("/health", response_model=None)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats", response_model=None)
    async def stats() -> dict[str, int]:
        return offloop.stats()

    return app


app = create_app()


def curl_lines(base: str) -> list[str]:
    """Commands to try against a running server."""
    return [
        f"curl {base}/calc/21",
        f"curl '{base}/sum-squares?a=3&b=4'",
        f"curl -X POST {base}/process-numbers -H 'content-type: "
        "application/json' -d '{\"numbers\": [1, 2, 3], \"rounds\": 10}'",
        f"curl -X POST {base}/similarity -H 'content-type: "
        "application/json' -d '{\"a\": [1, 0], \"b\": [1, 1]}'",
        f"curl -X POST {base}/search -H 'content-type: application/json'"
        " -d '{\"like\": 42, \"k\": 3}'",
        f"curl {base}/stats",
    ]


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows of the search matrix (default 100000)")
    parser.add_argument("--max-body", type=int, default=MAX_BODY,
                        help="bytes a request body may have; over it, 413 "
                             f"(default {MAX_BODY})")
    args = parser.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}"
    if not HAVE_NATIVE_EXT:
        print("native_ext is missing (its endpoints answer 503): "
              "pip install --no-build-isolation ./examples/native_ext")
    print(f"offloop demo on {base} (Ctrl-C stops it). Try:\n")
    for line in curl_lines(base):
        print("  " + line)
    print()
    uvicorn.run(create_app(rows=args.rows, max_body=args.max_body),
                host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
