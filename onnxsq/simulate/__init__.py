"""A bit-exact integer-only reference of onnxsq's power-of-two QDQ models (``onnxsq simulate``) and
its deployment package (``onnxsq export-int``)."""
