"""End-to-end tests of consumer groups: real clients against `millrace serve`.

Clients: confluent-kafka (current librdkafka), kafka-python, Debian's kcat
(librdkafka 2.0.2), and a few hand-written requests where a client cannot
be made to send what a test needs (a commit from a fenced member).

Every test starts its own server with a `[broker.group]` section that makes
groups fast (no initial rebalance delay, short sessions allowed), so a test
waits on the clients' own timers, not the broker's. Nothing sleeps to pass:
every wait polls a condition until a deadline and fails with what it saw.

Run from the repository root:
    MILLRACE_BIN=target/debug/millrace python3 -m pytest -q tests/e2e/test_groups.py
"""

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter

import pytest

from test_real_clients import Broker as Server, ck_create_topic as create_topic, server_log_on_failure

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RDKAFKA_LOG = logging.getLogger("rdkafka")

# Coordinator settings for every test: a group forms as soon as its members
# joined, and sessions of a second or two are allowed.
GROUP_CONFIG = {
    "initial_rebalance_delay_ms": 0,
    "min_session_timeout_ms": 1000,
}

# Kafka error codes the tests look for.
UNKNOWN_TOPIC_OR_PARTITION = 3
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
REBALANCE_IN_PROGRESS = 27


def log(msg):
    print(f"[groups {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(cond, timeout, what, poll=0.05, diag=lambda: ""):
    """Polls cond() until it is truthy; fails after timeout with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}. {diag()}")
        time.sleep(poll)


# ---------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------


class Broker(Server):
    """One `millrace serve` with a config file (test_real_clients' server
    helper); SIGKILL and restart keep the port and the data directory."""

    def __init__(self, workdir, sections):
        """sections: {"broker.group": {key: TOML value}, ...}."""
        config_path = os.path.join(workdir, "millrace.toml")
        lines = []
        for section, settings in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {v}" for k, v in settings.items())
        with open(config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        super().__init__(workdir, ["--config", config_path])


@pytest.fixture
def broker_with():
    """A factory: broker_with(group={...}, broker={...}, log={...}) starts a
    server whose `[broker.group]` is GROUP_CONFIG with the `group` overrides,
    plus the given `[broker]` and `[broker.log]` settings."""
    started = []

    def start(group=None, broker=None, log=None):
        workdir = tempfile.mkdtemp(prefix="millrace-groups-")
        sections = {"broker": broker or {}, "broker.log": log or {}, "broker.group": {**GROUP_CONFIG, **(group or {})}}
        b = Broker(workdir, {k: v for k, v in sections.items() if v})
        started.append((b, workdir))
        b.start()
        return b

    try:
        yield start
        for b, _ in started:
            b.assert_alive()
    finally:
        for b, workdir in started:
            rc = b.stop()
            if rc not in (0, None):
                print(f"server exited with {rc} on SIGTERM\n{b.tail()}", file=sys.stderr)
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def broker(broker_with):
    return broker_with()


# ---------------------------------------------------------------------------
# Producing
# ---------------------------------------------------------------------------


def produce(addr, topic, partitions, per_partition, tag, flush_every=None):
    """Produces per_partition records to each partition (waiting for the
    acknowledgements every `flush_every` records, so they land in separate
    batches); returns the set of acknowledged (partition, offset, key, value)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": addr, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                  "logger": RDKAFKA_LOG})
    acked, errors = set(), []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked.add((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for part in partitions:
        for i in range(per_partition):
            p.produce(topic, key=f"{tag}-p{part}-k{i}".encode(), value=f"{tag}-value-{part}-{i}".encode(),
                      partition=part, on_delivery=cb)
            if flush_every and (i + 1) % flush_every == 0:
                assert p.flush(30) == 0, "records left undelivered"
        p.poll(0)
    assert p.flush(30) == 0, "records left undelivered"
    assert not errors, f"delivery errors: {errors[:3]}"
    assert len(acked) == per_partition * len(partitions)
    return acked


# ---------------------------------------------------------------------------
# confluent-kafka consumers
# ---------------------------------------------------------------------------


class CkMember:
    """A confluent-kafka consumer in a group, polled by the test thread,
    recording what it reads and its rebalance callbacks."""

    def __init__(self, addr, group, topics, name, **extra):
        from confluent_kafka import Consumer

        self.name = name
        self.records = []  # (partition, offset, key, value)
        self.errors = []
        self.assigned_calls = []
        self.revoked_calls = []
        self.lost_calls = []
        conf = {
            "bootstrap.servers": addr,
            "group.id": group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 300,
            # Bounds every rebalance (and a JoinGroup parked at the
            # coordinator, which close() waits for) to 20 s, not 5 minutes.
            "max.poll.interval.ms": 20000,
            "topic.metadata.refresh.interval.ms": 2000,
            "error_cb": lambda e: self.errors.append(str(e)),
            "logger": RDKAFKA_LOG,
        }
        conf.update(extra)
        self.c = Consumer(conf)
        self.c.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.closed = False

    def _on_assign(self, consumer, partitions):
        self.assigned_calls.append(sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer, partitions):
        self.revoked_calls.append(sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer, partitions):
        self.lost_calls.append(sorted(tp.partition for tp in partitions))

    def poll(self, timeout=0.05):
        for m in self.c.consume(num_messages=1000, timeout=timeout):
            if m.error():
                raise AssertionError(f"{self.name}: consume error {m.error()}")
            self.records.append((m.partition(), m.offset(), m.key(), m.value()))

    def assignment(self):
        return sorted(tp.partition for tp in self.c.assignment())

    def close(self):
        if not self.closed:
            self.closed = True
            self.c.close()


def drive(members, cond, timeout, what):
    """Polls every open member in turn until cond() holds."""
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            if not m.closed:
                m.poll()
        if cond():
            return
        if time.monotonic() >= deadline:
            state = "; ".join(
                f"{m.name}: assignment {m.assignment() if not m.closed else 'closed'}, {len(m.records)} records, "
                f"assigned {m.assigned_calls} revoked {m.revoked_calls} lost {m.lost_calls}, errors {m.errors[-3:]}"
                for m in members)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {state}")


def split_evenly(members, partitions, each):
    """The open members' assignments are disjoint, cover `partitions`, and
    have `each` partitions apiece."""
    live = [m for m in members if not m.closed]
    assignments = [m.assignment() for m in live]
    flat = [p for a in assignments for p in a]
    return sorted(flat) == sorted(partitions) and all(len(a) == each for a in assignments)


def assert_read_once(members, expected, since=None):
    """Together the members read exactly `expected` (each record once)."""
    got = Counter(r for m in members for r in (m.records if since is None else m.records[since[m.name]:]))
    dups = {r: n for r, n in got.items() if n > 1}
    assert not dups, f"records read more than once: {sorted(dups.items())[:5]}"
    missing = expected - set(got)
    extra = set(got) - expected
    assert not missing and not extra, \
        f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} unexpected (e.g. {sorted(extra)[:3]})"


def commit_sync(member):
    """Commits the member's consumed positions; fails on any per-partition error."""
    result = member.c.commit(asynchronous=False)
    bad = [tp for tp in (result or []) if tp.error is not None]
    assert not bad, f"{member.name}: commit failed for {bad}"
    return {tp.partition: tp.offset for tp in (result or [])}


def admin(addr):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": addr, "logger": RDKAFKA_LOG})


def describe_group(adm, group):
    return adm.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)


def group_offsets(adm, group):
    from confluent_kafka import ConsumerGroupTopicPartitions

    res = adm.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=10)
    return {(tp.topic, tp.partition): tp.offset for tp in res[group].result(timeout=15).topic_partitions}


