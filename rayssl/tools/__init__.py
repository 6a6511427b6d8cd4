"""Tools beside the layers: the synthetic and bad-corpus generators, capacity, prepare, score and
preview (used by the command line and the tests, never by the library layers)."""
