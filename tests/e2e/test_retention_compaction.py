"""End-to-end: retention, compaction and config changes against real clients.

The server runs with a short retention check interval (from its TOML
config) so retention and the log cleaner act within seconds. Clients:
confluent-kafka (librdkafka), kafka-python and millrace's own CLI.

Run from the repository root:
  MILLRACE_BIN=target/debug/millrace python3 -m pytest -q tests/e2e/test_retention_compaction.py
"""

import subprocess
import time
import uuid

import pytest

from test_real_clients import (MILLRACE_BIN, RDKAFKA_LOG, ck_create_topic, ck_produce_all, ck_producer, log,
                               raw_fetch_batches, running_broker, server_log_on_failure)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHECK_INTERVAL_MS = 300
SERVER_CONFIG = f"""
[broker]
log_retention_check_interval_ms = {CHECK_INTERVAL_MS}
log_cleaner_step_bytes = 65536
"""


@pytest.fixture
def broker():
    with running_broker(SERVER_CONFIG) as b:
        yield b


def admin_client(addr):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": addr, "logger": RDKAFKA_LOG})


def create_with_configs(addr, name, configs):
    """CreateTopics through confluent-kafka's AdminClient, with topic configs."""
    from confluent_kafka.admin import NewTopic

    admin = admin_client(addr)
    futures = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1, config=configs)],
                                  operation_timeout=10, request_timeout=15)
    futures[name].result(timeout=20)
    return admin


def describe_topic(admin, name):
    """{key: (value, is_default)} from DescribeConfigs."""
    from confluent_kafka.admin import ConfigResource, ConfigSource

    res = ConfigResource("topic", name)
    entries = admin.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    return {k: (e.value, e.source == ConfigSource.DEFAULT_CONFIG.value) for k, e in entries.items()}


def ck_read_all(addr, topic, reset="earliest", start=0, timeout=30.0):
    """Every record of partition 0 from `start` to the end, as
    [(offset, key, value)], with confluent-kafka. Returns (records, low, high)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({
        "bootstrap.servers": addr,
        "group.id": "e2e-unused-group",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": reset,
        "logger": RDKAFKA_LOG,
    })
    try:
        c.assign([TopicPartition(topic, 0, start)])
        out = []
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"confluent read of {topic} did not reach the end: {len(out)} records"
            msgs = c.consume(num_messages=1000, timeout=0.5)
            eof = False
            for m in msgs:
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof = True
                        continue
                    raise AssertionError(f"consume error: {m.error()}")
                out.append((m.offset(), m.key(), m.value()))
            if eof:
                break
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return out, lo, hi
    finally:
        c.close()


def watermarks(addr, topic):
    """(log start, log end) of partition 0, from ListOffsets."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": addr, "group.id": "e2e-unused-group", "logger": RDKAFKA_LOG})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    finally:
        c.close()