# ---------------------------------------------------------------------------
# 1. confluent-kafka: even split, read once, leave and take over
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [None, "cooperative-sticky", "roundrobin"])
@server_log_on_failure
def test_confluent_group_split_leave_takeover(broker, strategy):
    topic = "split-" + uuid.uuid4().hex[:8]
    group = "g-split-" + uuid.uuid4().hex[:8]
    parts = list(range(6))
    create_topic(broker.addr, topic, 6)
    extra = {} if strategy is None else {"partition.assignment.strategy": strategy}
    members = [CkMember(broker.addr, group, [topic], f"c{i}", **extra) for i in range(3)]
    try:
        t0 = time.monotonic()
        drive(members, lambda: split_evenly(members, parts, 2), 30, "a 2/2/2 split of six partitions")
        log(f"{strategy}: 2/2/2 after {time.monotonic() - t0:.1f}s: {[m.assignment() for m in members]}")
        phase1 = produce(broker.addr, topic, parts, 50, "one")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(phase1), 30, "every phase-1 record")
        assert_read_once(members, phase1)
        # Each member read only its own partitions.
        for m in members:
            assert {r[0] for r in m.records} <= set(m.assignment()), f"{m.name} read outside its assignment"
        for m in members:
            committed = commit_sync(m)
            assert committed == {p: 50 for p in m.assignment()}, f"{m.name} committed {committed}"

        # One member leaves (LeaveGroup); the other two take its partitions.
        gone, rest = members[0], members[1:]
        gone_parts = gone.assignment()
        for m in rest:
            m.revoked_calls.clear()
        gone.close()
        since = {m.name: len(m.records) for m in rest}
        t0 = time.monotonic()
        drive(rest, lambda: split_evenly(rest, parts, 3), 30, "a 3/3 split after a member left")
        log(f"{strategy}: 3/3 after {time.monotonic() - t0:.1f}s: {[m.assignment() for m in rest]}")
        taken = set(rest[0].assignment() + rest[1].assignment())
        assert set(gone_parts) <= taken
        phase2 = produce(broker.addr, topic, parts, 30, "two")
        drive(rest, lambda: sum(len(m.records) - since[m.name] for m in rest) >= len(phase2), 30,
              "every phase-2 record")
        # Nothing of phase 1 is read again: the takeover starts at the commits.
        assert_read_once(rest, phase2, since=since)
        if strategy == "cooperative-sticky":
            # Cooperative: the survivors kept what they had and never gave it up.
            for m in rest:
                assert not m.revoked_calls, f"{m.name} revoked {m.revoked_calls} under cooperative-sticky"
    finally:
        for m in members:
            m.close()


# ---------------------------------------------------------------------------
# 2. kafka-python consumers in a group; commit() and committed()
# ---------------------------------------------------------------------------


class KpMember:
    """A kafka-python KafkaConsumer in a group, polled by the test thread."""

    def __init__(self, addr, group, topics, name, **extra):
        from kafka import KafkaConsumer

        self.name = name
        self.records = []
        # kafka-python has no rebalance callbacks here; drive() prints these.
        self.assigned_calls, self.revoked_calls, self.lost_calls, self.errors = [], [], [], []
        conf = dict(bootstrap_servers=addr, group_id=group, client_id=name, auto_offset_reset="earliest",
                    enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=300,
                    max_poll_interval_ms=20000,
                    metadata_max_age_ms=2000, request_timeout_ms=15000)
        conf.update(extra)
        self.c = KafkaConsumer(**conf)
        self.c.subscribe(topics)
        self.closed = False

    def poll(self, timeout=0.05):
        for tp, msgs in self.c.poll(timeout_ms=int(timeout * 1000), max_records=1000).items():
            for m in msgs:
                self.records.append((m.partition, m.offset, m.key, m.value))

    def assignment(self):
        return sorted(tp.partition for tp in self.c.assignment())

    def close(self, autocommit=False):
        if not self.closed:
            self.closed = True
            self.c.close(autocommit=autocommit)


@server_log_on_failure
def test_kafka_python_group_commit_committed(broker):
    from kafka import TopicPartition

    topic = "kp-" + uuid.uuid4().hex[:8]
    group = "g-kp-" + uuid.uuid4().hex[:8]
    parts = list(range(4))
    create_topic(broker.addr, topic, 4)
    members = [KpMember(broker.addr, group, [topic], f"kp{i}") for i in range(2)]
    try:
        drive(members, lambda: split_evenly(members, parts, 2), 30, "a 2/2 split of four partitions")
        log(f"kafka-python split: {[m.assignment() for m in members]}")
        expected = produce(broker.addr, topic, parts, 40, "kp")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(expected), 30, "every record")
        assert_read_once(members, expected)
        for m in members:
            assert {r[0] for r in m.records} <= set(m.assignment())
        # Nothing committed yet.
        assert members[0].c.committed(TopicPartition(topic, 0)) is None
        for m in members:
            m.c.commit()
        # Every member sees every partition's commit, its own and the other's.
        for m in members:
            got = {p: m.c.committed(TopicPartition(topic, p)) for p in parts}
            assert got == {p: 40 for p in parts}, f"{m.name}: committed() = {got}"
        # An explicit commit of a lower offset is a plain overwrite.
        from kafka.structs import OffsetAndMetadata
        own = members[1].assignment()[0]
        members[1].c.commit({TopicPartition(topic, own): OffsetAndMetadata(7, "seven", -1)})
        assert members[0].c.committed(TopicPartition(topic, own)) == 7
        meta = members[0].c.committed(TopicPartition(topic, own), metadata=True)
        assert meta.offset == 7 and meta.metadata == "seven", meta
    finally:
        for m in members:
            m.close()


# ---------------------------------------------------------------------------
# 3. Commit, SIGKILL the server, restart, resume at the committed offset
# ---------------------------------------------------------------------------


def commit_explicit(member, topic, offsets):
    """A synchronous commit of exactly these {partition: offset}."""
    if isinstance(member, CkMember):
        from confluent_kafka import TopicPartition

        result = member.c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                                 asynchronous=False)
        assert all(tp.error is None for tp in result), f"commit errors: {result}"
        assert {tp.partition: tp.offset for tp in result} == offsets
    else:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        member.c.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
@server_log_on_failure
def test_commit_survives_sigkill(broker, client):
    topic = "resume-" + uuid.uuid4().hex[:8]
    group = "g-resume-" + uuid.uuid4().hex[:8]
    make = CkMember if client == "confluent" else KpMember
    create_topic(broker.addr, topic, 2)
    expected = produce(broker.addr, topic, [0, 1], 100, "r")
    first = make(broker.addr, group, [topic], "before")
    try:
        drive([first], lambda: {r[0] for r in first.records} == {0, 1}, 30, "records of both partitions")
        committed = {0: 37, 1: 61}
        commit_explicit(first, topic, committed)
        # The commit was acknowledged: a SIGKILL right now must not lose it.
        broker.kill()
        broker.start()
        log(f"{client}: server SIGKILLed after the commit and restarted")
        adm = admin(broker.addr)
        assert group_offsets(adm, group) == {(topic, 0): 37, (topic, 1): 61}
    finally:
        first.close()
    second = make(broker.addr, group, [topic], "after")
    try:
        def resumed():
            seen = {r[0] for r in second.records}
            return seen == {0, 1}
        drive([second], resumed, 30, "the new member to read both partitions")
        for p, off in committed.items():
            offsets = sorted(r[1] for r in second.records if r[0] == p)
            assert offsets[0] == off, f"partition {p}: resumed at {offsets[0]}, committed {off}"
        drive([second], lambda: len(second.records) >= 200 - 37 - 61, 30, "the rest of the topic")
        want = {r for r in expected if r[1] >= committed[r[0]]}
        assert_read_once([second], want)
    finally:
        second.close()


# ---------------------------------------------------------------------------
# 4. Static membership: a restart within the session keeps the assignment
# ---------------------------------------------------------------------------


def members_by_id(desc):
    return {m.member_id: (m.group_instance_id, sorted(tp.partition for tp in m.assignment.topic_partitions))
            for m in desc.members}


@server_log_on_failure
def test_static_member_rejoins_without_rebalance(broker):
    from confluent_kafka import ConsumerGroupState

    topic = "static-" + uuid.uuid4().hex[:8]
    group = "g-static-" + uuid.uuid4().hex[:8]
    parts = list(range(4))
    create_topic(broker.addr, topic, 4)
    adm = admin(broker.addr)
    # b joins first and leads; a is a follower, so its return changes nothing.
    b = CkMember(broker.addr, group, [topic], "b", **{"group.instance.id": "inst-b"})
    a = a2 = None
    try:
        drive([b], lambda: b.assignment() == parts, 30, "b to own every partition")
        a = CkMember(broker.addr, group, [topic], "a", **{"group.instance.id": "inst-a"})
        drive([a, b], lambda: split_evenly([a, b], parts, 2), 30, "a 2/2 split")
        a_parts, b_parts = a.assignment(), b.assignment()
        a_id = a.c.memberid()
        before = members_by_id(describe_group(adm, group))
        assert before[a_id] == ("inst-a", a_parts), before
        b_calls = (len(b.assigned_calls), len(b.revoked_calls))

        # A static member's close sends no LeaveGroup: it stays in the group.
        a.close()
        still = describe_group(adm, group)
        assert still.state == ConsumerGroupState.STABLE and a_id in members_by_id(still), members_by_id(still)

        # It comes back under the same instance id within its session.
        t0 = time.monotonic()
        a2 = CkMember(broker.addr, group, [topic], "a2", **{"group.instance.id": "inst-a"})
        drive([a2, b], lambda: a2.assignment() == a_parts, 5.5, "a's partitions to go back to its instance")
        log(f"static member back with {a2.assignment()} after {time.monotonic() - t0:.1f}s")
        after = describe_group(adm, group)
        ids = members_by_id(after)
        assert after.state == ConsumerGroupState.STABLE
        assert a_id not in ids and ids.get(a2.c.memberid()) == ("inst-a", a_parts), ids
        assert ids.get(b.c.memberid()) == ("inst-b", b_parts), ids
        # b saw no rebalance at all: no revocation, no new assignment.
        drive([a2, b], lambda: True, 1, "")
        assert (len(b.assigned_calls), len(b.revoked_calls)) == b_calls, \
            f"b was rebalanced: assigned {b.assigned_calls} revoked {b.revoked_calls}"
        assert b.assignment() == b_parts

        # And the pair reads everything once.
        expected = produce(broker.addr, topic, parts, 20, "s")
        since = {"a2": 0, "b": len(b.records)}
        drive([a2, b], lambda: len(a2.records) + len(b.records) - since["b"] >= len(expected), 30, "every record")
        assert_read_once([a2, b], expected, since=since)
    finally:
        for m in (a, b, a2):
            if m is not None:
                m.close()


