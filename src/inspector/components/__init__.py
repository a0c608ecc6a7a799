"""Building blocks the models share, each on its own and testable alone.

    knn.py          the FAISS nearest-neighbour index (flat, IVF, HNSW; GPU when present)
    postprocess.py  patch scores -> the smoothed anomaly map a person looks at
    regions.py      connected defect regions of a map: boxes for the PLC, outlines for pictures
    overlay.py      the map laid over the part as a heat colour picture
    gaussian.py     streaming per-position Gaussian statistics and their safe inverse (PaDiM)
    coreset.py      greedy k-center coreset within a memory budget (PatchCore; torch)
    flows.py        affine-coupling normalising flows (FastFlow; torch)

The first four import no torch: the line box scores with them.
"""
