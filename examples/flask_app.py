"""Flask on offloop's blocking twins: the same endpoints as fastapi_app.py.

Flask serves each request on a thread; ``offloop.blocking`` and
``native_ext.blocking`` run the native work on offloop's pool while that
thread waits with the GIL released, so other requests' threads keep
running Python meanwhile.

Endpoints: GET /calc/<n>, POST /process-numbers, GET /sum-squares?a=&b=,
POST /similarity, POST /normalize, POST /search, GET /health, GET /stats
(see fastapi_app.py).  Bad input gives 422 with a message.

Run it (Flask's development server on 127.0.0.1:5000)::

    python examples/flask_app.py [--port 5000] [--rows 100000]
"""

import argparse
import os

import numpy
from flask import Flask, jsonify, request

import offloop

try:
    import native_ext
except ImportError:  # the seed endpoints answer 503 until it is built
    native_ext = None

ROWS = 100_000
DIM = 384
SEED = 0


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
        raise BadRequest(f"{name} must be an integer, got {value!r}")


def _body():
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


def create_app(rows=None, dim=DIM, seed=SEED):
    """The application, with its search matrix of unit vectors."""
    app = Flask(__name__)
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
        a, b = _field(body, "a", list), _field(body, "b", list)
        return jsonify(similarity=offloop.blocking.cosine_similarity(a, b))

    @app.post("/normalize")
    def normalize():
        vectors = _field(_body(), "vectors", list)
        return jsonify(
            vectors=offloop.blocking.batch_normalize(vectors).tolist())

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
            query = _field(body, "query", list)
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
    args = parser.parse_args(argv)
    create_app(rows=args.rows).run(host="127.0.0.1", port=args.port,
                                   threaded=True)


if __name__ == "__main__":
    main()
