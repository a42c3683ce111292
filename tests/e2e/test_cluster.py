"""End-to-end tests of the replicated cluster: `millrace dev-cluster --nodes 3`
(three `millrace serve` processes, supervised) against real Kafka clients.

Every test starts its own dev-cluster on free ports in a temporary directory
and SIGKILLs nodes by the pid files the supervisor writes; the supervisor
restarts them (unless a test starts it with a huge --restart-delay-ms).
Nothing sleeps to pass: waits poll a condition until a deadline and fail
with what they saw. On a failure the tail of every node's server.log is
printed with the test's output.

Tests: (1) SIGKILL a partition leader while an idempotent acks=all producer
streams 20k records: every acknowledged record is stored once, in order, and
the node rejoins the ISR; (2) failover time from SIGKILL to the next
acknowledged acks=all write (printed); (3) a group resumes at its commit
after its coordinator is killed; (4) kafka-python producer and consumer;
(5) INVALID_REPLICATION_FACTOR, NOT_ENOUGH_REPLICAS, and no acknowledgement
without a quorum of replicas; (6) a leader answers acks=all writes taken
while a dead follower was still in the ISR as soon as the ISR drops it.

Run from the repository root (debug binary by default):
    cargo build -p millrace-net
    python3 -m pytest -q tests/e2e/test_cluster.py
Override the binary with MILLRACE_BIN.
"""

import contextlib
import functools
import logging
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter

import pytest

from test_groups import CkMember, admin, assert_read_once, commit_sync, describe_group, drive, split_evenly, wait_for

# kafka-python 3.x emits importlib DeprecationWarnings by the hundred.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO_ROOT, "target"))
MILLRACE_BIN = os.environ.get("MILLRACE_BIN", os.path.join(TARGET_DIR, "debug", "millrace"))

RDKAFKA_LOG = logging.getLogger("rdkafka")

# Groups form at once and short sessions are allowed (as in test_groups).
GROUP_CONFIG_TOML = "[broker.group]\ninitial_rebalance_delay_ms = 0\nmin_session_timeout_ms = 1000\n"

# A restart delay no test outlives: the supervisor leaves killed nodes dead.
NO_RESTART_MS = 3_600_000

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log(msg):
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# The cluster under test
# ---------------------------------------------------------------------------


