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

import numpy
from flask import Flask, abort, current_app, jsonify, request

import offloop

try:
    import native_ext
except ImportError:  # the seed endpoints answer 503 until it is built
    native_ext = None

ROWS = 100_000
DIM = 384
SEED = 0
MAX_BODY = 1 << 20  # bytes of a request body; over it, 413


class BadRequest(Exception):
    """Invalid input: answered with 422 and the message."""


def _native_ext():
    if native_ext is None:
        raise LookupError("native_ext is not installed: pip install "
                          "--no-build-isolation ./examples/native_ext")
    return native_ext.blocking


def _int(value, name):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer") from None


def _body():
    # Werkzeug refuses a Content-Length over MAX_CONTENT_LENGTH with 413,
    # but cuts a chunked body there without a word: the limit is set one
    # byte higher, and a body that reaches it is refused here.
    if len(request.get_data(cache=True)) > current_app.config["MAX_BODY"]:
        abort(413)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _field(body, name, kind, default=...):
    if name not in body:
        if default is ...:
            raise BadRequest(f"missing field {name!r}")
        return default
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"field {name!r} has the wrong type")
    return value


def _vector(value, name):
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


def _scaled(values, name):
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


def create_app(rows=None, dim=DIM, seed=SEED, max_body=MAX_BODY):
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
    def bad_input(exc):
        return jsonify(detail=str(exc)), 422

    @app.errorhandler(413)
    def too_large(exc):
        return jsonify(detail=f"the request body is over this app's limit "
                              f"of {max_body} bytes"), 413

    @app.errorhandler(LookupError)
    @app.errorhandler(RuntimeError)
    def unavailable(exc):
        return jsonify(detail=str(exc)), 503

    @app.get("/calc/<n>")
    def calc(n):
        n = _int(n, "n")
        return jsonify(n=n, result=_native_ext().double(n))

    @app.post("/process-numbers")
    def process_numbers():
        body = _body()
        numbers = _field(body, "numbers", list)
        rounds = _field(body, "rounds", int, 1000)
        if not 0 <= rounds <= 1_000_000:
            raise BadRequest("rounds must be between 0 and 1000000")
        out = _native_ext().process_numbers(numbers, rounds=rounds)
        return jsonify(results=out.tolist())

    @app.get("/sum-squares")
    def sum_squares():
        a = _int(request.args.get("a"), "a")
        b = _int(request.args.get("b"), "b")
        return jsonify(a=a, b=b, result=_native_ext().sum_squares(a, b))

    @app.post("/similarity")
    def similarity():
        body = _body()
        a = _scaled(_vector(_field(body, "a", list), "a"), "a")
        b = _scaled(_vector(_field(body, "b", list), "b"), "b")
        return jsonify(similarity=offloop.blocking.cosine_similarity(a, b))

    @app.post("/normalize")
    def normalize():
        vectors = _field(_body(), "vectors", list)
        if not vectors:
            raise BadRequest("vectors must be a non-empty list of rows")
        x = _scaled([_vector(row, f"vectors[{i}]")
                     for i, row in enumerate(vectors)], "vectors")
        return jsonify(
            vectors=offloop.blocking.batch_normalize(x, out=x).tolist())

    @app.post("/search")
    def search():
        body = _body()
        m = app.config["MATRIX"]
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
    def health():
        return jsonify(status="ok")

    @app.get("/stats")
    def stats():
        return jsonify(offloop.stats())

    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--max-body", type=int, default=MAX_BODY)
    args = parser.parse_args(argv)
    create_app(rows=args.rows, max_body=args.max_body).run(
        host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
