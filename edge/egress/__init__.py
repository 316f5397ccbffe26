"""The only code that sends anything off site.

schema.py  allow-list model of a drift report, k-suppression, canonical JSON
outbox.py  durable, bounded SQLite outbox (overflow merges the oldest aggregates)
ledger.py  local record of every payload that left, ``forewarn egress report``
uplink.py  second MQTT connection to the cloud broker, QoS 1, in order
"""
