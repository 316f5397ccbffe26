"""Ingest: MQTT connection, topic mapping and payload decoding."""
