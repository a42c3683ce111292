"""The README's end-to-end stream example (examples/pageviews) runs and its
own exactly-once check passes (on free ports: a fixed base port once met a
port held by another process on CI): three confluent-kafka producers, a 3-node
dev-cluster, a windowed count query, a consumer of its output."""

import os
import subprocess
import sys
from pathlib import Path

from test_cluster import free_base_port

ROOT = Path(__file__).resolve().parents[2]


def test_pageviews_example_counts_every_view_once():
    env = dict(os.environ)
    env.setdefault("MILLRACE_BIN", str(ROOT / "target" / "debug" / "millrace"))
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pageviews"), "--seconds", "4", "--rate", "150", "--base-port", str(free_base_port(3))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "OK: the counts equal the" in r.stdout, r.stdout
    produced = int(r.stdout.split("OK: the counts equal the ")[1].split()[0])
    assert produced > 100, r.stdout
