"""What the tests and the benchmark share: free ports, real server processes, test registries,
generated images (photo-like digits, handwriting, hostile files) and load generators.

`tests/` is on `sys.path` under pytest (tests/conftest.py lives there); bench/ adds it itself.
"""
