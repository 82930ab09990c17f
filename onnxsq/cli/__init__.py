"""The ``onnxsq`` command line: a thin skin over the library (options → config → call → save → render)."""
