"""The configured nodes on a server: NodeIds (browse paths translated) and the items.

A browse path is translated in one request, from the Objects folder along
hierarchical references; ``nsu=<uri>;`` NodeIds get the namespace index the server
uses today. A node the server does not have is reported, not fatal: the others are
read.
"""

from __future__ import annotations

from collections.abc import Sequence

from asyncua import Client, ua

from edge.core.opcua_config import OpcUaNodeConfig, OpcUaServerConfig, browse_path_elements

__all__ = ["monitored_items", "resolve_nodes"]


async def resolve_nodes(client: Client, nodes: Sequence[OpcUaNodeConfig]
                        ) -> tuple[dict[int, ua.NodeId], list[str]]:
    """Client handle -> NodeId for every node found; descriptions of the others."""
    out: dict[int, ua.NodeId] = {}
    missing: list[str] = []
    paths: list[tuple[int, ua.BrowsePath]] = []
    namespaces: list[str] | None = None
    for i, n in enumerate(nodes):
        if n.node_id is not None:
            text = n.node_id
            if text.startswith("nsu="):
                uri, _, rest = text[4:].partition(";")
                namespaces = namespaces or await client.get_namespace_array()
                if uri not in namespaces:
                    missing.append(f"{text}: namespace {uri!r} not on the server")
                    continue
                text = f"ns={namespaces.index(uri)};{rest}"
            out[i] = ua.NodeId.from_string(text)
            continue
        assert n.browse_path is not None
        elements = []
        for e in browse_path_elements(n.browse_path):
            ns, _, name = e.partition(":")
            elements.append(ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                IsInverse=False, IncludeSubtypes=True,
                TargetName=ua.QualifiedName(name, int(ns))))
        paths.append((i, ua.BrowsePath(StartingNode=ua.NodeId(ua.ObjectIds.ObjectsFolder),
                                       RelativePath=ua.RelativePath(Elements=elements))))
    if paths:
        results = await client.uaclient.translate_browsepaths_to_nodeids(
            [p for _, p in paths])
        for (i, _), res in zip(paths, results, strict=True):
            if res.StatusCode.is_good() and res.Targets:
                t = res.Targets[0].TargetId  # an ExpandedNodeId: this server's node
                out[i] = ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType)
            else:
                missing.append(f"{nodes[i].browse_path}: {res.StatusCode.name}")
    return out, missing


def monitored_items(cfg: OpcUaServerConfig, node_ids: dict[int, ua.NodeId]
                    ) -> list[ua.MonitoredItemCreateRequest]:
    """One monitored item per node; its client handle is the node's index in the config."""
    # Every change with a new source timestamp is a sample, even at the same value.
    trigger = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
    return [ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=ua.MonitoringParameters(
            ClientHandle=i, SamplingInterval=cfg.sampling_interval_ms, Filter=trigger,
            # When the queue is full the newest sample replaces the last queued one
            # (flagged overflow): the samples from the start of an outage are kept.
            QueueSize=cfg.queue_size, DiscardOldest=False))
        for i, nid in node_ids.items()]