# ---------------------------------------------------------------------------
# 5. kcat -G (librdkafka 2.0.2's balanced consumer)
# ---------------------------------------------------------------------------


def kcat_group(addr, group, topic, *extra, timeout=60):
    """Runs `kcat -G` until it reached the end of every assigned partition;
    returns the (partition, offset, key, value) it printed."""
    cmd = ["kcat", "-b", addr, "-G", group, "-e", "-q", "-f", "%p %o %k %s\\n",
           "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=300", *extra, topic]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"kcat -G did not exit within {timeout}s; stderr: {e.stderr!r}")
    assert p.returncode == 0, f"kcat exited {p.returncode}: {p.stderr.decode()[-2000:]}"
    out = []
    for line in p.stdout.decode().splitlines():
        part, off, key, value = line.split(" ")
        out.append((int(part), int(off), key.encode(), value.encode()))
    return out


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
@server_log_on_failure
def test_kcat_balanced_consumer(broker):
    topic = "kcat-" + uuid.uuid4().hex[:8]
    group = "g-kcat-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2]
    create_topic(broker.addr, topic, 3)
    first = produce(broker.addr, topic, parts, 100, "kc")
    got = kcat_group(broker.addr, group, topic, "-o", "beginning")
    assert len(got) == len(set(got)) and set(got) == first, \
        f"kcat read {len(got)} records ({len(set(got))} distinct), want {len(first)}"
    # kcat commits what it read when it closes...
    assert group_offsets(admin(broker.addr), group) == {(topic, p): 100 for p in parts}
    # ...so the next kcat in the group reads only what came after.
    second = produce(broker.addr, topic, parts, 20, "kc2")
    got = kcat_group(broker.addr, group, topic)
    assert len(got) == len(set(got)) and set(got) == second, \
        f"second kcat read {len(got)} records, want exactly the {len(second)} new ones; " \
        f"offsets seen {sorted({(r[0], r[1]) for r in got})[:6]}..."


# ---------------------------------------------------------------------------
# 6. Admin: list, describe, offsets, delete
# ---------------------------------------------------------------------------


def listed_groups(adm, **kwargs):
    res = adm.list_consumer_groups(request_timeout=10, **kwargs).result(timeout=15)
    assert not res.errors, f"list_consumer_groups errors: {res.errors}"
    return {g.group_id: g for g in res.valid}


@server_log_on_failure
def test_admin_list_describe_offsets_delete(broker):
    from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, TopicPartition

    topic = "adm-" + uuid.uuid4().hex[:8]
    group = "g-adm-" + uuid.uuid4().hex[:8]
    simple = "g-simple-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2, 3]
    create_topic(broker.addr, topic, 4)
    adm = admin(broker.addr)
    members = [CkMember(broker.addr, group, [topic], f"adm{i}") for i in range(2)]
    try:
        drive(members, lambda: split_evenly(members, parts, 2), 30, "a 2/2 split")
        expected = produce(broker.addr, topic, parts, 25, "adm")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(expected), 30, "every record")
        for m in members:
            commit_sync(m)

        # A "simple" group: offsets committed by an assign() user, no members.
        c = Consumer({"bootstrap.servers": broker.addr, "group.id": simple, "logger": RDKAFKA_LOG})
        try:
            c.assign([TopicPartition(topic, 0, 0)])
            res = c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
            assert res[0].error is None, res
        finally:
            c.close()

        groups = listed_groups(adm)
        assert group in groups and simple in groups, sorted(groups)
        assert groups[group].state == ConsumerGroupState.STABLE and not groups[group].is_simple_consumer_group
        assert groups[simple].state == ConsumerGroupState.EMPTY and groups[simple].is_simple_consumer_group
        stable_only = listed_groups(adm, states={ConsumerGroupState.STABLE})
        assert group in stable_only and simple not in stable_only, sorted(stable_only)
        # Every group here speaks the classic protocol (ListGroups v5 types).
        from confluent_kafka import ConsumerGroupType
        assert groups[group].type == ConsumerGroupType.CLASSIC, groups[group].type
        assert group in listed_groups(adm, types={ConsumerGroupType.CLASSIC})
        assert group not in listed_groups(adm, types={ConsumerGroupType.CONSUMER})

        # Several groups in one DescribeGroups, one of them unknown.
        missing = "g-missing-" + uuid.uuid4().hex[:6]
        fs = adm.describe_consumer_groups([group, simple, missing], request_timeout=10)
        states = {g: f.result(timeout=15).state for g, f in fs.items()}
        assert states == {group: ConsumerGroupState.STABLE, simple: ConsumerGroupState.EMPTY,
                          missing: ConsumerGroupState.DEAD}, states
        desc = describe_group(adm, group)
        assert desc.state == ConsumerGroupState.STABLE and desc.partition_assignor == "range", desc
        got = {m.member_id: (m.client_id, sorted(tp.partition for tp in m.assignment.topic_partitions),
                             {tp.topic for tp in m.assignment.topic_partitions})
               for m in desc.members}
        want = {m.c.memberid(): (m.name, m.assignment(), {topic}) for m in members}
        assert got == want, f"described {got}, consumers say {want}"
        assert all(m.host for m in desc.members), [m.host for m in desc.members]

        assert group_offsets(adm, group) == {(topic, p): 25 for p in parts}
        assert group_offsets(adm, simple) == {(topic, 0): 5}

        # Nor may an admin rewrite the offsets of a group with members.
        from confluent_kafka import ConsumerGroupTopicPartitions
        res = adm.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])], request_timeout=10)
        refused = res[group].result(timeout=15).topic_partitions
        assert [(tp.partition, tp.error and tp.error.code()) for tp in refused] == [(0, KafkaError.UNKNOWN_MEMBER_ID)], \
            refused
        assert group_offsets(adm, group) == {(topic, p): 25 for p in parts}

        # A group with members cannot be deleted.
        fut = adm.delete_consumer_groups([group], request_timeout=10)[group]
        with pytest.raises(KafkaException) as err:
            fut.result(timeout=15)
        assert err.value.args[0].code() == KafkaError.NON_EMPTY_GROUP, err.value
        assert group in listed_groups(adm)

        for m in members:
            m.close()
        wait_for(lambda: describe_group(adm, group).state == ConsumerGroupState.EMPTY, 15, "the group to be empty",
                 poll=0.2)
        # Offsets outlive the members, and an admin may rewrite them.
        assert group_offsets(adm, group) == {(topic, p): 25 for p in parts}
        res = adm.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])], request_timeout=10)
        altered = res[group].result(timeout=15)
        assert [(tp.partition, tp.offset, tp.error) for tp in altered.topic_partitions] == [(0, 3, None)]
        assert group_offsets(adm, group) == {(topic, 0): 3, **{(topic, p): 25 for p in parts[1:]}}

        fs = adm.delete_consumer_groups([group, simple], request_timeout=10)
        for g, f in fs.items():
            f.result(timeout=15)
        missing = adm.delete_consumer_groups(["g-never-" + uuid.uuid4().hex[:6]], request_timeout=10)
        for g, f in missing.items():
            with pytest.raises(KafkaException) as err:
                f.result(timeout=15)
            assert err.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND, err.value

        def gone():
            groups = listed_groups(adm)
            assert group not in groups and simple not in groups, sorted(groups)
            assert describe_group(adm, group).state in (ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN)
            for g in (group, simple):
                offsets = group_offsets(adm, g)
                assert all(o < 0 for o in offsets.values()), f"{g}: offsets after delete {offsets}"

        gone()
        # The deletion is durable.
        broker.kill()
        broker.start()
        adm = admin(broker.addr)
        gone()
    finally:
        for m in members:
            m.close()


# ---------------------------------------------------------------------------
# 7. Error paths: fenced and expired members
# ---------------------------------------------------------------------------