def _bindable(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_base_port(nodes):
    """A base port P with P..P+n-1 (Kafka), P+100..P+100+n-1 (peers) and
    P+200..P+200+n-1 (batch services) free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        if all(_bindable(base + off + i) for off in (0, 100, 200) for i in range(nodes)):
            return base
    raise AssertionError("no free port range for a dev-cluster")


def port_accepts(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def raw_metadata(port, topics):
    """One node's own view: a Metadata v1 request sent to exactly that node
    (a client library asks whichever broker it likes). Returns (the broker
    ids it lists -- itself always, others only if unfenced --,
    {topic: {partition: (leader, replicas, sorted isr)}} for topics without
    an error)."""
    body = struct.pack(">hhih", 3, 1, 1, 3) + b"e2e" + struct.pack(">i", len(topics))
    for t in topics:
        body += struct.pack(">h", len(t.encode())) + t.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        s.sendall(struct.pack(">i", len(body)) + body)
        resp = _recv_exact(s, struct.unpack(">i", _recv_exact(s, 4))[0])
    pos = 4  # correlation id

    def i16():
        nonlocal pos
        pos += 2
        return struct.unpack_from(">h", resp, pos - 2)[0]

    def i32():
        nonlocal pos
        pos += 4
        return struct.unpack_from(">i", resp, pos - 4)[0]

    def string():
        nonlocal pos
        n = i16()
        pos += max(n, 0)
        return None if n < 0 else resp[pos - n:pos].decode()

    brokers = set()
    for _ in range(i32()):  # id, host, port, rack
        brokers.add(i32())
        string(), i32(), string()
    i32()  # controller id
    out = {}
    for _ in range(i32()):
        err, name = i16(), string()
        pos += 1  # is_internal
        parts = {}
        for _ in range(i32()):
            i16()  # partition error
            p, leader = i32(), i32()
            replicas = [i32() for _ in range(i32())]
            isr = sorted(i32() for _ in range(i32()))
            parts[p] = (leader, replicas, isr)
        if err == 0:
            out[name] = parts
    return brokers, out


def node_metadata(port, topic):
    """{partition: (leader, replicas, sorted isr)} of one topic as one node
    sees it; {} if it does not know the topic."""
    return raw_metadata(port, [topic])[1].get(topic, {})


def node_latest_offset(port, topic, partition):
    """(error code, offset) of a ListOffsets v1 request for the latest offset
    (the high watermark), sent to exactly that node."""
    t = topic.encode()
    body = struct.pack(">hhih", 2, 1, 1, 3) + b"e2e" + struct.pack(">iih", -1, 1, len(t)) + t
    body += struct.pack(">iiq", 1, partition, -1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        s.sendall(struct.pack(">i", len(body)) + body)
        resp = _recv_exact(s, struct.unpack(">i", _recv_exact(s, 4))[0])
    pos = 4 + 4  # correlation id, topic count
    pos += 2 + struct.unpack_from(">h", resp, pos)[0] + 4  # topic name, partition count
    _p, err, _ts, offset = struct.unpack_from(">ihqq", resp, pos)
    return err, offset


def pid_alive(pid):
    """True if pid is a live (not zombie) millrace process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return state != "Z" and b"millrace" in cmd


def _term_with_parent():
    """In the child before exec: SIGTERM when the test process dies (even by
    a crash in a client library), so no dev-cluster outlives its test run."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class DevCluster:
    """`millrace dev-cluster --nodes N` in a temporary directory."""

    def __init__(self, nodes=3, restart_delay_ms=1000, config_toml=None):
        self.nodes = nodes
        self.restart_delay_ms = restart_delay_ms
        self.dir = tempfile.mkdtemp(prefix="millrace-cluster-")
        self.base = free_base_port(nodes)
        self.ports = {i: self.base + i - 1 for i in range(1, nodes + 1)}
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.ports.values())
        self.serve_args = []
        if config_toml is not None:
            path = os.path.join(self.dir, "millrace.toml")
            with open(path, "w") as f:
                f.write(config_toml)
            self.serve_args = ["--", "--config", path]
        self.out_path = os.path.join(self.dir, "dev-cluster.out")
        self.proc = None
        self._admin = None

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout=30.0):
        if not os.path.exists(MILLRACE_BIN):
            pytest.fail(f"millrace binary not found at {MILLRACE_BIN}; run `cargo build -p millrace-net` "
                        f"or set MILLRACE_BIN")
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [MILLRACE_BIN, "dev-cluster", "--nodes", str(self.nodes), "--base-port", str(self.base),
                 "--data-dir", self.dir, "--restart-delay-ms", str(self.restart_delay_ms), *self.serve_args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={**os.environ, "MILLRACE_LOG": os.environ.get("MILLRACE_LOG", "info")},
                preexec_fn=_term_with_parent,
            )
        wait_for(lambda: self.proc.poll() is not None or all(port_accepts(p) for p in self.ports.values()),
                 timeout, f"every node of the dev-cluster on {self.bootstrap} to listen", diag=self.tails)
        assert self.proc.poll() is None, f"dev-cluster exited with {self.proc.returncode}\n{self.tails()}"
        # Every node lists every broker: each one registered and unfenced.
        wait_for(lambda: all(raw_metadata(p, [])[0] == set(self.ports) for p in self.ports.values()), timeout,
                 f"every node to list {self.nodes} live brokers",
                 diag=lambda: f"{({n: raw_metadata(p, [])[0] for n, p in self.ports.items()})}\n{self.tails()}")
        log(f"dev-cluster up: {self.bootstrap} (data {self.dir})")
        return self

    def node_pids(self):
        pids = {}
        for i in self.ports:
            try:
                with open(os.path.join(self.dir, f"node-{i}", "pid")) as f:
                    pids[i] = int(f.read().strip())
            except (OSError, ValueError):
                pass
        return pids

    def stop(self):
        """SIGTERM the supervisor (it stops every node), SIGKILL whatever is
        left after 15 s. Returns the supervisor's exit code."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log("dev-cluster ignored SIGTERM for 15 s; sending SIGKILL")
                self.proc.kill()
                rc = self.proc.wait(timeout=10)
        for node, pid in self.node_pids().items():
            if pid_alive(pid):
                log(f"node {node} (pid {pid}) outlived its supervisor; SIGKILL")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return rc

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def tails(self, lines=40):
        parts = []
        for i in self.ports:
            path = os.path.join(self.dir, f"node-{i}", "server.log")
            try:
                with open(path, "rb") as f:
                    text = ANSI.sub("", f.read().decode("utf-8", "replace")).splitlines()
            except OSError as e:
                parts.append(f"----- node {i}: no server.log ({e}) -----")
                continue
            parts.append(f"----- node {i}: last {min(lines, len(text))} lines of {path} -----")
            parts.extend(text[-lines:])
        try:
            with open(self.out_path, "rb") as f:
                parts.append(f"----- {self.out_path} -----")
                parts.extend(f.read().decode("utf-8", "replace").splitlines()[-20:])
        except OSError:
            pass
        return "\n".join(parts)

    # -- nodes -------------------------------------------------------------

    def kill(self, node):
        """SIGKILL one node by its pid file; returns the killed pid."""
        pid = self.node_pids()[node]
        assert pid_alive(pid), f"node {node} (pid {pid}) is not running"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 10, f"node {node} (pid {pid}) to die")
        return pid

    def wait_restarted(self, node, old_pid, timeout=20.0):
        """The supervisor started node again (a new pid) and it listens."""
        wait_for(lambda: self.node_pids().get(node) not in (None, old_pid)
                 and pid_alive(self.node_pids()[node]) and port_accepts(self.ports[node]),
                 timeout, f"node {node} to be restarted", diag=self.tails)

    def assert_running(self):
        assert self.proc.poll() is None, f"dev-cluster exited with {self.proc.returncode}\n{self.tails()}"

    # -- metadata ----------------------------------------------------------

    def admin(self):
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": RDKAFKA_LOG})
        return self._admin

    def metadata(self, topic=None):
        return self.admin().list_topics(topic=topic, timeout=10)

    def partitions(self, topic):
        """{partition: (leader, replicas, isr)} from a Metadata request."""
        md = self.metadata(topic)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return {}
        return {p: (pm.leader, list(pm.replicas), sorted(pm.isrs)) for p, pm in t.partitions.items()}

    def create_topic(self, name, partitions, rf=3, min_insync=2):
        from confluent_kafka.admin import NewTopic

        config = {} if min_insync is None else {"min.insync.replicas": str(min_insync)}
        futures = self.admin().create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=rf, config=config)],
            operation_timeout=15, request_timeout=20)
        futures[name].result(timeout=30)
        return self.wait_topic_ready(name, partitions, rf)

    def agreed(self, topic, nodes=None):
        """{partition: (leader, replicas, isr)} if the given nodes (default:
        all) see the topic the same way, else None."""
        views = [node_metadata(self.ports[n], topic) for n in (nodes or self.ports)]
        return views[0] if views[0] and all(v == views[0] for v in views) else None

    def wait_topic_ready(self, name, partitions, rf, timeout=20.0):
        """Every node knows every partition of a new topic, the same way:
        led, rf replicas, all in sync. Returns {partition: (leader,
        replicas, isr)}."""
        def agreed():
            views = [node_metadata(port, name) for port in self.ports.values()]
            ready = len(views[0]) == partitions and all(
                leader >= 0 and len(replicas) == rf and isr == sorted(replicas)
                for leader, replicas, isr in views[0].values())
            return views[0] if ready and all(v == views[0] for v in views) else None

        return wait_for(agreed, timeout, f"{name}: {partitions} led partitions with {rf} in-sync replicas on every node",
                        diag=lambda: str({n: node_metadata(port, name) for n, port in self.ports.items()}))


