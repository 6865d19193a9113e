"""Flask on offloop's blocking twins: the same endpoints as fastapi_app.py.

Flask serves each request on a thread; ``offloop.blocking`` and
``native_ext.blocking`` run the native work on offloop's pool while that
thread waits with the GIL released, so other requests' threads keep
running Python meanwhile.

Endpoints: GET /calc/<n>, POST /process-numbers, GET /sum-squares?a=&b=,
POST /similarity, POST /normalize, POST /search, GET /health, GET /stats
(see fastapi_app.py), with its input rules: a body over ``MAX_BODY``
bytes (1 MiB) gets 413 (Flask's MAX_CONTENT_LENGTH, on Content-Length
or counted for a chunked body, never read past the limit); numbers must be finite (1e309, NaN and
Infinity get 422), and each vector is divided by its largest magnitude
before the float32 kernels, so every finite input has a finite answer;
bad input gives 422 with a message that never repeats the input.  A
WSGI app cannot see a client disconnect: a dropped request's job runs
to its end.

Run it (Flask's development server on 127.0.0.1:5000)::

    python examples/flask_app.py [--port 5000] [--rows 100000]
"""

import argparse
import math
import os
from collections.abc import Sequence
from types import EllipsisType
from typing import Any, TypeVar

import numpy
import numpy.typing as npt
from flask import Flask, Response, abort, current_app, jsonify, request

import offloop

try:
    import native_ext
except ImportError:  # the seed endpoints answer 503 until it is built
    HAVE_NATIVE_EXT = False
else:
    HAVE_NATIVE_EXT = True

T = TypeVar("T")
Floats32 = npt.NDArray[numpy.float32]

ROWS = 100_000
DIM = 384
SEED = 0
MAX_BODY = 1 << 20  # bytes of a request body; over it, 413


class BadRequest(Exception):
    """Invalid input: answered with 422 and the message."""


def _need_native_ext() -> None:
    if not HAVE_NATIVE_EXT:
        raise LookupError("native_ext is not installed: pip install "
                          "--no-build-isolation ./examples/native_ext")


def _int(value: str | None, name: str) -> int:
    if value is not None:  # None: the query parameter is missing
        try:
            return int(value)
        except ValueError:
            pass
    raise BadRequest(f"{name} must be an integer")


def _body() -> dict[str, Any]:
    # Werkzeug refuses a Content-Length over MAX_CONTENT_LENGTH with 413,
    # but cuts a chunked body there without a word: the limit is set one
    # byte higher, and a body that reaches it is refused here.
    if len(request.get_data(cache=True)) > current_app.config["MAX_BODY"]:
        abort(413)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type[T],
           default: T | EllipsisType = ...) -> T:
    if name not in body:
        if isinstance(default, EllipsisType):
            raise BadRequest(f"missing field {name!r}")
        return default
    value: object = body[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"field {name!r} has the wrong type")
    return value


def _vector(value: object, name: str) -> list[float]:
    """A non-empty list of finite numbers (json parses 1e309 to inf and
    accepts NaN and Infinity)."""
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{name} must be a non-empty list of numbers")
    for i, x in enumerate(value):
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise BadRequest(f"{name}[{i}] must be a finite number")
        try:
            finite = math.isfinite(x)
        except OverflowError:  # an int beyond any float
            finite = False
        if not finite:
            raise BadRequest(f"{name}[{i}] must be a finite number")
    return value


def _scaled(values: Sequence[float] | Sequence[Sequence[float]],
            name: str) -> Floats32:
    """``values`` (a vector, or rows) as float32, each vector divided by
    its largest magnitude: the float32 kernels' squares neither overflow
    nor underflow, and cosines and unit vectors do not depend on the
    scale (see fastapi_app.scaled)."""
    try:
        x = numpy.array(values, dtype=numpy.float64)
    except (ValueError, OverflowError):  # ragged rows, ints beyond float
        raise BadRequest(f"{name} must be rows of one length of finite "
                         "numbers") from None
    if x.size:
        peak = numpy.abs(x).max(axis=-1, keepdims=True)
        peak[peak == 0] = 1.0
        x /= peak
    return x.astype(numpy.float32)


