"""The hot path: readings -> aligned windows -> scores, and the range rules."""