@pytest.fixture
def cluster_with():
    """A factory: cluster_with(restart_delay_ms=..., config_toml=...) starts a
    3-node dev-cluster; every cluster is stopped (SIGTERM, then SIGKILL) and
    removed afterwards."""
    started = []

    def start(**kwargs):
        c = DevCluster(**kwargs)
        started.append(c)
        return c.start()

    start.started = started
    try:
        yield start
    finally:
        for c in started:
            rc = c.stop()
            if rc not in (0, None):
                log(f"dev-cluster exited with {rc} on SIGTERM\n{c.tails()}")
            c.remove()


@pytest.fixture
def cluster(cluster_with):
    return cluster_with()


def cluster_logs_on_failure(test):
    """Prints every node's server.log tail when the test body fails."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except BaseException:
            factory = kwargs.get("cluster_with")
            clusters = list(getattr(factory, "started", []))
            if not clusters and kwargs.get("cluster") is not None:
                clusters = [kwargs["cluster"]]
            for c in clusters:
                print(c.tails(), flush=True)
            raise

    return wrapper


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


def ck_producer(bootstrap, errors, **extra):
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 20000,
        "request.timeout.ms": 20000,
        "topic.metadata.refresh.interval.ms": 1000,
        "error_cb": lambda e: errors.append(e),
        "logger": RDKAFKA_LOG,
    }
    conf.update(extra)
    return Producer(conf)


def read_partitions(bootstrap, topic, partitions, timeout=60.0):
    """Every record of the partitions from offset 0 up to the high watermark,
    with a plain assign-based consumer (no group). Returns
    {partition: [(offset, key, value)]}."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    errors = []
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "cluster-e2e-unused",  # required by the client; never joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "error_cb": lambda e: errors.append(str(e)),
        "logger": RDKAFKA_LOG,
    })
    try:
        ends = {}
        for p in partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assert lo == 0, f"{topic}-{p}: log start {lo}, expected 0"
            ends[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        out = {p: [] for p in partitions}
        eof = set()
        deadline = time.monotonic() + timeout
        while not all(p in eof and len(out[p]) >= ends[p] for p in partitions):
            assert time.monotonic() < deadline, \
                f"reading {topic} took over {timeout}s: read {{p: n}} {({p: len(v) for p, v in out.items()})}, " \
                f"high watermarks {ends}, eof {sorted(eof)}, client errors {errors[-5:]}"
            for m in c.consume(num_messages=5000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                        continue
                    raise AssertionError(f"consume error on {topic}-{m.partition()}: {m.error()}")
                eof.discard(m.partition())
                out[m.partition()].append((m.offset(), m.key(), m.value()))
        return out
    finally:
        c.close()


# ---------------------------------------------------------------------------
# 1. Acceptance: SIGKILL a leader while producing; every ack survives once
# ---------------------------------------------------------------------------


class IsrWatcher(threading.Thread):
    """Polls a topic's metadata every 100 ms; records every change of
    (leader, isr) per partition with its time."""

    def __init__(self, cluster, topic):
        super().__init__(daemon=True)
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "logger": RDKAFKA_LOG})
        self.topic = topic
        self.stop_flag = threading.Event()
        self.history = []  # (monotonic time, {p: (leader, isr)})
        self.lock = threading.Lock()

    def run(self):
        last = None
        while not self.stop_flag.is_set():
            try:
                t = self.admin.list_topics(topic=self.topic, timeout=5).topics[self.topic]
                now = {p: (pm.leader, tuple(sorted(pm.isrs))) for p, pm in sorted(t.partitions.items())}
                if now != last:
                    with self.lock:
                        self.history.append((time.monotonic(), now))
                    last = now
            except Exception:  # noqa: BLE001 - a node may be down; poll again
                pass
            self.stop_flag.wait(0.1)

    def first_time(self, since, cond):
        with self.lock:
            return next((t for t, snap in self.history if t >= since and cond(snap)), None)

    def describe(self, t0):
        with self.lock:
            return "; ".join(f"{t - t0:+.2f}s {snap}" for t, snap in self.history)