class RawMember:
    """A group member speaking the oldest versions of the group APIs by hand
    (JoinGroup/SyncGroup/Heartbeat v0, OffsetCommit v2), so a test can send
    what no client would: a commit with a stale generation, or silence."""

    def __init__(self, addr, group):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.group = group
        self.member_id = ""
        self.generation = -1
        self.corr = 0

    @staticmethod
    def _str(s):
        b = s.encode()
        return struct.pack(">h", len(b)) + b

    @staticmethod
    def _bytes(b):
        return struct.pack(">i", len(b)) + b

    def _call(self, api_key, version, body):
        self.corr += 1
        header = struct.pack(">hhi", api_key, version, self.corr) + self._str("raw-member")
        frame = header + body
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", self._recv(4))[0]
        resp = self._recv(size)
        assert struct.unpack(">i", resp[:4])[0] == self.corr
        return Reader(resp[4:])

    def _recv(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return bytes(buf)

    def join(self, topics, session_timeout_ms):
        """JoinGroup v0 (rebalance timeout = session timeout); returns
        (error, leader, member ids)."""
        sub = struct.pack(">h", 0) + struct.pack(">i", len(topics)) + b"".join(self._str(t) for t in topics) + \
            struct.pack(">i", -1)
        body = (self._str(self.group) + struct.pack(">i", session_timeout_ms) + self._str(self.member_id) +
                self._str("consumer") + struct.pack(">i", 1) + self._str("range") + self._bytes(sub))
        r = self._call(11, 0, body)
        error, generation = r.i16(), r.i32()
        r.string()  # protocol
        leader, member_id = r.string(), r.string()
        members = [(r.string(), r.bytes()) for _ in range(r.i32())]
        if error == 0:
            self.generation, self.member_id = generation, member_id
        return error, leader, [m for m, _ in members]

    @classmethod
    def assignment_bytes(cls, topic, partitions):
        return (struct.pack(">h", 0) + struct.pack(">i", 1) + cls._str(topic) + struct.pack(">i", len(partitions)) +
                b"".join(struct.pack(">i", p) for p in partitions) + struct.pack(">i", -1))

    def sync(self, assignments):
        body = self._str(self.group) + struct.pack(">i", self.generation) + self._str(self.member_id) + \
            struct.pack(">i", len(assignments)) + b"".join(self._str(m) + self._bytes(a) for m, a in assignments)
        r = self._call(14, 0, body)
        return r.i16(), r.bytes()

    def heartbeat(self, generation=None, member_id=None):
        gen = self.generation if generation is None else generation
        member = self.member_id if member_id is None else member_id
        r = self._call(12, 0, self._str(self.group) + struct.pack(">i", gen) + self._str(member))
        return r.i16()

    def commit(self, topic, partition, offset, generation=None, member_id=None):
        """OffsetCommit v2; returns the partition's error code."""
        gen = self.generation if generation is None else generation
        member = self.member_id if member_id is None else member_id
        body = (self._str(self.group) + struct.pack(">i", gen) + self._str(member) + struct.pack(">q", -1) +
                struct.pack(">i", 1) + self._str(topic) + struct.pack(">i", 1) +
                struct.pack(">iq", partition, offset) + self._str(""))
        r = self._call(8, 2, body)
        assert r.i32() == 1 and r.string() == topic and r.i32() == 1 and r.i32() == partition
        return r.i16()

    def close(self):
        self.sock.close()


class Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def _take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def i16(self):
        return self._take(">h")

    def i32(self):
        return self._take(">i")

    def string(self):
        n = self.i16()
        s = self.buf[self.pos:self.pos + max(n, 0)].decode()
        self.pos += max(n, 0)
        return s

    def bytes(self):
        n = self.i32()
        b = self.buf[self.pos:self.pos + max(n, 0)]
        self.pos += max(n, 0)
        return b


@server_log_on_failure
def test_fenced_member_commits_are_rejected(broker):
    """A hand-driven member: commits with a wrong generation or member id are
    refused and change nothing; when it stops heartbeating during a
    rebalance its session expires, a real consumer takes its partitions,
    and its commits are refused from then on."""
    topic = "fence-" + uuid.uuid4().hex[:8]
    group = "g-fence-" + uuid.uuid4().hex[:8]
    create_topic(broker.addr, topic, 2)
    expected = produce(broker.addr, topic, [0, 1], 10, "f")
    raw = RawMember(broker.addr, group)
    b = None
    try:
        error, leader, members = raw.join([topic], session_timeout_ms=2000)
        assert error == 0 and leader == raw.member_id and members == [raw.member_id], (error, leader, members)
        gen = raw.generation
        mine = RawMember.assignment_bytes(topic, [0, 1])
        assert raw.sync([(raw.member_id, mine)]) == (0, mine)
        assert raw.heartbeat() == 0
        assert raw.commit(topic, 0, 3) == 0
        # Wrong generation, unknown member: refused, and nothing is written.
        assert raw.commit(topic, 0, 9, generation=gen + 1) == ILLEGAL_GENERATION
        assert raw.commit(topic, 0, 9, generation=gen - 1) == ILLEGAL_GENERATION
        assert raw.commit(topic, 0, 9, member_id="ghost-member") == UNKNOWN_MEMBER_ID
        assert raw.heartbeat(generation=gen + 1) == ILLEGAL_GENERATION
        assert raw.heartbeat(member_id="ghost-member") == UNKNOWN_MEMBER_ID
        assert group_offsets(admin(broker.addr), group) == {(topic, 0): 3}

        # A real consumer joins: the raw member learns of the rebalance from
        # its heartbeat, may still commit for its generation (Kafka allows
        # it, for onPartitionsRevoked), but never rejoins.
        b = CkMember(broker.addr, group, [topic], "b")
        wait_for(lambda: (b.poll(), raw.heartbeat() == REBALANCE_IN_PROGRESS)[1], 10,
                 "the raw member's heartbeat to report REBALANCE_IN_PROGRESS")
        assert raw.commit(topic, 0, 4) == 0
        t0 = time.monotonic()
        drive([b], lambda: b.assignment() == [0, 1], 15, "b to take both partitions once the raw member expires")
        log(f"silent member expired; b took over after {time.monotonic() - t0:.1f}s")
        # Fenced for good: its member id is unknown now.
        assert raw.commit(topic, 0, 9) == UNKNOWN_MEMBER_ID
        assert raw.heartbeat() == UNKNOWN_MEMBER_ID
        # b starts from the last accepted commit (4) on p0, from 0 on p1.
        drive([b], lambda: len(b.records) >= 10 - 4 + 10, 15, "b to read the rest")
        first = {p: min(r[1] for r in b.records if r[0] == p) for p in (0, 1)}
        assert first == {0: 4, 1: 0}, first
        assert_read_once([b], {r for r in expected if r[0] == 1 or r[1] >= 4})
    finally:
        raw.close()
        if b is not None:
            b.close()


CRASHY_CONSUMER = textwrap.dedent("""
    import sys
    from confluent_kafka import Consumer
    addr, group, topic = sys.argv[1:4]
    c = Consumer({"bootstrap.servers": addr, "group.id": group, "client.id": "crashy",
                  "session.timeout.ms": 2000, "heartbeat.interval.ms": 300, "max.poll.interval.ms": 20000,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic], on_assign=lambda c, ps: print("assigned", *sorted(p.partition for p in ps), flush=True))
    while True:
        c.poll(0.1)
""")


@server_log_on_failure
def test_crashed_member_session_expires(broker):
    """A consumer process killed with SIGKILL sends no LeaveGroup: the
    coordinator must notice the silence (session timeout) and hand its
    partitions to the survivor."""
    from confluent_kafka import ConsumerGroupState

    topic = "crash-" + uuid.uuid4().hex[:8]
    group = "g-crash-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2, 3]
    create_topic(broker.addr, topic, 4)
    adm = admin(broker.addr)
    b = CkMember(broker.addr, group, [topic], "b")
    drive([b], lambda: b.assignment() == parts, 30, "b to own every partition")
    proc = subprocess.Popen([sys.executable, "-c", CRASHY_CONSUMER, broker.addr, group, topic],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        def split():
            d = describe_group(adm, group)
            owners = {m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions) for m in d.members}
            return d.state == ConsumerGroupState.STABLE and sorted(owners) == ["b", "crashy"] and \
                len(owners["crashy"]) == 2 and b.assignment() == owners["b"] and len(owners["b"]) == 2
        drive([b], split, 30, "a 2/2 split with the other process")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()
        drive([b], lambda: b.assignment() == parts, 20, "b to get the crashed member's partitions")
        took = time.monotonic() - t0
        log(f"crashed member expired; b owns everything after {took:.1f}s")
        d = describe_group(adm, group)
        assert [m.client_id for m in d.members] == ["b"], d.members
        expected = produce(broker.addr, topic, parts, 10, "c")
        since = {"b": len(b.records)}
        drive([b], lambda: len(b.records) - since["b"] >= len(expected), 20, "every new record")
        assert_read_once([b], expected, since=since)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        b.close()


@server_log_on_failure
def test_stalled_consumer_loses_partitions_and_rejoins(broker):
    """A consumer that stops calling poll() for longer than
    max.poll.interval.ms leaves the group (librdkafka's background thread
    keeps heartbeating, then sends LeaveGroup); the other member takes its
    partitions, and the stalled one rejoins when it polls again."""
    from confluent_kafka import KafkaError

    topic = "stall-" + uuid.uuid4().hex[:8]
    group = "g-stall-" + uuid.uuid4().hex[:8]
    parts = [0, 1]
    create_topic(broker.addr, topic, 2)
    stall = CkMember(broker.addr, group, [topic], "stall",
                     **{"max.poll.interval.ms": 6000, "session.timeout.ms": 3000})
    b = CkMember(broker.addr, group, [topic], "b")
    try:
        drive([stall, b], lambda: split_evenly([stall, b], parts, 1), 30, "a 1/1 split")
        t0 = time.monotonic()
        drive([b], lambda: b.assignment() == parts, 20, "b to take the stalled member's partition")
        took = time.monotonic() - t0
        log(f"stalled member out after {took:.1f}s")
        assert took >= 3, f"the stalled member lost its partition after {took:.1f}s, before any timeout"
        # Polling again: the client reports the stall, then rejoins.
        saw_stall = []

        def rejoined():
            for m in stall.c.consume(num_messages=100, timeout=0.05):
                if m.error():
                    assert m.error().code() == KafkaError._MAX_POLL_EXCEEDED, m.error()
                    saw_stall.append(m.error())
                else:
                    stall.records.append((m.partition(), m.offset(), m.key(), m.value()))
            b.poll()
            return split_evenly([stall, b], parts, 1)

        wait_for(rejoined, 30, "the stalled member to rejoin", poll=0)
        assert saw_stall, "the client never reported exceeding max.poll.interval.ms"
        expected = produce(broker.addr, topic, parts, 10, "st")
        drive([stall, b], lambda: len(stall.records) + len(b.records) >= len(expected), 20, "every record")
        assert_read_once([stall, b], expected)
    finally:
        stall.close()
        b.close()


# ---------------------------------------------------------------------------
# 8. More of what real deployments do
# ---------------------------------------------------------------------------


@server_log_on_failure
def test_active_group_survives_server_sigkill(broker):
    """The server is SIGKILLed under a running group and restarted: the
    group comes back from the offsets topic with its generation, so the
    members carry on with their partitions (no rebalance) and read what is
    produced next exactly once."""
    topic = "live-" + uuid.uuid4().hex[:8]
    group = "g-live-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2, 3]
    create_topic(broker.addr, topic, 4)
    members = [CkMember(broker.addr, group, [topic], f"live{i}") for i in range(2)]
    try:
        drive(members, lambda: split_evenly(members, parts, 2), 30, "a 2/2 split")
        before = [m.assignment() for m in members]
        first = produce(broker.addr, topic, parts, 20, "l1")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(first), 30, "every record")
        assert_read_once(members, first)
        for m in members:
            commit_sync(m)
        calls = [(len(m.assigned_calls), len(m.revoked_calls)) for m in members]
        member_ids = [m.c.memberid() for m in members]
        since = {m.name: len(m.records) for m in members}

        broker.kill()
        broker.start()
        second = produce(broker.addr, topic, parts, 20, "l2")
        drive(members, lambda: sum(len(m.records) - since[m.name] for m in members) >= len(second), 30,
              "every record produced after the restart")
        assert_read_once(members, second, since=since)
        # Commits still work, with the generation from before the crash.
        for m in members:
            commit_sync(m)
        assert [m.assignment() for m in members] == before
        assert [m.c.memberid() for m in members] == member_ids
        assert [(len(m.assigned_calls), len(m.revoked_calls)) for m in members] == calls, \
            [(m.assigned_calls, m.revoked_calls) for m in members]
        assert group_offsets(admin(broker.addr), group) == {(topic, p): 40 for p in parts}
    finally:
        for m in members:
            m.close()


