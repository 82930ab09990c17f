"""Calibration for quantization: sources of sample inputs, mergeable streaming statistics, range
estimators and power-of-two scale math.

- :mod:`onnxsq.calibration.pow2` — pure numpy power-of-two math (shared with QAT).
- :mod:`onnxsq.calibration.stats` — ``TensorStats`` (mergeable) and the estimators.
- :mod:`onnxsq.calibration.sources` — image / .npy / .npz / ``module.py:function`` sources.
- :mod:`onnxsq.calibration.collect` — run a model in onnxruntime and fold tensors into statistics.
"""