@cluster_logs_on_failure
def test_sigkill_leader_while_producing_keeps_every_ack(cluster):
    topic = "acceptance-" + uuid.uuid4().hex[:8]
    parts, total, seconds = 3, 20000, 8.0
    cluster.create_topic(topic, parts, rf=3, min_insync=2)
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    desc = cluster.admin().describe_configs([res], request_timeout=10)[res].result(timeout=15)
    assert desc["min.insync.replicas"].value == "2", f"min.insync.replicas is {desc['min.insync.replicas'].value}"

    watcher = IsrWatcher(cluster, topic)
    watcher.start()
    client_errors = []
    producer = ck_producer(cluster.bootstrap, client_errors,
                           **{"message.timeout.ms": 30000, "request.timeout.ms": 10000})
    acked = {}  # seq -> (partition, offset)
    failed = {}  # seq -> error
    ack_time = {}
    produced_at = {}

    def on_delivery(seq, err, msg):
        if err is not None:
            failed[seq] = err
        else:
            acked[seq] = (msg.partition(), msg.offset())
            ack_time[seq] = time.monotonic()

    kill_at_seq = total // 3
    victim = killed_pid = t_kill = None
    t0 = time.monotonic()
    for seq in range(total):
        if seq == kill_at_seq:
            victim = cluster.partitions(topic)[0][0]
            killed_pid = cluster.kill(victim)
            t_kill = time.monotonic()
            log(f"SIGKILLed node {victim} (pid {killed_pid}), leader of {topic}-0, after {seq} records")
        # A steady stream: record `seq` is due at t0 + seq/total * seconds.
        while time.monotonic() < t0 + seconds * seq / total:
            producer.poll(0.001)
        while True:
            try:
                producer.produce(topic, key=b"k%d" % seq, value=b"v%07d" % seq, partition=seq % parts,
                                 on_delivery=functools.partial(on_delivery, seq))
                produced_at[seq] = time.monotonic()
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    log(f"produced {total} records in {time.monotonic() - t0:.1f}s; flushing")
    left = producer.flush(60)
    t_flushed = time.monotonic()
    assert left == 0, f"{left} records neither acknowledged nor failed after flush(60)"
    assert len(acked) + len(failed) == total
    fatal = [e for e in client_errors if e.fatal()]
    assert not fatal, f"the idempotent producer failed fatally: {fatal}"

    # The supervisor restarts the victim, which rejoins every ISR.
    cluster.wait_restarted(victim, killed_pid)
    wait_for(lambda: watcher.first_time(t_kill, lambda s: all(victim in isr for _, isr in s.values())),
             max(0.5, t_kill + 15 - time.monotonic()), f"node {victim} back in every ISR of {topic} within 15 s",
             diag=lambda: watcher.describe(t_kill))
    watcher.stop_flag.set()
    t_isr = watcher.first_time(t_kill, lambda s: all(victim in isr for _, isr in s.values()))
    t_new_leader = watcher.first_time(t_kill, lambda s: s[0][0] not in (victim, -1))
    log(f"metadata after the kill: {watcher.describe(t_kill)}")

    by_error = {}
    for seq, err in failed.items():
        by_error.setdefault(err.name(), []).append(seq)
    failed_desc = {name: (len(seqs), f"partitions {sorted({s % parts for s in seqs})}, seq {min(seqs)}..{max(seqs)}")
                   for name, seqs in by_error.items()}
    log(f"{len(acked)} acknowledged, {len(failed)} failed {failed_desc}; flush took "
        f"{t_flushed - t0 - seconds:.1f}s past the produce window; new leader of p0 in metadata after "
        f"{(t_new_leader - t_kill) if t_new_leader else float('nan'):.2f}s; node {victim} back in every ISR after "
        f"{t_isr - t_kill:.2f}s")

    consumed = read_partitions(cluster.bootstrap, topic, range(parts))
    for p in range(parts):
        got = consumed[p]
        assert [o for o, _, _ in got] == list(range(len(got))), f"{topic}-{p}: offsets are not dense from 0"
        seqs = []
        for off, key, value in got:
            assert value.startswith(b"v") and key == b"k%d" % int(value[1:]), \
                f"{topic}-{p} offset {off}: key {key!r} value {value!r} was never produced"
            seqs.append(int(value[1:]))
        alien = [s for s in seqs if not (0 <= s < total and s % parts == p)]
        assert not alien, f"{topic}-{p}: records that were not produced to it: {alien[:10]}"
        dups = sorted(s for s, n in Counter(seqs).items() if n > 1)
        assert not dups, f"{topic}-{p}: records stored more than once: {dups[:10]}"
        out_of_order = next((i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]), None)
        assert out_of_order is None, \
            f"{topic}-{p}: not in produce order at offset {out_of_order}: {seqs[out_of_order - 1]} then " \
            f"{seqs[out_of_order]}"
        at = {s: off for off, s in enumerate(seqs)}
        mine = {s: off for s, (q, off) in acked.items() if q == p}
        lost = sorted(s for s in mine if s not in at)
        assert not lost, f"{topic}-{p}: {len(lost)} acknowledged records are missing, e.g. {lost[:10]}"
        moved = sorted(s for s, off in mine.items() if at[s] != off)
        assert not moved, f"{topic}-{p}: acknowledged records at other offsets than acknowledged: " \
                          f"{[(s, mine[s], at[s]) for s in moved[:5]]}"
        failed_here = [s for s in failed if s % parts == p]
        stored_failed = sum(1 for s in failed_here if s in at)
        slowest = max(ack_time[s] - produced_at[s] for s in mine)
        log(f"{topic}-{p}: {len(got)} records stored, {len(mine)} acknowledged, {len(failed_here)} failed "
            f"({stored_failed} of those stored anyway); slowest acknowledgement {slowest:.2f}s after produce")
        # Producing went on after the kill, on this partition too.
        assert any(s > kill_at_seq and ack_time[s] > t_kill for s in mine), \
            f"{topic}-{p}: nothing produced after the kill was acknowledged"
    assert len(acked) > 0.5 * total, f"only {len(acked)} of {total} records acknowledged"


