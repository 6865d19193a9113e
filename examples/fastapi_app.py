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

Bad input gives 422 with pydantic's messages, or the native function's
own message (wrong length, int64 overflow...); a full queue gives 503.
native_ext is the C extension in examples/native_ext, built against
offloop.h: ``pip install --no-build-isolation ./examples/native_ext``.

Run it (uvicorn on 127.0.0.1:8000; prints curl lines to try)::

    python examples/fastapi_app.py [--port 8000] [--rows 100000]
"""

import argparse
import contextlib
import os

import numpy
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

import offloop

try:
    import native_ext
except ImportError:  # the seed endpoints answer 503 until it is built
    native_ext = None

#: Rows and dimension of the search matrix (OFFLOOP_DEMO_ROWS overrides
#: the rows, e.g. for tests).
ROWS = 100_000
DIM = 384
SEED = 0
MAX_ITEMS = 1_000_000  # numbers or floats per request


class NativeError(Exception):
    """A native call refused its input, or offloop could not take it."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


async def native(fn, *args, **kwargs):
    """Await ``fn(*args, **kwargs)``; map its errors to HTTP statuses.

    Bad input (TypeError, ValueError, OverflowError, raised at the call or
    by the job) becomes 422; RuntimeError (queue full, shutting down)
    becomes 503.  Anything else is a bug and stays a 500.
    """
    try:
        return await fn(*args, **kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NativeError(422, str(exc)) from exc
    except RuntimeError as exc:
        raise NativeError(503, str(exc)) from exc


def need_native_ext():
    if native_ext is None:
        raise HTTPException(503, "native_ext is not installed: pip install "
                                 "--no-build-isolation ./examples/native_ext")
    return native_ext


def make_matrix(rows, dim, seed):
    """Seeded random float32 vectors, shape (rows, dim), not yet unit."""
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((rows, dim), dtype=numpy.float32)


class Numbers(BaseModel):
    numbers: list[int] = Field(max_length=MAX_ITEMS)
    rounds: int = Field(1000, ge=0, le=1_000_000)


class Pair(BaseModel):
    a: list[float] = Field(min_length=1, max_length=MAX_ITEMS)
    b: list[float] = Field(min_length=1, max_length=MAX_ITEMS)


class Vectors(BaseModel):
    vectors: list[list[float]] = Field(min_length=1, max_length=10_000)


class Query(BaseModel):
    """A query vector, or ``like``: the index of a row to use as one."""

    query: list[float] | None = Field(None, min_length=1, max_length=4096)
    like: int | None = Field(None, ge=0)
    k: int = Field(10, ge=1, le=1000)

    @model_validator(mode="after")
    def one_query(self):
        if (self.query is None) == (self.like is None):
            raise ValueError("give exactly one of 'query' and 'like'")
        return self


class Hit(BaseModel):
    index: int
    score: float


class SearchResults(BaseModel):
    """Best first.  A response model makes FastAPI serialize with
    pydantic's compiled serializer instead of walking plain dicts."""

    results: list[Hit]

    @classmethod
    def of(cls, scores, indices):
        return cls(results=[Hit(index=i, score=s) for i, s in
                            zip(indices.tolist(), scores.tolist())])


def create_app(rows=None, dim=DIM, seed=SEED):
    """The application; the search matrix is built by its lifespan.

    Parameters
    ----------
    rows : int, optional
        Rows of the search matrix; default ``OFFLOOP_DEMO_ROWS`` or
        100,000.
    dim, seed : int
        Its dimension, and the seed of its random vectors.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app):
        n = rows or int(os.environ.get("OFFLOOP_DEMO_ROWS", ROWS))
        matrix = make_matrix(n, dim, seed)
        # Unit rows, so that top_k can skip the norms (normalized=True).
        app.state.matrix = await offloop.batch_normalize(matrix, out=matrix)
        yield
        del app.state.matrix

    app = FastAPI(title="offloop demo", lifespan=lifespan)

    @app.exception_handler(NativeError)
    async def native_error(request: Request, exc: NativeError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/calc/{n}")
    async def calc(n: int):
        ext = need_native_ext()
        return {"n": n, "result": await native(ext.double, n)}

    @app.post("/process-numbers")
    async def process_numbers(body: Numbers):
        ext = need_native_ext()
        out = await native(ext.process_numbers, body.numbers,
                           rounds=body.rounds)
        return {"results": out.tolist()}

    @app.get("/sum-squares")
    async def sum_squares(a: int, b: int):
        ext = need_native_ext()
        return {"a": a, "b": b, "result": await native(ext.sum_squares, a, b)}

    @app.post("/similarity")
    async def similarity(body: Pair):
        return {"similarity": await native(offloop.cosine_similarity,
                                           body.a, body.b)}

    @app.post("/normalize")
    async def normalize(body: Vectors):
        out = await native(offloop.batch_normalize, body.vectors)
        return {"vectors": out.tolist()}

    @app.post("/search")
    async def search(body: Query, request: Request) -> SearchResults:
        matrix = request.app.state.matrix
        if body.like is not None and body.like >= len(matrix):
            raise HTTPException(422, f"like must be below {len(matrix)}")
        query = matrix[body.like] if body.like is not None else body.query
        k = min(body.k, len(matrix))
        scores, idx = await native(offloop.top_k, query, matrix, k=k,
                                   normalized=True)
        return SearchResults.of(scores, idx)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return offloop.stats()

    return app


app = create_app()


def curl_lines(base):
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


def main(argv=None):
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows of the search matrix (default 100000)")
    args = parser.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}"
    if native_ext is None:
        print("native_ext is missing (its endpoints answer 503): "
              "pip install --no-build-isolation ./examples/native_ext")
    print(f"offloop demo on {base} (Ctrl-C stops it). Try:\n")
    for line in curl_lines(base):
        print("  " + line)
    print()
    uvicorn.run(create_app(rows=args.rows), host="127.0.0.1",
                port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
