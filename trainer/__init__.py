"""Forewarn trainer: data loading, the ONNX feature graph, model fitting, bundle export.

Needs the ``train`` extra (scikit-learn, skl2onnx, onnx); the edge agent never
imports this package.
"""
