"""Byte accounting of transport/base.py: snapshots and deltas, the one place rounds and steps count bytes."""

from splitft.transport.base import ByteCounter, sum_kinds, training_traffic


def test_since_a_snapshot_counts_what_came_after_also_for_clients_new_since():
    c = ByteCounter()
    c.add(0, "lora_down", 10)
    snap = c.snapshot()
    c.add(0, "activations_up", 5)
    c.add(1, "labels_up", 3)  # client 1 had no count at the snapshot
    delta = c.since(snap)
    assert delta[0]["activations_up"] == 5 and delta[0]["lora_down"] == 0 and delta[1]["labels_up"] == 3
    assert c.since(snap, [1]) == {1: delta[1]}
    assert sum_kinds(delta)["activations_up"] == 5 and training_traffic(sum_kinds(delta))["bytes_up"] == 8
    assert sum_kinds(c.bytes) == c.totals() and c.totals()["lora_down"] == 10
