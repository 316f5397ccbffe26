"""Drift of features and score against the bundle's reference, and its reports."""