# ---------------------------------------------------------------------------
# 2. Failover time: SIGKILL a leader, time to the next acks=all write
# ---------------------------------------------------------------------------


def measure_failover(cluster, topic, rounds_label):
    """SIGKILLs the leader of topic-0 while producing to it every 20 ms;
    returns (seconds from the kill to the first acknowledged record produced
    after it, seconds until the metadata names a new leader, victim, pid)."""
    client_errors = []
    producer = ck_producer(cluster.bootstrap, client_errors, **{"linger.ms": 0})
    acks = []  # (monotonic time of the report, produced at, error)

    def on_delivery(produced_at, err, msg):
        acks.append((time.monotonic(), produced_at, err))

    # Warm up: the producer knows the leader and has its producer id.
    for i in range(10):
        producer.produce(topic, value=b"warm-%d" % i, partition=0, on_delivery=functools.partial(on_delivery, 0.0))
    assert producer.flush(20) == 0 and all(e is None for _, _, e in acks), f"warm-up failed: {acks}"
    acks.clear()
    victim = cluster.partitions(topic)[0][0]
    # Metadata is watched from another thread, so the producing loop never
    # waits on it and a delivery report is timed within one poll (20 ms).
    watcher = IsrWatcher(cluster, topic)
    watcher.start()
    try:
        pid = cluster.kill(victim)
        t_kill = time.monotonic()
        deadline = t_kill + 30
        i = 0
        while time.monotonic() < deadline:
            now = time.monotonic()
            producer.produce(topic, value=b"after-%d" % i, partition=0,
                             on_delivery=functools.partial(on_delivery, now))
            i += 1
            producer.poll(0.02)
            if any(e is None and produced >= t_kill for _, produced, e in acks):
                break
        first = min((t for t, produced, e in acks if e is None and produced >= t_kill), default=None)
        producer.flush(30)
    finally:
        watcher.stop_flag.set()
    new_leader_at = watcher.first_time(t_kill, lambda snap: snap.get(0, (-1,))[0] not in (-1, victim))
    failover = None if first is None else first - t_kill
    errs = [e for _, _, e in acks if e is not None]
    log(f"{rounds_label}: killed leader node {victim}; first acks=all write after "
        f"{'never' if failover is None else f'{failover:.2f}s'}; new leader in metadata after "
        f"{'never' if new_leader_at is None else f'{new_leader_at - t_kill:.2f}s'}; {len(errs)} delivery errors "
        f"{sorted({e.name() for e in errs})}")
    assert not [e for e in client_errors if e.fatal()], f"fatal producer error: {client_errors}"
    return failover, (None if new_leader_at is None else new_leader_at - t_kill), victim, pid


@cluster_logs_on_failure
def test_failover_time_to_first_acks_all_write(cluster):
    topic = "failover-" + uuid.uuid4().hex[:8]
    cluster.create_topic(topic, 1, rf=3, min_insync=2)
    measured, in_metadata = [], []
    for rnd in (1, 2):
        failover, md_time, victim, pid = measure_failover(cluster, topic, f"failover round {rnd}")
        measured.append(failover)
        in_metadata.append(md_time)
        assert failover is not None, f"round {rnd}: no acks=all write succeeded within 30 s of killing node {victim}"
        assert failover < 10, f"round {rnd}: failover took {failover:.2f}s (limit 10 s)"
        # Let the victim come back into the ISR before the next round, so the
        # next kill again leaves two of three replicas.
        cluster.wait_restarted(victim, pid)
        wait_for(lambda: (lambda ps: ps and ps[0][2] == [1, 2, 3])(cluster.agreed(topic)), 20,
                 f"node {victim} back in the ISR of {topic}-0 on every node",
                 diag=lambda: str({n: node_metadata(p, topic) for n, p in cluster.ports.items()}))
    print(f"FAILOVER {topic}: SIGKILL of the leader to the first acknowledged acks=all write: "
          + ", ".join(f"{m:.2f}s" for m in measured) + "; to a new leader in the metadata: "
          + ", ".join("never" if m is None else f"{m:.2f}s" for m in in_metadata), flush=True)


# ---------------------------------------------------------------------------
# 3. Consumer group: the coordinator dies; a new member resumes at the commit
# ---------------------------------------------------------------------------