@server_log_on_failure
def test_mixed_clients_one_group(broker):
    """librdkafka and kafka-python members in one group agree on a common
    assignor and split the partitions."""
    topic = "mixed-" + uuid.uuid4().hex[:8]
    group = "g-mixed-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2, 3]
    create_topic(broker.addr, topic, 4)
    members = [CkMember(broker.addr, group, [topic], "ck"), KpMember(broker.addr, group, [topic], "kp")]
    try:
        drive(members, lambda: split_evenly(members, parts, 2), 30, "a 2/2 split between the two clients")
        d = describe_group(admin(broker.addr), group)
        assert d.partition_assignor in ("range", "roundrobin"), d.partition_assignor
        expected = produce(broker.addr, topic, parts, 15, "mx")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(expected), 30, "every record")
        assert_read_once(members, expected)
        # A member that shares no assignor with the group is turned away,
        # and the group is left alone.
        from confluent_kafka import Consumer, KafkaError
        odd = Consumer({"bootstrap.servers": broker.addr, "group.id": group, "client.id": "odd",
                        "partition.assignment.strategy": "cooperative-sticky", "logger": RDKAFKA_LOG})
        try:
            odd.subscribe([topic])
            seen = []

            def refused():
                for msg in odd.consume(num_messages=10, timeout=0.05):
                    if msg.error():
                        seen.append(msg.error())
                for m in members:
                    m.poll()
                return any(e.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL for e in seen)

            wait_for(refused, 15, "INCONSISTENT_GROUP_PROTOCOL for the odd member", poll=0, diag=lambda: str(seen))
        finally:
            odd.close()
        assert split_evenly(members, parts, 2)
        assert sorted(m.client_id for m in describe_group(admin(broker.addr), group).members) == ["ck", "kp"]
    finally:
        for m in members:
            m.close()


@server_log_on_failure
def test_static_member_fenced_by_same_instance(broker):
    """Two processes with one group.instance.id: the newer one takes the
    partitions, the older one is fenced (FENCED_INSTANCE_ID, fatal in
    librdkafka), and the other member is not rebalanced."""
    from confluent_kafka import KafkaError

    topic = "fenced-" + uuid.uuid4().hex[:8]
    group = "g-fenced-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2, 3]
    create_topic(broker.addr, topic, 4)
    b = CkMember(broker.addr, group, [topic], "b", **{"group.instance.id": "inst-b"})
    a = a2 = None
    try:
        drive([b], lambda: b.assignment() == parts, 30, "b to own every partition")
        a = CkMember(broker.addr, group, [topic], "a", **{"group.instance.id": "inst-a"})
        drive([a, b], lambda: split_evenly([a, b], parts, 2), 30, "a 2/2 split")
        a_parts, b_calls = a.assignment(), (len(b.assigned_calls), len(b.revoked_calls))
        a2 = CkMember(broker.addr, group, [topic], "a2", **{"group.instance.id": "inst-a"})
        fatal = []

        def fenced():
            for m in a.c.consume(num_messages=100, timeout=0.05):
                if m.error():
                    fatal.append(m.error())
            a2.poll()
            b.poll()
            return a2.assignment() == a_parts and any(e.code() == KafkaError._FATAL for e in fatal)

        wait_for(fenced, 20, "a2 to take a's partitions and a to be fenced", poll=0,
                 diag=lambda: f"a2 {a2.assignment()}, a's errors {fatal}")
        assert any("fenced" in e.str().lower() for e in fatal), fatal
        assert (len(b.assigned_calls), len(b.revoked_calls)) == b_calls and b.assignment() != a_parts
        members = describe_group(admin(broker.addr), group).members
        assert sorted((m.client_id, m.group_instance_id) for m in members) == [("a2", "inst-a"), ("b", "inst-b")]
    finally:
        for m in (a, a2, b):
            if m is not None:
                m.close()


@server_log_on_failure
def test_subscription_change_rebalances(broker):
    """A member that subscribes to one more topic rejoins with new metadata:
    the group rebalances and the new topic goes to the only member that
    wants it."""
    t1 = "sub1-" + uuid.uuid4().hex[:8]
    t2 = "sub2-" + uuid.uuid4().hex[:8]
    group = "g-sub-" + uuid.uuid4().hex[:8]
    create_topic(broker.addr, t1, 2)
    create_topic(broker.addr, t2, 2)
    a = CkMember(broker.addr, group, [t1], "a")
    b = CkMember(broker.addr, group, [t1], "b")
    try:
        drive([a, b], lambda: split_evenly([a, b], [0, 1], 1), 30, "a 1/1 split of the first topic")
        b.c.subscribe([t1, t2], on_assign=b._on_assign, on_revoke=b._on_revoke, on_lost=b._on_lost)

        def owned(m):
            return {(tp.topic, tp.partition) for tp in m.c.assignment()}

        def rebalanced():
            oa, ob = owned(a), owned(b)
            return len(oa) == 1 and len(ob) == 3 and oa | ob == {(t1, 0), (t1, 1), (t2, 0), (t2, 1)} \
                and {(t2, 0), (t2, 1)} <= ob

        drive([a, b], rebalanced, 30, "b to get both partitions of the second topic")
        e1 = produce(broker.addr, t1, [0, 1], 10, "s1")
        e2 = produce(broker.addr, t2, [0, 1], 10, "s2")
        drive([a, b], lambda: len(a.records) + len(b.records) >= 40, 30, "every record")
        assert_read_once([a, b], e1 | e2)
        assert e2 <= set(b.records) and not (e2 & set(a.records))
    finally:
        a.close()
        b.close()


