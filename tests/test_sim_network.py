"""The simulated network and faults do what they say: scenario tests with a probe core."""

from __future__ import annotations

import itertools

import pytest

from swarmlearn.p2p.wire import encode_body
from swarmlearn.sim import LinkConfig, PortConfig, Simulator
from swarmlearn.sim.cluster import CoreCrashed
from tests.sim_probe import Blob, Note, Probe, probe_factory


def make(nodes: int = 3, seed: int = 1, link: LinkConfig | None = None) -> Simulator:
    sim = Simulator(seed, [f"n{i}" for i in range(nodes)], probe_factory, link=link)
    sim.start()
    return sim


def probe(sim: Simulator, node: str) -> Probe:
    core = sim.nodes[node].core
    assert isinstance(core, Probe)
    return core


def texts(sim: Simulator, node: str) -> list[str]:
    return [m.text for _, _, m in probe(sim, node).received if isinstance(m, Note)]


def test_a_partitioned_pair_exchanges_nothing_until_healed() -> None:
    sim = make()
    sim.network.partition(["n0"], ["n1"])
    for i in range(5):
        sim.request("n0", ("send", "n1", f"a{i}"), at=i * 0.1)
        sim.request("n1", ("send", "n0", f"b{i}"), at=i * 0.1)
        sim.request("n0", ("send", "n2", f"c{i}"), at=i * 0.1)
    sim.run(time_limit=5)
    assert texts(sim, "n1") == []
    assert texts(sim, "n0") == []
    assert texts(sim, "n2") == [f"c{i}" for i in range(5)]  # the rest of the network works
    sim.network.heal()
    sim.request("n0", ("send", "n1", "after"))
    sim.run(time_limit=10)
    assert texts(sim, "n1") == ["after"]
    assert sim.network.stats()[("n0", "n1")].messages_dropped == 5


def test_a_one_way_partition_blocks_one_direction() -> None:
    sim = make()
    sim.network.partition(["n0"], ["n1"], one_way=True)
    sim.request("n0", ("send", "n1", "lost"))
    sim.request("n1", ("send", "n0", "arrives"))
    sim.run(time_limit=1)
    assert texts(sim, "n1") == []
    assert texts(sim, "n0") == ["arrives"]


def test_ten_megabytes_over_100_mbits_take_0_8_virtual_seconds() -> None:
    sim = make(link=LinkConfig(latency_min_s=0.001, latency_tail_s=0.0, bandwidth_bps=100e6))
    sim.request("n0", ("blob", "n1", 10_000_000))
    sim.run(time_limit=10)
    ((arrived, sender, message),) = probe(sim, "n1").received
    assert sender == "n0"
    assert isinstance(message, Blob)
    assert len(message.data) == 10_000_000
    assert arrived == pytest.approx(0.8 + 0.001, rel=1e-3)


def test_bandwidth_is_shared_by_messages_on_one_link() -> None:
    sim = make(link=LinkConfig(latency_min_s=0.0, latency_tail_s=0.0, bandwidth_bps=8e6))
    sim.request("n0", ("many", [("blob", "n1", 500_000), ("blob", "n1", 500_000)]))
    sim.run(time_limit=10)
    times = [t for t, _, _ in probe(sim, "n1").received]
    assert times == pytest.approx([0.5, 1.0], rel=1e-3)  # the second waits for the first


