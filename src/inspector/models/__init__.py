"""Models in two halves: scoring (no torch: what the line box runs) and fitting (torch: what makes a model).

    scoring.py      Scorer, load_scorer: a model directory -> scores and maps (onnxruntime, FAISS, numpy)
    persistence.py  the model directory format (atomic save, checksums)
    registry.py     kind -> scorer class and estimator class; classes join by declaring their kind
    settings.py     fit settings: defaults < category config < flags
    estimator.py    AnomalyModel, the estimator base (fit, get/set_params, save)
    network.py      normalisation + backbone + head as one torch graph
    patchcore.py, padim.py, fastflow.py   the three methods' heads and fitting
    estimators.py   every estimator and `create_model(kind)`

Nothing is imported here, so that importing the scoring half never imports torch.
"""
