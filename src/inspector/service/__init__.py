"""The line-side service: a camera POSTs an image and gets pass/fail, score, regions and a heatmap.

    config.py     settings (one YAML/TOML file, env overrides)      schemas.py   request and response models
    inference.py  loaded models, warm-up, reload, bounded queue     store.py     SQLite (WAL) + files, retention
    auth.py       camera / operator API keys                        metrics.py   Prometheus exposition
    app.py        the FastAPI app factory and `serve`                routers/     the HTTP endpoints

Nothing is imported here so that `inspector --help` stays fast; import the modules you need.
"""