def kp_read_all(addr, topic, start=0, reset="earliest", timeout=30.0):
    """The same with kafka-python (explicit assignment, seek to `start`)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=addr, group_id=None, enable_auto_commit=False,
                      auto_offset_reset=reset, request_timeout_ms=30000)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, start)
        end = c.end_offsets([tp])[tp]
        out = []
        deadline = time.monotonic() + timeout
        while c.position(tp) < end:
            assert time.monotonic() < deadline, \
                f"kafka-python read of {topic} stuck at {c.position(tp)} of {end} ({len(out)} records)"
            for recs in c.poll(timeout_ms=300, max_records=1000).values():
                out.extend((r.offset, r.key, r.value) for r in recs)
        return out
    finally:
        c.close()


def cli_read_all(addr, topic):
    r = subprocess.run([MILLRACE_BIN, "consume", topic, "-b", addr, "--offset", "earliest", "--exit-at-end",
                        "--print-key"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return [tuple(line.split("\t", 1)) for line in r.stdout.decode().splitlines()]


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@server_log_on_failure
def test_compacted_topic_keeps_the_latest_value_per_key_at_its_offset(broker):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    topic = "compacted-" + uuid.uuid4().hex[:8]
    admin = create_with_configs(broker.addr, topic, {
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "delete.retention.ms": "0",
        "min.cleanable.dirty.ratio": "0.01",
    })
    keys = [f"key-{k:03}".encode() for k in range(40)]
    dead = set(keys[:5])
    seq = 0
    acked = []
    producer = ck_producer(broker.addr, **{"linger.ms": 20})
    # One round of every key per batch (or a few): later rounds empty the
    # earlier batches, the last one loses only its tombstones.
    for rnd in range(15):
        records = []
        for k in keys:
            value = None if (rnd == 14 and k in dead) else f"{k.decode()}=round-{rnd}".encode() + b"." * (rnd * 7)
            records.append((seq, k, value, [], 0))
            seq += 1
        done, errors = ck_produce_all(producer, topic, records)
        assert not errors, errors[:3]
        acked.extend(done)
    last = {}
    for a in sorted(acked, key=lambda a: a["offset"]):
        last[a["key"]] = (a["offset"], a["value"])
    produced = len(acked)
    # Roll the active segment by age so every record can be compacted.
    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("segment.ms", "1", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(timeout=20)
    live = {k: v for k, v in last.items() if v[1] is not None}
    want = sorted((off, k, v) for k, (off, v) in live.items())

    def compacted():
        got, lo, hi = ck_read_all(broker.addr, topic)
        return got if got == want else None

    got = wait_for("compaction to leave one record per live key", compacted, timeout=45)
    log(f"compacted {produced} records to {len(got)}; latest value of every key at its original offset")
    # What clients had to get past: batches with no records left, and
    # batches with fewer records than offsets.
    batches = raw_fetch_batches(broker.addr, topic, 0)
    ends = [b[0] for b in batches[1:]] + [max(a["offset"] for a in acked) + 1]
    spans = [(b[0], end - b[0], b[1]) for b, end in zip(batches, ends)]
    assert any(count == 0 for _, _, count in spans), f"no empty batch in {spans[:20]}"
    assert any(0 < count < span for _, span, count in spans), f"no partly compacted batch in {spans[:20]}"
    log(f"{len(batches)} batches served, {sum(1 for *_, c in spans if c == 0)} of them empty")
    _, lo, hi = ck_read_all(broker.addr, topic)
    assert (lo, hi) == (0, max(a["offset"] for a in acked) + 1), "offsets never move: the log end stays"
    # kafka-python reads the same records at the same offsets and gets past
    # the empty batches compaction left (it would stop short of the end).
    assert kp_read_all(broker.addr, topic) == want
    # Starting in the middle of a removed range works too.
    middle = want[len(want) // 2][0] - 1
    assert kp_read_all(broker.addr, topic, start=middle) == [r for r in want if r[0] >= middle]
    assert ck_read_all(broker.addr, topic, start=middle)[0] == [r for r in want if r[0] >= middle]
    # Millrace's own consumer too.
    assert cli_read_all(broker.addr, topic) == [(k.decode(), v.decode()) for _, k, v in want]
    # A record without a key is refused.
    p = ck_producer(broker.addr, **{"enable.idempotence": False, "retries": 0})
    failures = []
    p.produce(topic, value=b"no key", on_delivery=lambda err, msg: failures.append(err))
    p.flush(20)
    assert failures and failures[0] is not None and "INVALID_RECORD" in failures[0].name(), failures


@server_log_on_failure
def test_time_and_size_retention_move_the_log_start(broker):
    topic = "retained-" + uuid.uuid4().hex[:8]
    ck_create_topic(broker.addr, topic, 1)
    admin = admin_client(broker.addr)
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("segment.bytes", "2048", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
    ])
    admin.incremental_alter_configs([res])[res].result(timeout=20)
    now_ms = int(time.time() * 1000)
    p = ck_producer(broker.addr)
    old, new = 300, 100
    for i in range(old):
        p.produce(topic, key=b"k%d" % i, value=b"old-%05d" % i + b"." * 50, partition=0, timestamp=now_ms - 3_600_000)
    p.flush(30)
    for i in range(new):
        p.produce(topic, key=b"n%d" % i, value=b"new-%05d" % i + b"." * 50, partition=0, timestamp=now_ms)
        if i % 10 == 9:
            assert p.flush(30) == 0  # small batches: several segments of new records
    end = old + new

    def moved():
        lo, _ = watermarks(broker.addr, topic)
        return lo if lo > 0 else None

    start = wait_for("time retention to delete old segments", moved)
    assert 0 < start <= old, f"new start {start}: every old-only segment goes, nothing new"
    log(f"time retention: log start moved to {start} of {end}")
    # A consumer at offset 0 is out of range; auto.offset.reset=earliest
    # resumes at the new start, with every new record.
    got, lo, hi = ck_read_all(broker.addr, topic, reset="earliest", start=0)
    assert (lo, hi) == (start, end)
    assert got[0][0] == start and [r[0] for r in got] == list(range(start, end))
    assert [v for _, _, v in got][-new:] == [b"new-%05d" % i + b"." * 50 for i in range(new)]
    kp = kp_read_all(broker.addr, topic, start=0, reset="earliest")
    assert kp == got
    # Size retention: keep about 4 KB (two segments).
    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("retention.bytes", "4096", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(timeout=20)
    start2 = wait_for("size retention", lambda: (lambda lo: lo if lo > start else None)(watermarks(broker.addr, topic)[0]))
    got, lo, hi = ck_read_all(broker.addr, topic)
    assert hi == end and got[-1][0] == end - 1 and len(got) < new
    log(f"size retention: log start moved to {start2}, {len(got)} records kept")


@server_log_on_failure
def test_alter_configs_and_describe_configs(broker):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    topic = "configs-" + uuid.uuid4().hex[:8]
    admin = create_with_configs(broker.addr, topic, {"retention.ms": "3600000"})
    d = describe_topic(admin, topic)
    assert d["retention.ms"] == ("3600000", False)
    assert d["cleanup.policy"] == ("delete", True)
    assert d["delete.retention.ms"] == ("86400000", True)
    # IncrementalAlterConfigs: SET, DELETE and APPEND to the list-valued cleanup.policy.
    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("retention.bytes", "1000000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])
    admin.incremental_alter_configs([res])[res].result(timeout=20)
    d = describe_topic(admin, topic)
    assert d["retention.bytes"] == ("1000000", False)
    assert d["retention.ms"] == ("604800000", True)
    assert d["cleanup.policy"] == ("compact,delete", False)
    # An invalid value is refused, naming the key; nothing changes.
    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("retention.ms", "forever", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as e:
        admin.incremental_alter_configs([res])[res].result(timeout=20)
    assert "retention.ms" in str(e.value) and "INVALID_CONFIG" in str(e.value), str(e.value)
    # Unknown topic.
    res = ConfigResource("topic", "no-such-topic", incremental_configs=[
        ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as e:
        admin.incremental_alter_configs([res])[res].result(timeout=20)
    assert "UNKNOWN_TOPIC_OR_PART" in str(e.value), str(e.value)
    # Legacy AlterConfigs replaces the whole set of overrides.
    res = ConfigResource("topic", topic, set_config={"delete.retention.ms": "1000"})
    admin.alter_configs([res])[res].result(timeout=20)
    d = describe_topic(admin, topic)
    assert d["delete.retention.ms"] == ("1000", False)
    assert d["retention.bytes"][1] and d["cleanup.policy"] == ("delete", True), d
    # kafka-python's admin client (IncrementalAlterConfigs when offered).
    from kafka.admin import AlterConfigOp, ConfigResource as KpResource, ConfigResourceType, KafkaAdminClient

    kp = KafkaAdminClient(bootstrap_servers=broker.addr, request_timeout_ms=15000)
    try:
        kp.alter_configs([KpResource(ConfigResourceType.TOPIC, topic,
                                     configs={"min.compaction.lag.ms": (AlterConfigOp.SET, "5000")})],
                         raise_on_unknown=False)
        described = kp.describe_configs([KpResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        log(f"kafka-python describe: {str(described)[:300]}")
    finally:
        kp.close()
    d = describe_topic(admin, topic)
    assert d["min.compaction.lag.ms"] == ("5000", False)
    assert d["delete.retention.ms"] == ("1000", False), "incremental: the other override stays"
    # The CLI.
    r = subprocess.run([MILLRACE_BIN, "topic", "alter", topic, "-b", broker.addr, "--config", "segment.ms=60000",
                        "--delete-config", "delete.retention.ms"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run([MILLRACE_BIN, "topic", "describe", topic, "-b", broker.addr], capture_output=True, timeout=30)
    out = r.stdout.decode()
    assert "config segment.ms=60000\n" in out and "config delete.retention.ms=86400000 (default)" in out, out
    # Changes are durable.
    broker.restart_after_kill()
    d = describe_topic(admin_client(broker.addr), topic)
    assert d["segment.ms"] == ("60000", False) and d["min.compaction.lag.ms"] == ("5000", False)