def produce_tagged(bootstrap, topic, partitions, per_partition, tag):
    """Produces per_partition records to each partition with acks=all;
    returns the set of acknowledged (partition, offset, key, value)."""
    errors = []
    producer = ck_producer(bootstrap, errors)
    acked, failed = set(), []

    def cb(err, msg):
        if err is not None:
            failed.append(str(err))
        else:
            acked.add((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for p in partitions:
        for i in range(per_partition):
            producer.produce(topic, key=f"{tag}-p{p}-k{i}".encode(), value=f"{tag}-v{p}-{i}".encode(), partition=p,
                             on_delivery=cb)
        producer.poll(0)
    assert producer.flush(30) == 0, "records left undelivered"
    assert not failed, f"delivery errors: {failed[:3]}"
    assert len(acked) == per_partition * len(partitions)
    return acked


def kp_group_offsets(bootstrap, group, timeout=20.0):
    """A group's committed offsets through kafka-python's admin client,
    retried while the coordinator moves: {(topic, partition): offset}."""
    from kafka.admin import KafkaAdminClient

    last = []

    def attempt():
        adm = None
        try:
            adm = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=10000)
            return {(tp.topic, tp.partition): om.offset for tp, om in adm.list_group_offsets({group: None})[group].items()}
        except Exception as e:  # noqa: BLE001 - NOT_COORDINATOR and friends while the coordinator moves
            last.append(repr(e))
            return None
        finally:
            if adm is not None:
                adm.close()

    return wait_for(attempt, timeout, f"the committed offsets of {group}", poll=0.5, diag=lambda: str(last[-3:]))


@cluster_logs_on_failure
def test_group_resumes_at_commit_after_coordinator_dies(cluster_with):
    cluster = cluster_with(config_toml=GROUP_CONFIG_TOML)
    topic = "grp-" + uuid.uuid4().hex[:8]
    group = "g-cluster-" + uuid.uuid4().hex[:8]
    parts = list(range(6))
    cluster.create_topic(topic, 6, rf=3, min_insync=2)
    adm = admin(cluster.bootstrap)

    members = [CkMember(cluster.bootstrap, group, [topic], f"c{i}") for i in range(2)]
    try:
        drive(members, lambda: split_evenly(members, parts, 3), 30, "a 3/3 split of six partitions")
        log(f"split: {[m.assignment() for m in members]}")
        committed_part = produce_tagged(cluster.bootstrap, topic, parts, 40, "one")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(committed_part), 30,
              "every phase-one record")
        assert_read_once(members, committed_part)
        for m in members:
            commit_sync(m)
        assert kp_group_offsets(cluster.bootstrap, group) == {(topic, p): 40 for p in parts}
        # Read further, but never commit this.
        uncommitted = produce_tagged(cluster.bootstrap, topic, parts, 20, "two")
        drive(members, lambda: sum(len(m.records) for m in members) >= len(committed_part) + len(uncommitted), 30,
              "every phase-two record")
    finally:
        for m in members:
            m.close()

    # Every node agrees who leads the offsets partition, and every replica
    # is in sync (holds the commits) before the coordinator dies.
    offsets_parts = wait_for(lambda: (lambda v: v if v and v[0][2] == [1, 2, 3] else None)(
        cluster.agreed("__consumer_offsets")), 15, "__consumer_offsets-0 fully in sync on every node",
        diag=lambda: str({n: node_metadata(p, "__consumer_offsets") for n, p in cluster.ports.items()}))
    coordinator, replicas, isr = offsets_parts[0]
    assert len(replicas) == 3, f"__consumer_offsets-0 has replicas {replicas}, expected 3"
    desc = describe_group(adm, group)
    assert desc.coordinator.id == coordinator, \
        f"DescribeGroups names coordinator {desc.coordinator.id}, the offsets partition's leader is {coordinator}"

    pid = cluster.kill(coordinator)
    t_kill = time.monotonic()
    log(f"SIGKILLed node {coordinator} (pid {pid}), the group coordinator")
    new = wait_for(lambda: (lambda l: l if l not in (-1, coordinator) else None)(
        cluster.partitions("__consumer_offsets").get(0, (-1,))[0]), 20, "a new leader of __consumer_offsets-0")
    log(f"new coordinator node {new} after {time.monotonic() - t_kill:.2f}s")
    cluster.wait_restarted(coordinator, pid)
    after = produce_tagged(cluster.bootstrap, topic, parts, 20, "three")
    # (Not confluent-kafka's AdminClient here: librdkafka's
    # ListConsumerGroupOffsets dereferences a null group handle when a broker
    # answers NOT_COORDINATOR -- confluentinc/librdkafka#5040 -- which a
    # stale coordinator lookup right after a failover can produce.)
    offsets = kp_group_offsets(cluster.bootstrap, group)
    assert offsets == {(topic, p): 40 for p in parts}, f"committed offsets after the failover: {offsets}"

    resumed = CkMember(cluster.bootstrap, group, [topic], "resumed")
    try:
        expected = uncommitted | after
        drive([resumed], lambda: len(resumed.records) >= len(expected), 40, "the resumed member to read past the commit")
        # Nothing at or below the commit again, nothing past it skipped.
        early = sorted(r for r in resumed.records if r[1] < 40)
        assert not early, f"the resumed member re-read committed records: {early[:5]}"
        first = {p: min(r[1] for r in resumed.records if r[0] == p) for p in parts if any(r[0] == p for r in resumed.records)}
        assert first == {p: 40 for p in parts}, f"the resumed member started at {first}, the commit was 40 everywhere"
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:  # a little longer: nothing extra arrives
            resumed.poll(0.1)
        assert_read_once([resumed], expected)
        log(f"resumed member read {len(resumed.records)} records from offset 40 on every partition")
    finally:
        resumed.close()


