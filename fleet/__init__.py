"""Forewarn fleet service: receives the appliances' signed reports from the cloud broker.

``fleet`` imports only the contract from ``edge``: the report schemas
(``edge.egress.schema``, ``edge.egress.health``), the envelope
(``edge.egress.envelope``), keys (``edge.models.signing``), the token conventions
(``edge.api.auth``) and the exception tree (``edge.core.errors``). ``edge`` never
imports ``fleet``.
"""

__version__ = "0.1.0"
