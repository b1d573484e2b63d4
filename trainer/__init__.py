"""DDNN trainer: models, joint training, exit calibration, ONNX bundle export (see README.md)."""