# ---------------------------------------------------------------------------
# 4. kafka-python against the cluster
# ---------------------------------------------------------------------------


@cluster_logs_on_failure
def test_kafka_python_producer_and_consumer(cluster):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = "kp-" + uuid.uuid4().hex[:8]
    parts = 3
    bootstrap = cluster.bootstrap.split(",")
    adm = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    try:
        adm.create_topics([NewTopic(topic, num_partitions=parts, replication_factor=3,
                                    topic_configs={"min.insync.replicas": "2"})], timeout_ms=20000)
    finally:
        adm.close()
    leaders = {p: v[0] for p, v in cluster.wait_topic_ready(topic, parts, 3).items()}
    assert len(set(leaders.values())) == 3, f"leaders are not spread over the nodes: {leaders}"

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=5,
                             request_timeout_ms=20000)
    sent = []
    try:
        futures = []
        for i in range(300):
            key, value = b"kp-k%d" % i, b"kp-value-%d-" % i + b"x" * (i % 50)
            futures.append((key, value, producer.send(topic, key=key, value=value, partition=i % parts)))
        producer.flush(timeout=30)
        for key, value, f in futures:
            md = f.get(timeout=30)
            sent.append((md.partition, md.offset, key, value))
    finally:
        producer.close(timeout=10)
    for p in range(parts):
        offsets = sorted(o for q, o, _, _ in sent if q == p)
        assert offsets == list(range(100)), f"{topic}-{p}: acknowledged offsets {offsets[:5]}..., expected 0..99"

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             auto_offset_reset="earliest", request_timeout_ms=20000, consumer_timeout_ms=1000)
    got = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(parts)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=1000).items():
                got.extend((m.partition, m.offset, m.key, m.value) for m in msgs)
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(parts)])
    finally:
        consumer.close()
    assert sorted(got) == sorted(sent), \
        f"kafka-python read {len(got)} records, {len(sent)} were acknowledged; first difference " \
        f"{sorted(set(got) ^ set(sent))[:3]}"
    assert {tp.partition: o for tp, o in ends.items()} == {p: 100 for p in range(parts)}, f"end offsets {ends}"
    log(f"kafka-python: 300 records over leaders {leaders} produced with acks=all and read back")


# ---------------------------------------------------------------------------
# 5. Errors: replication factor too large; too few in-sync replicas
# ---------------------------------------------------------------------------


@cluster_logs_on_failure
def test_replication_factor_larger_than_cluster_is_refused(cluster):
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    topic = "rf4-" + uuid.uuid4().hex[:8]
    futures = cluster.admin().create_topics([NewTopic(topic, num_partitions=1, replication_factor=4)],
                                            operation_timeout=10, request_timeout=15)
    with pytest.raises(KafkaException) as info:
        futures[topic].result(timeout=20)
    err = info.value.args[0]
    assert err.code() == KafkaError.INVALID_REPLICATION_FACTOR, f"expected INVALID_REPLICATION_FACTOR, got {err}"
    assert topic not in cluster.metadata().topics, f"{topic} exists after a refused creation"


def produce_one(bootstrap, topic, value, **extra):
    """One record, acks=all, no retries; returns (error or None, offset)."""
    errors = []
    conf = {"enable.idempotence": False, "retries": 0, "linger.ms": 0}
    conf.update(extra)
    producer = ck_producer(bootstrap, errors, **conf)
    result = []
    producer.produce(topic, value=value, partition=0,
                     on_delivery=lambda err, msg: result.append((err, msg.offset())))
    producer.flush(60)
    assert result, f"no delivery report for {value!r} (client errors {errors})"
    return result[0]


