"""The site's egress from the config: every sender off site and the one ledger they share.

The webhook (``webhook.url``) and the cloud uplink (``egress.enabled`` with a
``cloud`` broker) are the only senders (:mod:`edge.egress.sender`); both record
each delivery in ``<state_dir>/egress/ledger.sqlite``. Reports to the cloud are
signed by this appliance's own key and numbered before they queue
(:class:`SealedOutbox`), so the fleet can refuse forgeries and spot gaps and replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge.core.config import AgentConfig
from edge.egress.envelope import SEQ_FILE, Kind, Sealer, SequenceFile, load_or_create_key
from edge.egress.ledger import LEDGER_FILE, Ledger
from edge.egress.outbox import Outbox
from edge.egress.sealed import SealedOutbox, merge_sealed
from edge.egress.sender import Sender
from edge.egress.uplink import Uplink
from edge.egress.webhook import Webhook

__all__ = ["Egress", "build_egress"]


@dataclass
class Egress:
    ledger: Ledger | None = None
    webhook: Webhook | None = None
    outbox: Outbox | None = None
    sealer: Sealer | None = None
    uplink: Uplink | None = None
    senders: list[Sender] = field(default_factory=list)  # started in order, stopped reversed

    def sealed(self, kind: Kind) -> SealedOutbox | None:
        """Where reports of ``kind`` go (signed, numbered, to the uplink); None without."""
        if self.uplink is None or self.sealer is None:
            return None
        return SealedOutbox(self.uplink, self.sealer, kind)


def build_egress(cfg: AgentConfig, state: Path) -> Egress:
    w, e = cfg.webhook, cfg.egress
    cloud = e.cloud if e.enabled else None
    out = Egress()
    if not (w.url or cloud):
        return out
    out.ledger = Ledger(state / LEDGER_FILE)
    if cloud is not None:
        sealer = out.sealer = Sealer(e.site_id, load_or_create_key(state),
                                     SequenceFile(state / SEQ_FILE))
        k = e.k  # overflow pools the oldest reports (never a silent drop)
        out.outbox = Outbox(state / "egress" / "outbox.sqlite", e.outbox_max_rows,
                            merge=lambda a, b: merge_sealed(sealer, a, b, k))
        out.uplink = Uplink(out.outbox, out.ledger, cloud, e.site_id)
        out.senders.append(out.uplink)
    if w.url:
        out.webhook = Webhook(w.url, state / "webhook-outbox.sqlite", ledger=out.ledger,
                              max_rows=w.max_rows, timeout_s=w.timeout_s,
                              token_file=w.token_file)
        out.senders.append(out.webhook)
    return out
