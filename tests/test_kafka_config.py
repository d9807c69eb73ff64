"""infra/kafka.py: the configs of a local KRaft cluster's nodes (ports, quorum, replication)."""

from __future__ import annotations

from pathlib import Path

from tally.infra import kafka


def test_a_single_node_keeps_its_layout_and_replicates_once():
    [node] = kafka.cluster_nodes(Path("/s/kafka"), 9092, 1)
    assert (node.node_id, node.port, node.controller_port, node.data_dir) == (1, 9092, 9093, Path("/s/kafka"))
    props = kafka.node_properties(node, [node])
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["offsets.topic.replication.factor"] == props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "1"


def test_three_nodes_share_one_quorum_and_replicate_three_times():
    nodes = kafka.cluster_nodes(Path("/s/kafka-3"), 9092, 3)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [(1, 9092, 9093), (2, 9094, 9095), (3, 9096, 9097)]
    assert len({n.data_dir for n in nodes}) == 3
    assert kafka.bootstrap(nodes) == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    configs = [kafka.node_properties(n, nodes) for n in nodes]
    assert {c["controller.quorum.voters"] for c in configs} == {"1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"}
    assert [c["advertised.listeners"] for c in configs] == [f"PLAINTEXT://127.0.0.1:{p}" for p in (9092, 9094, 9096)]
    assert len({c["log.dirs"] for c in configs}) == 3
    for c in configs:
        assert c["default.replication.factor"] == c["offsets.topic.replication.factor"] == "3"
        assert c["transaction.state.log.replication.factor"] == "3"
        assert c["min.insync.replicas"] == c["transaction.state.log.min.isr"] == "2"


def test_the_cluster_id_is_made_once_and_kept_for_every_node(tmp_path):
    first = kafka.cluster_id_of(tmp_path)
    assert kafka.cluster_id_of(tmp_path) == first and not first.startswith("-")
    assert (tmp_path / "cluster.id").read_text() == first
