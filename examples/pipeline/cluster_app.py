"""FastAPI over a Dask cluster: /search awaits the cluster the way
examples/fastapi_app.py's /search awaits offloop in-process.

The app holds one distributed Client(asynchronous=True) on its event loop
and a ShardSet (dask_search.py) of the manifest's shards, loaded once on
the workers at startup.  A request fans out one task per shard and awaits
the merged top-k; the event loop keeps serving other requests meanwhile.
Each worker runs the shard searches on its own offloop pool.

Endpoints
---------
POST /search    {"query": [dim floats] or [[dim floats], ...], "k": 10}
                -> {"results": [{"index": global row, "score": ...}, ...]}
                (a list of such lists for a list of queries)
GET  /health    {"status": "ok", "workers": n, "shards": n, "rows": n}

Bad input (wrong length, k out of range) gives 422; a cluster that does
not answer within OFFLOOP_SEARCH_TIMEOUT seconds (default 30) gives 504.

Run it (a scheduler and workers as in dask_search.py, then)::

    cd examples/pipeline
    OFFLOOP_DASK_SCHEDULER=tcp://127.0.0.1:8786 \\
    OFFLOOP_PIPELINE_MANIFEST=/tmp/offloop-norm/manifest.json \\
        uvicorn cluster_app:app --host 127.0.0.1 --port 8001
"""

import contextlib
import os
from collections.abc import AsyncIterator

from distributed import Client, wait
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from dask_search import ShardSet

SCHEDULER_ENV = "OFFLOOP_DASK_SCHEDULER"
MANIFEST_ENV = "OFFLOOP_PIPELINE_MANIFEST"
#: Seconds a search may take before /search answers 504.
SEARCH_TIMEOUT = float(os.environ.get("OFFLOOP_SEARCH_TIMEOUT", "30"))


class SearchRequest(BaseModel):
    query: list[float] | list[list[float]] = Field(min_length=1)
    k: int = Field(10, ge=1, le=10_000)


#: One query's answer, best first.
Hits = list[dict[str, int | float]]


def create_app(scheduler: str | None = None,
               manifest: str | None = None) -> FastAPI:
    """The app; scheduler and manifest default to the environment's
    OFFLOOP_DASK_SCHEDULER and OFFLOOP_PIPELINE_MANIFEST."""
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV,
                                            "tcp://127.0.0.1:8786")
    manifest = manifest or os.environ.get(MANIFEST_ENV)
    if not manifest:
        raise ValueError(f"manifest is required (or set {MANIFEST_ENV})")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await Client(scheduler, asynchronous=True)
        try:
            await client.wait_for_workers(1, timeout=60)
            shards = await ShardSet.astart(client, manifest)
            await wait(shards.futures)  # loaded before serving
            app.state.client, app.state.shards = client, shards
            yield
        finally:
            await client.close()

    app = FastAPI(title="offloop on a Dask cluster", lifespan=lifespan)

    # response_model=None: FastAPI sends these dicts as they are, without
    # a response model made of the return annotation.

    @app.post("/search", response_model=None)
    async def search(req: SearchRequest,
                     request: Request) -> dict[str, list[Hits] | Hits]:
        shards: ShardSet = request.app.state.shards
        try:
            scores, ids = await shards.asearch(req.query, req.k,
                                               timeout=SEARCH_TIMEOUT)
        except (TypeError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from exc
        except TimeoutError as exc:
            raise HTTPException(504, f"the cluster did not answer in "
                                     f"{SEARCH_TIMEOUT} s") from exc
        results = [[{"index": int(i), "score": float(s)}
                    for s, i in zip(srow, irow)]
                   for srow, irow in zip(scores, ids)]
        nested = isinstance(req.query[0], list)
        return {"results": results if nested else results[0]}

    @app.get("/health", response_model=None)
    async def health(request: Request) -> dict[str, str | int]:
        st = request.app.state
        m = st.shards.manifest
        return {"status": "ok",
                "workers": len(await st.client.nthreads()),
                "shards": len(m.shards), "rows": m.rows}

    return app


if os.environ.get(MANIFEST_ENV):  # uvicorn cluster_app:app
    app = create_app()
