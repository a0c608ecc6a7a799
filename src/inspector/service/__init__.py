"""The line-side service: a camera POSTs an image and gets pass/fail, score, regions and a heatmap.

    config.py     settings (one YAML/TOML file, env overrides)     schemas.py    request and response models
    registry.py   loaded models, warm-up, reload, calibration       store.py      SQLite (WAL) + files, retention,
    analysis.py   one image: score, map, regions; warm-up                         the record, read-only reader
    queue.py      bounded admission, worker and store threads       export.py     reviewed records -> data set
    pipeline.py   shared state; one inspection end to end           images.py     upload checks and decoding
    broadcast.py  live events fanned out to the operator page       errors.py     errors with an HTTP status
    auth.py       camera / operator API keys                        metrics.py    Prometheus exposition
    app.py        the FastAPI app factory and `serve`               server.py     uvicorn, streams end at a stop
    routers/      the HTTP endpoints (operator.py: what the page needs beyond the core API)
    web/          the operator page (static files, package data)

Nothing is imported here so that `inspector --help` stays fast; import the modules you need.
"""