def test_latency_is_the_minimum_plus_a_tail_and_links_keep_order() -> None:
    sim = make(link=LinkConfig(latency_min_s=0.010, latency_tail_s=0.005))
    for i in range(200):
        sim.request("n0", ("send", "n1", str(i)), at=i * 0.001)
    sim.run(time_limit=10)
    received = probe(sim, "n1").received
    assert [m.text for _, _, m in received if isinstance(m, Note)] == [str(i) for i in range(200)]
    delays = sorted(t - int(m.text) * 0.001 for t, _, m in received if isinstance(m, Note))
    assert delays[0] >= 0.010
    assert 0.012 < delays[len(delays) // 2] < 0.025  # a tail with mean 5 ms, plus FIFO waits


def test_loss_duplication_and_reordering_happen_at_their_rates() -> None:
    link = LinkConfig(
        latency_min_s=0.001, latency_tail_s=0.01, loss=0.2, duplicate=0.1, reorder=0.5
    )
    sim = make(link=link)
    for i in range(2000):
        sim.request("n0", ("send", "n1", str(i)), at=i * 0.0001)
    sim.run(time_limit=10)
    got = [int(text) for text in texts(sim, "n1")]
    distinct = set(got)
    assert 0.75 < len(distinct) / 2000 < 0.85  # 20% lost
    assert 0.08 < (len(got) - len(distinct)) / len(distinct) < 0.12  # 10% twice
    assert any(a > b for a, b in itertools.pairwise(got))  # some overtook others
    stats = sim.network.stats()[("n0", "n1")]
    assert stats.messages_sent == 2000
    assert stats.messages_delivered == len(got)
    assert stats.bytes_delivered == sum(len(encode_body(Note(str(i)))[0]) + 4 for i in got)


def test_a_clogged_link_delays_without_losing() -> None:
    sim = make(link=LinkConfig(latency_min_s=0.001, latency_tail_s=0.0))
    sim.network.clog("n0", "n1", until=2.0)
    for i in range(3):
        sim.request("n0", ("send", "n1", str(i)), at=i * 0.1)
    sim.request("n0", ("send", "n2", "free"), at=0.0)
    sim.run(time_limit=1.5)
    assert texts(sim, "n1") == []
    assert texts(sim, "n2") == ["free"]
    sim.run(time_limit=3)
    assert texts(sim, "n1") == ["0", "1", "2"]
    assert [t for t, _, _ in probe(sim, "n1").received] == [2.0, 2.0, 2.0]


def test_drop_all_loses_what_is_in_flight() -> None:
    sim = make(link=LinkConfig(latency_min_s=0.5, latency_tail_s=0.0))
    sim.request("n0", ("send", "n1", "lost"))
    sim.run(time_limit=0.1)
    sim.network.drop_all()
    sim.request("n0", ("send", "n1", "kept"))
    sim.run(time_limit=2)
    assert texts(sim, "n1") == ["kept"]


def test_a_crashed_node_comes_back_with_only_what_it_persisted() -> None:
    sim = make()
    sim.request("n0", ("persist", "durable-1"))
    sim.request("n0", ("remember", "volatile"))
    sim.request("n0", ("persist", "durable-2"))
    sim.request("n0", ("timer", "t", 1.0))
    before = probe(sim, "n0")
    assert before.memory == ["volatile"]
    sim.crash("n0")
    sim.request("n1", ("send", "n0", "while down"))
    sim.run(time_limit=2)
    assert before.fired == []  # its timer died with it
    assert before.received == []
    sim.restart("n0")
    after = probe(sim, "n0")
    assert after is not before
    assert after.incarnation == 2
    assert after.memory == []
    assert after.started_with == {"log": ("durable-1", "durable-2")}
    assert after.received == []  # the message sent while it was down is gone


def test_crash_after_a_persist_loses_the_effects_that_follow() -> None:
    sim = make()
    sim.crash_after_persists("n0", 2)
    sim.request(
        "n0",
        (
            "many",
            [("persist", 1), ("send", "n1", "first"), ("persist", 2), ("send", "n1", "second")],
        ),
    )
    sim.run(time_limit=1)
    assert not sim.nodes["n0"].alive
    assert texts(sim, "n1") == ["first"]
    assert sim.nodes["n0"].persisted == {"log": [1, 2]}


def test_a_paused_node_gets_its_inputs_when_it_resumes() -> None:
    sim = make(link=LinkConfig(latency_min_s=0.01, latency_tail_s=0.0))
    sim.request("n0", ("timer", "t", 0.5))
    sim.pause("n0", 2.0)
    sim.request("n1", ("send", "n0", "hello"), at=0.1)
    sim.run(time_limit=1.9)
    assert probe(sim, "n0").received == []
    assert probe(sim, "n0").fired == []
    sim.run(time_limit=3)
    assert [(t, m) for t, _, m in probe(sim, "n0").received] == [(2.0, Note("hello"))]
    assert probe(sim, "n0").fired == [(2.0, "t")]


def test_clock_skew_changes_local_time_and_timers() -> None:
    sim = make()
    sim.set_clock("n0", offset_s=100.0, drift=0.25)
    sim.loop.call_at(4.0, lambda: sim.request("n0", ("timer", "t", 5.0)))
    sim.run(time_limit=20)
    fired_local, tag = probe(sim, "n0").fired[0]
    assert tag == "t"
    assert probe(sim, "n0").seen_now[-2] == pytest.approx(100 + 1.25 * 4.0)
    assert fired_local == pytest.approx(100 + 1.25 * 4.0 + 5.0)  # 5 local seconds later
    assert sim.now == pytest.approx(4.0 + 5.0 / 1.25)


def test_a_byzantine_policy_rewrites_or_withholds_effects() -> None:
    sim = make()
    sim.set_policy("n0", lambda node, effects: [])  # silence
    sim.request("n0", ("broadcast", "x"))
    sim.set_policy("n2", lambda node, effects: [*effects, *effects])  # says everything twice
    sim.request("n2", ("send", "n1", "y"))
    sim.run(time_limit=1)
    assert texts(sim, "n1") == ["y", "y"]


def test_a_core_that_raises_is_a_crash_failure_naming_the_node() -> None:
    sim = make()
    with pytest.raises(CoreCrashed, match="n1 raised RuntimeError: probe asked to fail"):
        sim.request("n1", ("boom",))


def test_broadcast_reaches_everyone_but_the_sender() -> None:
    sim = make(nodes=5)
    sim.request("n2", ("broadcast", "all"))
    sim.run(time_limit=1)
    assert [texts(sim, f"n{i}") for i in range(5)] == [["all"], ["all"], [], ["all"], ["all"]]
    assert sim.counters.messages_sent == 4


# ---------------------------------------------------------------- ports (a node's access link)

FAST = LinkConfig(latency_min_s=0.0, latency_tail_s=0.0, bandwidth_bps=1e9)
MEGABYTE = 1_000_000


def arrivals(sim: Simulator, node: str) -> list[float]:
    return [t for t, _, _ in probe(sim, node).received]


def test_without_a_port_a_fan_out_goes_out_on_every_link_at_once() -> None:
    sim = make(nodes=5, link=FAST)
    sim.request("n0", ("many", [("blob", f"n{i}", MEGABYTE) for i in range(1, 5)]))
    sim.run(time_limit=10)
    for i in range(1, 5):
        assert arrivals(sim, f"n{i}") == pytest.approx([0.008], rel=1e-3)


def test_a_fan_out_shares_the_senders_egress_port() -> None:
    sim = make(nodes=5, link=FAST)
    sim.network.set_port("n0", PortConfig(egress_bps=8e6, ingress_bps=8e6))
    sim.request("n0", ("many", [("blob", f"n{i}", MEGABYTE) for i in range(1, 5)]))
    sim.run(time_limit=10)
    for i in range(1, 5):  # one after the other, 1 s each at 8 Mbit/s
        assert arrivals(sim, f"n{i}") == pytest.approx([float(i)], rel=1e-3)
    assert sim.network.port_bytes("n0")[0] == pytest.approx(4 * MEGABYTE, rel=1e-3)


def test_a_fan_in_shares_the_receivers_ingress_port() -> None:
    sim = make(nodes=5, link=FAST)
    sim.network.set_port("n0", PortConfig(egress_bps=1e9, ingress_bps=8e6))
    for i in range(1, 5):
        sim.request(f"n{i}", ("blob", "n0", MEGABYTE))
    sim.run(time_limit=10)
    assert arrivals(sim, "n0") == pytest.approx([1.0, 2.0, 3.0, 4.0], rel=1e-3)
    assert sim.network.port_bytes("n0")[1] == pytest.approx(4 * MEGABYTE, rel=1e-3)


def test_the_slowest_stage_sets_the_pace_and_latency_adds_once() -> None:
    link = LinkConfig(latency_min_s=0.05, latency_tail_s=0.0, bandwidth_bps=16e6)
    sim = make(nodes=2, link=link)
    sim.network.set_port("n0", PortConfig(egress_bps=8e6, ingress_bps=1e9))
    sim.network.set_port("n1", PortConfig(egress_bps=1e9, ingress_bps=4e6))
    sim.request("n0", ("blob", "n1", MEGABYTE))
    sim.run(time_limit=10)
    assert arrivals(sim, "n1") == pytest.approx([2.0 + 0.05], rel=1e-3)  # ingress: 4 Mbit/s


def test_a_link_factory_gives_each_pair_its_own_link() -> None:
    def factory(src: str, dst: str) -> LinkConfig:
        return LinkConfig(latency_min_s=0.01 * int(dst[1:]), latency_tail_s=0.0)

    sim = Simulator(1, [f"n{i}" for i in range(4)], probe_factory)
    sim.network.link_factory = factory
    sim.start()
    for i in range(1, 4):
        sim.request("n0", ("send", f"n{i}", "x"))
    sim.run(time_limit=1)
    for i in range(1, 4):
        assert arrivals(sim, f"n{i}")[0] == pytest.approx(0.01 * i, abs=1e-4)


def test_the_ingress_port_serves_messages_in_the_order_they_reach_it() -> None:
    """A message over a short link is not queued behind one sent just before over a long
    link: the port is free when the short link's message gets there."""

    def factory(src: str, dst: str) -> LinkConfig:
        latency_s = 0.08 if "n1" in (src, dst) else 0.02
        return LinkConfig(latency_min_s=latency_s, latency_tail_s=0.0)

    sim = Simulator(1, [f"n{i}" for i in range(3)], probe_factory)
    sim.network.link_factory = factory
    sim.start()
    sim.network.set_port("n0", PortConfig(egress_bps=1e9, ingress_bps=8e6))
    sim.request("n1", ("blob", "n0", 100_000), at=0.0)  # 0.1 s through n0's port, from 0.08
    sim.request("n2", ("blob", "n0", 100_000), at=0.001)  # there at 0.021: first in line
    sim.run(time_limit=5)
    got = [(t, sender) for t, sender, _ in probe(sim, "n0").received]
    assert [sender for _, sender in got] == ["n2", "n1"]
    assert got[0][0] == pytest.approx(0.021 + 0.1, abs=2e-3)
    assert got[1][0] == pytest.approx(0.021 + 0.2, abs=2e-3)  # then n1's waits its turn