def create_app(rows: int | None = None, dim: int = DIM, seed: int = SEED,
               max_body: int = MAX_BODY) -> Flask:
    """The application, with its search matrix of unit vectors; request
    bodies over ``max_body`` bytes get 413."""
    app = Flask(__name__)
    app.config["MAX_BODY"] = max_body
    app.config["MAX_CONTENT_LENGTH"] = max_body + 1  # see _body()
    n = rows or int(os.environ.get("OFFLOOP_DEMO_ROWS", ROWS))
    rng = numpy.random.default_rng(seed)
    matrix = rng.standard_normal((n, dim), dtype=numpy.float32)
    app.config["MATRIX"] = offloop.blocking.batch_normalize(matrix,
                                                            out=matrix)

    @app.errorhandler(BadRequest)
    @app.errorhandler(TypeError)
    @app.errorhandler(ValueError)
    @app.errorhandler(OverflowError)
    def bad_input(exc: Exception) -> tuple[Response, int]:
        return jsonify(detail=str(exc)), 422

    @app.errorhandler(413)
    def too_large(exc: Exception) -> tuple[Response, int]:
        return jsonify(detail=f"the request body is over this app's limit "
                              f"of {max_body} bytes"), 413

    @app.errorhandler(LookupError)
    @app.errorhandler(RuntimeError)
    def unavailable(exc: Exception) -> tuple[Response, int]:
        return jsonify(detail=str(exc)), 503

    @app.get("/calc/<n>")
    def calc(n: str) -> Response:
        value = _int(n, "n")
        _need_native_ext()
        return jsonify(n=value, result=native_ext.blocking.double(value))

    @app.post("/process-numbers")
    def process_numbers() -> Response:
        body = _body()
        numbers = _field(body, "numbers", list)
        rounds = _field(body, "rounds", int, 1000)
        if not 0 <= rounds <= 1_000_000:
            raise BadRequest("rounds must be between 0 and 1000000")
        _need_native_ext()
        out = native_ext.blocking.process_numbers(numbers, rounds=rounds)
        return jsonify(results=out.tolist())

    @app.get("/sum-squares")
    def sum_squares() -> Response:
        a = _int(request.args.get("a"), "a")
        b = _int(request.args.get("b"), "b")
        _need_native_ext()
        return jsonify(a=a, b=b,
                       result=native_ext.blocking.sum_squares(a, b))

    @app.post("/similarity")
    def similarity() -> Response:
        body = _body()
        a = _scaled(_vector(_field(body, "a", list), "a"), "a")
        b = _scaled(_vector(_field(body, "b", list), "b"), "b")
        return jsonify(similarity=offloop.blocking.cosine_similarity(a, b))

    @app.post("/normalize")
    def normalize() -> Response:
        vectors = _field(_body(), "vectors", list)
        if not vectors:
            raise BadRequest("vectors must be a non-empty list of rows")
        x = _scaled([_vector(row, f"vectors[{i}]")
                     for i, row in enumerate(vectors)], "vectors")
        return jsonify(
            vectors=offloop.blocking.batch_normalize(x, out=x).tolist())

    @app.post("/search")
    def search() -> Response:
        body = _body()
        m: Floats32 = app.config["MATRIX"]
        k = _field(body, "k", int, 10)
        if "like" in body:
            like = _field(body, "like", int)
            if not 0 <= like < len(m):
                raise BadRequest(f"like must be in [0, {len(m)})")
            query = m[like]
        else:
            query = _scaled(_vector(_field(body, "query", list), "query"),
                            "query")
        if not 1 <= k <= min(1000, len(m)):
            raise BadRequest(f"k must be between 1 and {min(1000, len(m))}")
        scores, idx = offloop.blocking.top_k(query, m, k=k,
                                             normalized=True)
        return jsonify(results=[{"index": int(i), "score": float(s)}
                                for i, s in zip(idx, scores)])

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    @app.get("/stats")
    def stats() -> Response:
        return jsonify(offloop.stats())

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--max-body", type=int, default=MAX_BODY)
    args = parser.parse_args(argv)
    create_app(rows=args.rows, max_body=args.max_body).run(
        host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