@cluster_logs_on_failure
def test_acks_all_refused_without_enough_in_sync_replicas(cluster_with):
    from confluent_kafka import KafkaError

    cluster = cluster_with(restart_delay_ms=NO_RESTART_MS)
    strict = "mis3-" + uuid.uuid4().hex[:8]
    usual = "mis2-" + uuid.uuid4().hex[:8]
    cluster.create_topic(strict, 1, rf=3, min_insync=3)
    cluster.create_topic(usual, 1, rf=3, min_insync=2)
    for topic in (strict, usual):
        err, off = produce_one(cluster.bootstrap, topic, b"before")
        assert err is None and off == 0, f"{topic}: the first acks=all write failed: {err}"

    # min.insync.replicas 3, one follower dead: once the ISR has shrunk,
    # acks=all is refused with NOT_ENOUGH_REPLICAS; acks=1 still works.
    leader = cluster.partitions(strict)[0][0]
    first_victim = next(n for n in (1, 2, 3) if n != leader)
    cluster.kill(first_victim)
    log(f"{strict}: leader {leader}; SIGKILLed follower {first_victim} (no restart)")
    # As the leader itself sees it (another node may know of the shrink first).
    wait_for(lambda: first_victim not in node_metadata(cluster.ports[leader], strict)[0][2], 15,
             f"node {first_victim} to leave the ISR of {strict}-0 on its leader",
             diag=lambda: str(node_metadata(cluster.ports[leader], strict)))
    err, _ = produce_one(cluster.bootstrap, strict, b"strict-all")
    assert err is not None and err.code() == KafkaError.NOT_ENOUGH_REPLICAS, \
        f"{strict}: acks=all with ISR {cluster.partitions(strict)[0][2]} below min.insync.replicas 3 gave {err}"
    err, off = produce_one(cluster.bootstrap, strict, b"strict-one", acks=1)
    assert err is None and off == 1, f"{strict}: acks=1 failed with {err}"

    # min.insync.replicas 2, two of three nodes dead (the controller quorum
    # with them): no acks=all write may be acknowledged.
    # The two live nodes agree on a live leader, which knows it leads, and
    # on the ISR without the dead node (the change is committed): the last
    # decision the controller can make before it loses its quorum.
    live = [n for n in (1, 2, 3) if n != first_victim]

    def settled():
        views = [node_metadata(cluster.ports[n], usual).get(0) for n in live]
        if None in views or views[0] != views[1] or views[0][0] not in live or first_victim in views[0][2]:
            return None
        return views[0][0]

    usual_leader = wait_for(settled, 15, f"the live nodes to agree on a live leader of {usual}-0",
                            diag=lambda: str({n: node_metadata(cluster.ports[n], usual) for n in live}))
    second_victim = next(n for n in live if n != usual_leader)
    cluster.kill(second_victim)
    log(f"{usual}: leader {usual_leader}; SIGKILLed node {second_victim} too (no restart)")
    bootstrap = f"127.0.0.1:{cluster.ports[usual_leader]}"
    outcomes = []
    for i in range(2):
        err, off = produce_one(bootstrap, usual, b"after-%d" % i, **{"request.timeout.ms": 4000,
                                                                       "message.timeout.ms": 6000})
        outcomes.append((err.name() if err is not None else None, off))
    log(f"{usual}: acks=all with two of three nodes dead: {outcomes}")
    acked = [o for o in outcomes if o[0] is None]
    assert not acked, f"{usual}: acks=all writes acknowledged with only node {usual_leader} alive: {outcomes}"
    allowed = {"NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "REQUEST_TIMED_OUT", "_MSG_TIMED_OUT",
               "_TIMED_OUT", "NOT_LEADER_OR_FOLLOWER", "LEADER_NOT_AVAILABLE"}
    assert {name for name, _ in outcomes} <= allowed, f"{usual}: unexpected errors {outcomes}"
    # Nothing became visible to consumers either: the leader's high
    # watermark is where it was.
    err, hw = node_latest_offset(cluster.ports[usual_leader], usual, 0)
    assert (err, hw) == (0, 1), f"{usual}-0 on node {usual_leader}: ListOffsets latest gave error {err} offset {hw}, " \
                                f"expected the high watermark 1"


# ---------------------------------------------------------------------------
# 6. A leader whose follower dies keeps acknowledging acks=all writes
# ---------------------------------------------------------------------------


@cluster_logs_on_failure
def test_leader_keeps_acking_after_a_follower_dies(cluster_with):
    """A write taken while a follower is dead but still in the ISR is
    answered once the controller drops that follower from the ISR."""
    cluster = cluster_with(restart_delay_ms=NO_RESTART_MS)
    topic = "follower-" + uuid.uuid4().hex[:8]
    cluster.create_topic(topic, 1, rf=3, min_insync=2)
    client_errors = []
    producer = ck_producer(cluster.bootstrap, client_errors, **{"linger.ms": 0})
    reports = {}  # value -> (seconds after the kill, error)
    t_kill = None

    def on_delivery(err, msg):
        reports[msg.value()] = (time.monotonic() - (t_kill or 0.0), err)

    producer.produce(topic, value=b"warm", partition=0, on_delivery=on_delivery)
    assert producer.flush(20) == 0 and reports[b"warm"][1] is None, f"warm-up failed: {reports}"
    leader = cluster.partitions(topic)[0][0]
    follower = next(n for n in (1, 2, 3) if n != leader)
    cluster.kill(follower)
    t_kill = time.monotonic()
    # Sent at once (linger 0, connected): the leader appends it while the
    # dead follower is still in its ISR, so it waits for the ISR to change.
    producer.produce(topic, value=b"during", partition=0, on_delivery=on_delivery)
    producer.poll(0)
    wait_for(lambda: follower not in node_metadata(cluster.ports[leader], topic)[0][2], 15,
             f"node {follower} to leave the ISR of {topic}-0 on its leader {leader}",
             diag=lambda: str(node_metadata(cluster.ports[leader], topic)))
    t_shrunk = time.monotonic() - t_kill
    deadline = time.monotonic() + 5
    while b"during" not in reports and time.monotonic() < deadline:
        producer.poll(0.05)
    log(f"{topic}: leader {leader}, follower {follower} killed; ISR shrank on the leader after {t_shrunk:.2f}s; "
        f"the write taken in between: {reports.get(b'during', 'no answer yet')}")
    # Regression: the ISR change arrives as metadata and raises the high
    # watermark; the waiting write must be answered then, not at the next
    # append or its timeout.
    assert b"during" in reports, (
        f"the acks=all write taken while node {follower} was still in the ISR is unanswered 5 s after the ISR "
        f"shrank ({t_shrunk:.2f}s after the kill)")
    assert reports[b"during"][1] is None, f"the write taken during the ISR change failed: {reports[b'during']}"
    assert producer.flush(10) == 0
