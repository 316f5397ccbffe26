"""Ingest: the sources (the Source protocol, MQTT, worker processes), topic mapping, decoding."""