@server_log_on_failure
def test_offsets_expire_only_once_group_is_empty(broker_with):
    """offsets_retention_ms: offsets of a group with members never expire;
    once the group is empty they are kept for the retention period (counted
    from when it became empty) and then deleted with the group."""
    from confluent_kafka import Consumer, TopicPartition

    retention_ms = 2500
    broker = broker_with(group={"offsets_retention_ms": retention_ms, "offsets_retention_check_interval_ms": 100})
    topic = "ret-" + uuid.uuid4().hex[:8]
    group = "g-ret-" + uuid.uuid4().hex[:8]
    simple = "g-ret-simple-" + uuid.uuid4().hex[:8]
    create_topic(broker.addr, topic, 2)
    produce(broker.addr, topic, [0, 1], 5, "ret")
    adm = admin(broker.addr)
    m = CkMember(broker.addr, group, [topic], "ret")
    try:
        drive([m], lambda: len(m.records) >= 10, 30, "every record")
        commit_sync(m)
        committed_at = time.monotonic()
        # An assign() user's commit: a group that is empty from the start.
        c = Consumer({"bootstrap.servers": broker.addr, "group.id": simple, "logger": RDKAFKA_LOG})
        try:
            assert c.commit(offsets=[TopicPartition(topic, 1, 3)], asynchronous=False)[0].error is None
        finally:
            c.close()
        simple_at = time.monotonic()
        # Stay in the group for longer than the retention period.
        drive([m], lambda: time.monotonic() - committed_at > retention_ms / 1000 + 1, 10, "")
        assert group_offsets(adm, group) == {(topic, 0): 5, (topic, 1): 5}, "offsets of an active group expired"
        wait_for(lambda: not group_offsets(adm, simple), 5, "the simple group's offsets to expire")
        assert time.monotonic() - simple_at >= retention_ms / 1000 - 0.5
        assert simple not in listed_groups(adm)
    finally:
        m.close()
    empty_at = time.monotonic()
    # Just emptied: the old commit is kept for a full period from now.
    assert group_offsets(adm, group) == {(topic, 0): 5, (topic, 1): 5}
    wait_for(lambda: not group_offsets(adm, group), 10, "the empty group's offsets to expire", poll=0.1)
    took = time.monotonic() - empty_at
    assert took >= retention_ms / 1000 - 0.5, f"offsets expired {took:.1f}s after the group became empty"
    wait_for(lambda: group not in listed_groups(adm), 5, "the expired group to disappear")
    # Expiry is durable too.
    broker.kill()
    broker.start()
    adm = admin(broker.addr)
    assert not group_offsets(adm, group) and group not in listed_groups(adm)


class BackgroundProducer(threading.Thread):
    """Produces numbered records round-robin over partitions until stopped;
    keeps what was acknowledged."""

    def __init__(self, addr, topic, partitions):
        super().__init__(daemon=True)
        from confluent_kafka import Producer

        self.topic, self.partitions = topic, partitions
        self.p = Producer({"bootstrap.servers": addr, "acks": "all", "enable.idempotence": True,
                           "linger.ms": 2, "logger": RDKAFKA_LOG})
        self.acked, self.errors = set(), []
        self.stop_event = threading.Event()

    def _cb(self, err, msg):
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acked.add((msg.partition(), msg.offset(), msg.key(), msg.value()))

    def run(self):
        i = 0
        while not self.stop_event.is_set():
            part = self.partitions[i % len(self.partitions)]
            self.p.produce(self.topic, key=f"bg-{i}".encode(), value=f"bg-value-{i}".encode(), partition=part,
                           on_delivery=self._cb)
            self.p.poll(0)
            i += 1
            time.sleep(0.002)
        self.p.flush(30)

    def finish(self):
        self.stop_event.set()
        self.join(timeout=60)
        assert not self.errors, self.errors[:3]
        return self.acked


def settled(adm, group, live, parts):
    """The group is Stable with exactly the live members, which own the
    partitions as evenly as possible, and each member's own view of its
    assignment is the coordinator's (no rebalance half-way through)."""
    own = {m.c.memberid(): m.assignment() for m in live}
    flat = sorted(p for a in own.values() for p in a)
    sizes = [len(a) for a in own.values()]
    if flat != sorted(parts) or max(sizes) - min(sizes) > 1:
        return False
    from confluent_kafka import ConsumerGroupState

    d = describe_group(adm, group)
    described = {m.member_id: sorted(tp.partition for tp in m.assignment.topic_partitions) for m in d.members}
    return d.state == ConsumerGroupState.STABLE and described == own


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
@server_log_on_failure
def test_churn_reads_every_record_once(broker, strategy):
    """Members come and go while records keep arriving. Each member commits
    what it read when it gives partitions up (on_revoke, also on close), so
    the next owner starts exactly there: every acknowledged record is read
    once, across a dozen generations."""
    from confluent_kafka import KafkaError, KafkaException

    topic = "churn-" + uuid.uuid4().hex[:8]
    group = "g-churn-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2, 3]
    create_topic(broker.addr, topic, 4)
    adm = admin(broker.addr)
    all_members = []
    commit_errors = []

    def member(name):
        m = CkMember(broker.addr, group, [topic], name, **{"partition.assignment.strategy": strategy})

        def on_revoke(consumer, partitions):
            m.revoked_calls.append(sorted(tp.partition for tp in partitions))
            try:
                res = consumer.commit(asynchronous=False)
                commit_errors.extend((name, tp.partition, str(tp.error)) for tp in res if tp.error is not None)
            except KafkaException as e:
                if e.args[0].code() != KafkaError._NO_OFFSET:  # nothing read since the last commit
                    commit_errors.append((name, str(e)))

        m.c.subscribe([topic], on_assign=m._on_assign, on_revoke=on_revoke, on_lost=m._on_lost)
        all_members.append(m)
        return m

    producer = BackgroundProducer(broker.addr, topic, parts)
    producer.start()
    try:
        live = [member("m0"), member("m1")]
        for step, action in enumerate(["join", "leave", "join", "leave", "join", "leave"]):
            # Close only in a settled group: a librdkafka consumer closed in
            # the middle of a cooperative rebalance cannot commit in its
            # revoke callback (_DESTROY), which would allow re-reads.
            drive(live, lambda: settled(adm, group, live, parts), 30, f"a settled group before step {step} ({action})")
            t_end = time.monotonic() + 0.3
            while time.monotonic() < t_end:
                for m in live:
                    m.poll()
            if action == "join":
                live.append(member(f"m{len(all_members)}"))
            else:
                live.pop(0).close()
        drive(live, lambda: settled(adm, group, live, parts), 30, "a finally settled group")
        acked = producer.finish()
        log(f"churn ({strategy}): {len(acked)} records over {len(all_members)} members")
        drive(live, lambda: sum(len(m.records) for m in all_members) >= len(acked), 30, "every acknowledged record")
        assert not commit_errors, commit_errors
        assert_read_once(all_members, acked)
    finally:
        if producer.is_alive():
            producer.stop_event.set()
            producer.join(timeout=30)
        for m in all_members:
            m.close()


CRASHY_COMMITTER = textwrap.dedent("""
    import sys
    from confluent_kafka import Consumer, TopicPartition
    addr, group, topic = sys.argv[1:4]
    c = Consumer({"bootstrap.servers": addr, "group.id": group, "client.id": "doomed",
                  "session.timeout.ms": 2000, "heartbeat.interval.ms": 300, "max.poll.interval.ms": 20000,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    seen = set()
    while seen != {0, 1}:
        m = c.poll(0.1)
        if m is not None and not m.error():
            seen.add(m.partition())
    res = c.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 20)], asynchronous=False)
    assert all(tp.error is None for tp in res), res
    print("committed", flush=True)
    while True:
        c.poll(0.1)
""")


