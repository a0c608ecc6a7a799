"""Building blocks the models share: coreset sampling, map post-processing, streaming statistics."""
