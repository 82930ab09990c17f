"""Data the flow needs: image preprocessing, calibration/training/evaluation datasets."""