@server_log_on_failure
def test_restart_with_dead_member_resumes_at_commit(broker):
    """The machine goes down: consumer and server are both SIGKILLed. The
    restarted server restores the group with its dead member, whose session
    must then run out so a new consumer gets every partition, starting at
    the committed offsets."""
    topic = "dead-" + uuid.uuid4().hex[:8]
    group = "g-dead-" + uuid.uuid4().hex[:8]
    create_topic(broker.addr, topic, 2)
    expected = produce(broker.addr, topic, [0, 1], 30, "d")
    proc = subprocess.Popen([sys.executable, "-c", CRASHY_COMMITTER, broker.addr, group, topic],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert line and line[0].strip() == "committed", f"consumer process did not commit: {line}, rc {proc.poll()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        broker.kill()
        broker.start()
        desc = describe_group(admin(broker.addr), group)
        assert [m.client_id for m in desc.members] == ["doomed"], "the group was not restored with its member"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = CkMember(broker.addr, group, [topic], "heir")
    try:
        t0 = time.monotonic()
        drive([m], lambda: m.assignment() == [0, 1] and {r[0] for r in m.records} == {0, 1}, 30,
              "the new member to own and read both partitions")
        log(f"dead member expired after the restart; heir reading after {time.monotonic() - t0:.1f}s")
        first = {p: min(r[1] for r in m.records if r[0] == p) for p in (0, 1)}
        assert first == {0: 10, 1: 20}, first
        drive([m], lambda: len(m.records) >= 60 - 30, 30, "the rest of both partitions")
        assert_read_once([m], {r for r in expected if r[1] >= {0: 10, 1: 20}[r[0]]})
    finally:
        m.close()


@server_log_on_failure
def test_kafka_python_static_members_and_admin(broker):
    """kafka-python static members (group_instance_id) and its admin client:
    list, describe, offsets, removing members by instance id (LeaveGroup
    v3+ batch, per-member errors), and deleting the group once empty."""
    from kafka.admin import KafkaAdminClient, MemberToRemove
    from kafka.errors import NoError, UnknownMemberIdError
    from kafka.structs import OffsetAndMetadata

    topic = "kpadm-" + uuid.uuid4().hex[:8]
    group = "g-kpadm-" + uuid.uuid4().hex[:8]
    parts = [0, 1, 2, 3]
    create_topic(broker.addr, topic, 4)
    a = KpMember(broker.addr, group, [topic], "kpa", group_instance_id="kp-a")
    b = KpMember(broker.addr, group, [topic], "kpb", group_instance_id="kp-b")
    adm = KafkaAdminClient(bootstrap_servers=broker.addr, request_timeout_ms=15000)
    try:
        drive([a, b], lambda: split_evenly([a, b], parts, 2), 30, "a 2/2 split of static members")
        first = produce(broker.addr, topic, parts, 10, "ka")
        drive([a, b], lambda: len(a.records) + len(b.records) >= len(first), 30, "every record")
        assert_read_once([a, b], first)
        a.c.commit()
        b.c.commit()

        listed = {g["group_id"]: g for g in adm.list_groups()}
        assert listed[group]["group_state"] == "Stable" and listed[group]["protocol_type"] == "consumer", listed
        desc = adm.describe_groups([group])[group]
        assert desc["group_state"] == "Stable" and desc["protocol_data"] == "range", desc
        got = {m["group_instance_id"]: sorted(p for t in m["member_assignment"]["assigned_partitions"]
                                               for p in t["partitions"]) for m in desc["members"]}
        assert got == {"kp-a": a.assignment(), "kp-b": b.assignment()}, got
        offsets = adm.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in offsets.items()} == {p: 10 for p in parts}, offsets
        # Several groups in one OffsetFetch (v8+), one of them for chosen
        # partitions, one unknown.
        from kafka import TopicPartition
        other, unknown = group + "-other", group + "-unknown"
        adm.alter_group_offsets(other, {TopicPartition(topic, 1): OffsetAndMetadata(4, "four", -1)})
        many = adm.list_group_offsets({group: [TopicPartition(topic, 2)], other: None, unknown: None})
        assert {g: {(tp.partition, om.offset) for tp, om in o.items()} for g, o in many.items()} == \
            {group: {(2, 10)}, other: {(1, 4)}, unknown: set()}, many

        # Remove kp-a by instance id (it is not polled from here on).
        res = adm.remove_group_members(group, [MemberToRemove(group_instance_id="kp-a"),
                                               MemberToRemove(group_instance_id="kp-nobody")])
        assert res == {"kp-a": NoError, "kp-nobody": UnknownMemberIdError}, res
        drive([b], lambda: b.assignment() == parts, 30, "kp-b to take every partition")
        more = produce(broker.addr, topic, parts, 5, "kb")
        since = {"kpb": len(b.records)}
        drive([b], lambda: len(b.records) - since["kpb"] >= len(more), 30, "the new records")
        assert_read_once([b], more, since=since)
        b.c.commit()

        assert adm.delete_groups([group]) == {group: "NonEmptyGroupError"}
        assert adm.remove_group_members(group, [MemberToRemove(group_instance_id="kp-b")]) == {"kp-b": NoError}
        wait_for(lambda: adm.describe_groups([group])[group]["group_state"] == "Empty", 10, "an empty group")
        offsets = adm.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in offsets.items()} == {p: 15 for p in parts}, offsets
        result = adm.delete_groups([group])
        assert result == {group: "OK"}, result
        assert group not in {g["group_id"] for g in adm.list_groups()}
        assert not adm.list_group_offsets({group: None})[group]
    finally:
        adm.close()
        a.close()
        b.close()


@server_log_on_failure
def test_regex_subscription_picks_up_new_topic(broker):
    """A pattern subscription: a topic created later that matches joins the
    group's assignment (the members see it in metadata and rejoin)."""
    prefix = "rx" + uuid.uuid4().hex[:6]
    group = "g-rx-" + uuid.uuid4().hex[:8]
    create_topic(broker.addr, f"{prefix}-a", 2)
    pattern = f"^{prefix}-.*"
    members = [CkMember(broker.addr, group, [pattern], f"rx{i}") for i in range(2)]
    try:
        def owned():
            return sorted((tp.topic, tp.partition) for m in members for tp in m.c.assignment())

        drive(members, lambda: owned() == [(f"{prefix}-a", 0), (f"{prefix}-a", 1)], 30, "the first topic's partitions")
        create_topic(broker.addr, f"{prefix}-b", 2)
        want = sorted([(f"{prefix}-a", p) for p in (0, 1)] + [(f"{prefix}-b", p) for p in (0, 1)])
        drive(members, lambda: owned() == want and all(len(m.c.assignment()) == 2 for m in members), 30,
              "the new topic's partitions in the assignment")
        expected = produce(broker.addr, f"{prefix}-b", [0, 1], 10, "rx")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(expected), 30, "the new topic's records")
        assert_read_once(members, expected)
    finally:
        for m in members:
            m.close()


@server_log_on_failure
def test_initial_rebalance_delay_forms_one_generation(broker_with):
    """initial_rebalance_delay_ms: consumers that start together form the
    group's first generation together (one assignment each, no revocation),
    instead of a rebalance per arrival."""
    delay_ms = 1500
    broker = broker_with(group={"initial_rebalance_delay_ms": delay_ms})
    topic = "delay-" + uuid.uuid4().hex[:8]
    group = "g-delay-" + uuid.uuid4().hex[:8]
    parts = list(range(6))
    create_topic(broker.addr, topic, 6)
    t0 = time.monotonic()
    members = [CkMember(broker.addr, group, [topic], f"d{i}") for i in range(3)]
    try:
        drive(members, lambda: split_evenly(members, parts, 2), 30, "a 2/2/2 split")
        took = time.monotonic() - t0
        assert took >= delay_ms / 1000 - 0.1, f"the group formed after {took:.2f}s, before the initial delay"
        drive(members, lambda: True, 0.5, "")
        for m in members:
            assert len(m.assigned_calls) == 1 and not m.revoked_calls, \
                f"{m.name}: assigned {m.assigned_calls} revoked {m.revoked_calls}"
    finally:
        for m in members:
            m.close()


