//! Checkers over a simulation history (DESIGN.md §5, the single-node
//! invariants so far):
//!
//! 1. no acknowledged record is lost (under the flush-every-batch policy);
//! 2. readers agree on every offset, and offsets are dense and increasing;
//! 3. an idempotent producer's retries never duplicate a record, a refused
//!    write never appears, and nothing appears that nobody wrote;
//! 8. liveness: after the faults heal, writes succeed and the whole log
//!    can be read within a bound.
//!
//! Each violation names the partition, offset and values involved.

use std::collections::{BTreeMap, BTreeSet};

use millrace_sim::history::{Event, EventKind, OpId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.detail)
    }
}

/// At most this many violations are reported per kind (the first ones).
const MAX_PER_KIND: usize = 5;

#[derive(Default)]
pub(crate) struct Report(Vec<Violation>, BTreeMap<&'static str, usize>);

impl Report {
    #[cfg(test)]
    pub(crate) fn violations(&self) -> &[Violation] {
        &self.0
    }

    pub(crate) fn add(&mut self, invariant: &'static str, detail: String) {
        let n = self.1.entry(invariant).or_insert(0);
        *n += 1;
        if *n <= MAX_PER_KIND {
            self.0.push(Violation { invariant, detail });
        }
    }
}

/// When the history says the faults ended (its `Healed` event).
pub fn heal_time(events: &[Event]) -> Option<u64> {
    events.iter().find(|e| e.kind == EventKind::Healed).map(|e| e.at_ms)
}

/// Checks a history; `heal_at_ms` is when the faults ended. With
/// `durable_acks` false (a relaxed flush policy) a crash may take back
/// acknowledged records and records readers saw, so those two checks are
/// skipped; every other invariant still holds.
pub fn check(events: &[Event], heal_at_ms: u64, durable_acks: bool) -> Vec<Violation> {
    let mut r = Report::default();
    let mut invokes: BTreeMap<OpId, (usize, i32, &[String], u64)> = BTreeMap::new();
    let mut acked: Vec<(OpId, i64, u64)> = Vec::new();
    let mut failed: BTreeSet<OpId> = BTreeSet::new();
    // node -> partition -> offset -> value
    let mut finals: BTreeMap<usize, BTreeMap<i32, BTreeMap<i64, &str>>> = BTreeMap::new();
    let mut final_failed = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::Invoke { node, op, partition, values } => {
                invokes.insert(*op, (*node, *partition, values.as_slice(), e.at_ms));
            }
            EventKind::Ok { op, base_offset } => acked.push((*op, *base_offset, e.at_ms)),
            EventKind::Fail { op, .. } => {
                failed.insert(*op);
            }
            EventKind::Final { node, partition, records, high_watermark } => {
                let log = finals.entry(*node).or_default().entry(*partition).or_default();
                let mut expected = 0;
                for (offset, value) in records {
                    if *offset != expected {
                        r.add("dense-offsets", format!("node {node} p{partition}: offset {offset} where {expected} was expected"));
                    }
                    expected = offset + 1;
                    log.insert(*offset, value.as_str());
                }
                if expected != *high_watermark {
                    r.add("dense-offsets", format!("node {node} p{partition}: read up to {expected}, high watermark {high_watermark}"));
                }
            }
            EventKind::FinalFailed { node, partition, error } => final_failed.push((*node, *partition, error.clone())),
            _ => {}
        }
    }
    // Ops are keyed per node: an op id is unique within its node.
    let find = |node: usize, partition: i32, offset: i64| finals.get(&node).and_then(|n| n.get(&partition)).and_then(|p| p.get(&offset)).copied();

    // 1. Acknowledged records are where they were acknowledged.
    for (op, base, _) in acked.iter().filter(|_| durable_acks) {
        let Some(&(node, partition, values, _)) = invokes.get(op).filter(|_| true) else {
            r.add("history", format!("ack for unknown op {op:?}"));
            continue;
        };
        if finals.get(&node).and_then(|n| n.get(&partition)).is_none() {
            continue; // reported below as a liveness failure
        }
        for (i, v) in values.iter().enumerate() {
            let offset = base + i as i64;
            match find(node, partition, offset) {
                Some(got) if got == v => {}
                Some(got) => r.add("acked-not-lost", format!("node {node} p{partition} offset {offset}: acknowledged {v:?}, final log has {got:?}")),
                None => r.add("acked-not-lost", format!("node {node} p{partition} offset {offset}: acknowledged {v:?}, missing from the final log")),
            }
        }
    }

    // 2. Every read agrees with the final log.
    let mut last_read: BTreeMap<(usize, u32, i32), i64> = BTreeMap::new();
    for e in events.iter().filter(|_| durable_acks) {
        if let EventKind::Read { node, reader, partition, records } = &e.kind {
            for (offset, value) in records {
                if let Some(prev) = last_read.insert((*node, *reader, *partition), *offset)
                    && *offset != prev + 1 {
                        r.add("monotonic-reads", format!("node {node} reader {reader} p{partition}: read {offset} after {prev}"));
                    }
                match find(*node, *partition, *offset) {
                    Some(got) if got == value => {}
                    Some(got) => r.add("readers-agree", format!("node {node} p{partition} offset {offset}: a reader saw {value:?}, the final log has {got:?}")),
                    None if finals.get(node).and_then(|n| n.get(partition)).is_some() => {
                        r.add("readers-agree", format!("node {node} p{partition} offset {offset}: a reader saw {value:?}, the final log ends before it"))
                    }
                    None => {}
                }
            }
        }
    }

    // 3. No duplicates, no refused write, no phantom.
    let mut written: BTreeMap<(usize, &str), OpId> = BTreeMap::new();
    for (op, &(node, _, values, _)) in &invokes {
        for v in values {
            written.insert((node, v.as_str()), *op);
        }
    }
    for (node, parts) in &finals {
        let mut seen: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
        for (partition, log) in parts {
            for (offset, value) in log {
                if let Some((p0, o0)) = seen.insert(value, (*partition, *offset)) {
                    r.add("no-duplicates", format!("node {node}: {value:?} at p{p0} offset {o0} and again at p{partition} offset {offset}"));
                }
                match written.get(&(*node, value)) {
                    None => r.add("no-phantoms", format!("node {node} p{partition} offset {offset}: {value:?} was never written")),
                    Some(op) if failed.contains(op) => {
                        r.add("refused-not-written", format!("node {node} p{partition} offset {offset}: {value:?} was refused, yet stored"))
                    }
                    Some(_) => {}
                }
            }
        }
    }

    // 8. Liveness after the heal.
    for (node, partition, error) in final_failed {
        r.add("liveness", format!("node {node} p{partition}: the final read did not finish in time ({error})"));
    }
    let nodes: BTreeSet<usize> = invokes.values().map(|v| v.0).collect();
    for node in nodes {
        let ok_after_heal = acked.iter().any(|(op, _, at)| *at >= heal_at_ms && invokes.get(op).is_some_and(|i| i.0 == node));
        if !ok_after_heal {
            r.add("liveness", format!("node {node}: no write was acknowledged after the heal at {heal_at_ms} ms"));
        }
    }
    crate::group_checkers::check(events, durable_acks, &mut r);
    crate::replication_checkers::check(events, &mut r);
    r.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: u64, kind: EventKind) -> Event {
        Event { at_ms, kind }
    }

    fn base() -> Vec<Event> {
        vec![
            ev(1, EventKind::Invoke { node: 0, op: (0, 1), partition: 0, values: vec!["a".into(), "b".into()] }),
            ev(2, EventKind::Ok { op: (0, 1), base_offset: 0 }),
            ev(3, EventKind::Read { node: 0, reader: 0, partition: 0, records: vec![(0, "a".into()), (1, "b".into())] }),
            ev(9, EventKind::Final { node: 0, partition: 0, high_watermark: 2, records: vec![(0, "a".into()), (1, "b".into())] }),
        ]
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(check(&base(), 0, true), vec![]);
    }

    #[test]
    fn an_acks_1_write_a_leader_change_took_back_is_allowed_an_acks_all_one_is_not() {
        let mut h = base();
        h.insert(2, ev(4, EventKind::Invoke { node: 0, op: (1, 1), partition: 0, values: vec!["w".into()] }));
        h.insert(3, ev(5, EventKind::WeakOk { op: (1, 1), base_offset: 2 }));
        assert_eq!(check(&h, 0, true), vec![], "acks=1 promised nothing beyond its leader");
        h[3] = ev(5, EventKind::Ok { op: (1, 1), base_offset: 2 });
        let v = check(&h, 0, true);
        assert!(v.iter().any(|v| v.invariant == "acked-not-lost"), "{v:?}");
    }

    #[test]
    fn each_violation_is_caught() {
        let kinds = |events: &[Event], heal| check(events, heal, true).into_iter().map(|v| v.invariant).collect::<BTreeSet<_>>();
        // A lost acknowledged record (and the log now has a gap at the end).
        let mut lost = base();
        lost[3] = ev(9, EventKind::Final { node: 0, partition: 0, high_watermark: 1, records: vec![(0, "a".into())] });
        assert!(kinds(&lost, 0).contains("acked-not-lost"));
        // A duplicate.
        let mut dup = base();
        dup[3] = ev(9, EventKind::Final {
            node: 0,
            partition: 0,
            high_watermark: 3,
            records: vec![(0, "a".into()), (1, "b".into()), (2, "a".into())],
        });
        assert!(kinds(&dup, 0).contains("no-duplicates"));
        // A reader that saw something else.
        let mut disagree = base();
        disagree[2] = ev(3, EventKind::Read { node: 0, reader: 0, partition: 0, records: vec![(0, "x".into())] });
        assert!(kinds(&disagree, 0).contains("readers-agree"));
        // A gap in offsets.
        let mut gap = base();
        gap[3] = ev(9, EventKind::Final { node: 0, partition: 0, high_watermark: 3, records: vec![(0, "a".into()), (2, "b".into())] });
        assert!(kinds(&gap, 0).contains("dense-offsets"));
        // A refused write that was stored anyway.
        let mut refused = base();
        refused.insert(2, ev(2, EventKind::Invoke { node: 0, op: (0, 2), partition: 0, values: vec!["c".into()] }));
        refused.insert(3, ev(2, EventKind::Fail { op: (0, 2), error: "X".into() }));
        refused[5] = ev(9, EventKind::Final {
            node: 0,
            partition: 0,
            high_watermark: 3,
            records: vec![(0, "a".into()), (1, "b".into()), (2, "c".into())],
        });
        assert!(kinds(&refused, 0).contains("refused-not-written"));
        // Liveness: nothing acknowledged after the heal.
        assert!(kinds(&base(), 5).contains("liveness"));
    }
}