def offsets_topic_records(addr):
    """Every record now in __consumer_offsets (read without committing)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": "e2e-offsets-reader", "enable.auto.commit": False,
                  "enable.partition.eof": True, "logger": RDKAFKA_LOG})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition("__consumer_offsets", 0), timeout=10)
        c.assign([TopicPartition("__consumer_offsets", 0, lo)])
        n, deadline = 0, time.monotonic() + 20
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                return n, lo, hi
            n += 1
        raise AssertionError("reading __consumer_offsets did not reach its end")
    finally:
        c.close()


@server_log_on_failure
def test_compacted_offsets_topic_replays_latest_commits(broker_with):
    """Thousands of commits on small segments: the cleaner compacts
    __consumer_offsets down to about one record per key, and a SIGKILLed
    server rebuilt from what is left has the latest commit of every group
    and partition, and no trace of a deleted group."""
    broker = broker_with(broker={"log_retention_check_interval_ms": 100}, group={"offsets_topic_segment_bytes": 4096})
    from confluent_kafka import Consumer, TopicPartition

    topic = "cmp-" + uuid.uuid4().hex[:8]
    create_topic(broker.addr, topic, 2)
    adm = admin(broker.addr)
    groups = [f"g-cmp{i}-" + uuid.uuid4().hex[:6] for i in range(3)]
    commits = 300
    clients = [Consumer({"bootstrap.servers": broker.addr, "group.id": g, "logger": RDKAFKA_LOG}) for g in groups]
    # And a live group, whose membership record is rewritten by compaction too.
    live_group = "g-cmp-live-" + uuid.uuid4().hex[:6]
    live = CkMember(broker.addr, live_group, [topic], "live")
    try:
        drive([live], lambda: live.assignment() == [0, 1], 30, "the live member's assignment")
        for i in range(1, commits + 1):
            for k, c in enumerate(clients):
                res = c.commit(offsets=[TopicPartition(topic, 0, i + k), TopicPartition(topic, 1, 2 * i + k)],
                               asynchronous=False)
                assert all(tp.error is None for tp in res), res
    finally:
        for c in clients:
            c.close()
    doomed = groups.pop()
    adm.delete_consumer_groups([doomed], request_timeout=10)[doomed].result(timeout=15)
    # Two records per commit; the delete wrote two offset tombstones and one
    # for the group.
    # One record for the live group's generation.
    written = 3 * commits * 2 + 3 + 1
    n, lo, hi = offsets_topic_records(broker.addr)
    assert (lo, hi) == (0, written), (n, lo, hi)
    # The cleaner keeps the latest record of each key (plus what the active
    # segment and the not-yet-cleaned tail hold), offsets unchanged.
    n, lo, hi = wait_for(lambda: (lambda r: r if r[0] < 100 else None)(offsets_topic_records(broker.addr)),
                         30, "__consumer_offsets to be compacted", poll=0.5,
                         diag=lambda: f"records, low, high: {offsets_topic_records(broker.addr)}")
    log(f"__consumer_offsets compacted to {n} records (offsets {lo}..{hi}) from {written}")
    assert hi == written
    want = {g: {(topic, 0): commits + k, (topic, 1): 2 * commits + k} for k, g in enumerate(groups)}
    for g in groups:
        assert group_offsets(adm, g) == want[g], g

    broker.kill()
    broker.start()
    adm = admin(broker.addr)
    for g in groups:
        assert group_offsets(adm, g) == want[g], f"{g} after the restart"
    assert not group_offsets(adm, doomed) and doomed not in listed_groups(adm)
    # The live member kept its generation through compaction and restart.
    try:
        calls = (len(live.assigned_calls), len(live.revoked_calls))
        commit_explicit(live, topic, {0: 5, 1: 6})
        assert group_offsets(adm, live_group) == {(topic, 0): 5, (topic, 1): 6}
        assert (len(live.assigned_calls), len(live.revoked_calls)) == calls and live.assignment() == [0, 1]
    finally:
        live.close()
    # A consumer of the first group resumes at its latest commit.
    m = CkMember(broker.addr, groups[0], [topic], "after-compaction")
    try:
        produce(broker.addr, topic, [0, 1], 2 * commits + 10, "cmp")
        drive([m], lambda: {r[0] for r in m.records} == {0, 1}, 30, "records of both partitions")
        first = {p: min(r[1] for r in m.records if r[0] == p) for p in (0, 1)}
        assert first == {0: commits, 1: 2 * commits}, first
    finally:
        m.close()


@server_log_on_failure
def test_commit_to_unknown_partition_is_refused(broker):
    """As in Kafka, a commit for a partition that does not exist (unknown
    topic, or an index past the topic's partitions) is refused with
    UNKNOWN_TOPIC_OR_PARTITION and stores nothing; the rest of the request
    is committed."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    topic = "unk-" + uuid.uuid4().hex[:8]
    group = "g-unk-" + uuid.uuid4().hex[:8]
    missing = "no-such-topic-" + uuid.uuid4().hex[:6]
    create_topic(broker.addr, topic, 2)
    # Per partition, by hand (OffsetCommit v2 from outside the group protocol).
    raw = RawMember(broker.addr, group)
    try:
        assert raw.commit(topic, 0, 1, generation=-1) == 0
        assert raw.commit(topic, 7, 5, generation=-1) == UNKNOWN_TOPIC_OR_PARTITION
        assert raw.commit(missing, 0, 5, generation=-1) == UNKNOWN_TOPIC_OR_PARTITION
    finally:
        raw.close()
    # librdkafka reports the failure of a mixed commit as a whole.
    c = Consumer({"bootstrap.servers": broker.addr, "group.id": group, "allow.auto.create.topics": False,
                  "logger": RDKAFKA_LOG})
    try:
        with pytest.raises(KafkaException) as err:
            c.commit(offsets=[TopicPartition(topic, 1, 2), TopicPartition(missing, 0, 5)], asynchronous=False)
        assert err.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err.value
    finally:
        c.close()
    assert group_offsets(admin(broker.addr), group) == {(topic, 0): 1, (topic, 1): 2}


@server_log_on_failure
def test_deleting_a_topic_deletes_its_committed_offsets(broker):
    """As in Kafka, deleting a topic deletes the offsets groups committed
    for it (durably); otherwise a topic recreated under the same name would
    be resumed at the old offsets and its first records skipped."""
    topic = "del-" + uuid.uuid4().hex[:8]
    group = "g-del-" + uuid.uuid4().hex[:8]
    create_topic(broker.addr, topic, 1)
    produce(broker.addr, topic, [0], 10, "old")
    m = CkMember(broker.addr, group, [topic], "old")
    try:
        drive([m], lambda: len(m.records) >= 10, 30, "the old topic's records")
        commit_sync(m)
    finally:
        m.close()
    adm = admin(broker.addr)
    adm.delete_topics([topic], operation_timeout=10)[topic].result(timeout=15)
    wait_for(lambda: topic not in adm.list_topics(timeout=10).topics, 10, "the topic to be gone")
    assert not group_offsets(adm, group), "offsets of the deleted topic are still committed"
    # An empty group left with no offsets is gone with them, as in Kafka.
    assert group not in listed_groups(adm)
    broker.kill()
    broker.start()
    adm = admin(broker.addr)
    assert not group_offsets(adm, group), "offsets of the deleted topic came back after a restart"
    create_topic(broker.addr, topic, 1)
    fresh = produce(broker.addr, topic, [0], 10, "new")
    m = CkMember(broker.addr, group, [topic], "new")
    try:
        drive([m], lambda: len(m.records) >= 10, 15, "all ten records of the recreated topic")
        assert_read_once([m], fresh)
    finally:
        m.close()


@server_log_on_failure
def test_committed_offset_below_log_start_resets(broker_with):
    """Retention deletes the segments a group's committed offset points
    into: the group's next consumer gets OFFSET_OUT_OF_RANGE and its
    auto.offset.reset (earliest) takes it to the new log start."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import NewTopic

    broker = broker_with(broker={"log_retention_check_interval_ms": 100})
    topic = "ret-reset-" + uuid.uuid4().hex[:8]
    group = "g-ret-reset-" + uuid.uuid4().hex[:8]
    adm = admin(broker.addr)
    fs = adm.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                     config={"segment.bytes": "1024", "retention.bytes": "2048"})],
                           operation_timeout=10, request_timeout=15)
    fs[topic].result(timeout=20)
    m = CkMember(broker.addr, group, [topic], "early")
    try:
        drive([m], lambda: m.assignment() == [0], 30, "an assignment")
        commit_explicit(m, topic, {0: 5})
    finally:
        m.close()
    expected = produce(broker.addr, topic, [0], 300, "rr", flush_every=10)

    from confluent_kafka import Consumer
    probe = Consumer({"bootstrap.servers": broker.addr, "group.id": "e2e-probe", "logger": RDKAFKA_LOG})
    try:
        # Retention runs every 100 ms; wait until it passed offset 5 and has
        # settled (the same log start over half a second).
        seen = []

        def settled_start():
            seen.append(probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10))
            return len(seen) > 5 and seen[-1][0] > 5 and len(set(seen[-5:])) == 1

        wait_for(settled_start, 20, "retention to pass offset 5 and settle", poll=0.1, diag=lambda: str(seen[-5:]))
        lo, hi = seen[-1]
    finally:
        probe.close()
    assert hi == 300 and 5 < lo < 300, (lo, hi)
    assert group_offsets(adm, group) == {(topic, 0): 5}
    late = CkMember(broker.addr, group, [topic], "late")
    try:
        drive([late], lambda: len(late.records) >= 300 - lo, 30, "the retained records")
        assert min(r[1] for r in late.records) == lo, (lo, min(r[1] for r in late.records))
        assert_read_once([late], {r for r in expected if r[1] >= lo})
    finally:
        late.close()
