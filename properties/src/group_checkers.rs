//! Checkers for consumer groups (DESIGN.md §5, invariant 5, and liveness):
//!
//! - one owner: within a generation, no partition is assigned to two
//!   members (a generation number is never reused for another assignment,
//!   restarts included). A static member is its instance id: when it
//!   restarts, the new incarnation takes over its assignment within the
//!   same generation and the old member id is fenced;
//! - commits never go backwards: a commit sent after another one was
//!   acknowledged is at or past it (whoever sent either), and a member that
//!   starts joining after a commit was acknowledged resumes at or past it
//!   (no acknowledged commit is lost). Only real-time order counts: two
//!   commits in flight at once are not ordered by the history;
//! - everything is consumed: once the consumers drained, the group's
//!   committed offset of every partition is its final high watermark.
//!
//! The last two assume durable acknowledgements (flush every batch): with a
//! relaxed policy a crash may shorten the log under a committed offset, and
//! the consumer then legitimately resets and commits lower.

use std::collections::BTreeMap;

use millrace_sim::history::{Event, EventKind};

use crate::checkers::Report;

/// node -> partition -> (ack time, offset, sent time) of acknowledged commits.
type Commits = BTreeMap<usize, BTreeMap<i32, Vec<(u64, i64, u64)>>>;

pub(crate) fn check(events: &[Event], durable_acks: bool, r: &mut Report) {
    // node -> generation -> partition -> member
    let mut owners: BTreeMap<usize, BTreeMap<i32, BTreeMap<i32, &str>>> = BTreeMap::new();
    let mut commits: Commits = BTreeMap::new();
    let mut final_hw: BTreeMap<(usize, i32), i64> = BTreeMap::new();
    let mut any_group = false;
    for e in events {
        match &e.kind {
            EventKind::GroupAssigned { node, member, instance, generation, partitions, .. } => {
                any_group = true;
                let member = instance.as_ref().unwrap_or(member);
                let by_partition = owners.entry(*node).or_default().entry(*generation).or_default();
                for p in partitions {
                    match by_partition.get(p) {
                        Some(other) if *other != member.as_str() => r.add(
                            "one-owner",
                            format!("node {node} generation {generation}: p{p} assigned to {other} and to {member}"),
                        ),
                        _ => {
                            by_partition.insert(*p, member);
                        }
                    }
                }
            }
            EventKind::GroupCommitted { node, offsets, invoked_ms, .. } => {
                any_group = true;
                for (p, o) in offsets {
                    commits.entry(*node).or_default().entry(*p).or_default().push((e.at_ms, *o, *invoked_ms));
                }
            }
            EventKind::Final { node, partition, high_watermark, .. } => {
                final_hw.insert((*node, *partition), *high_watermark);
            }
            EventKind::GroupObserved { .. } | EventKind::GroupFinal { .. } | EventKind::GroupFinalFailed { .. } => any_group = true,
            _ => {}
        }
    }
    if !any_group || !durable_acks {
        return;
    }
    for (node, parts) in &commits {
        for (p, acked) in parts {
            for later in acked {
                let earlier = acked.iter().filter(|c| c.0 < later.2).max_by_key(|c| c.1);
                if let Some(earlier) = earlier
                    && later.1 < earlier.1
                {
                    r.add(
                        "commits-monotonic",
                        format!(
                            "node {node} p{p}: commit of {} sent at {} ms, after the commit of {} was acknowledged at {} ms",
                            later.1, later.2, earlier.1, earlier.0
                        ),
                    );
                }
            }
        }
    }
    for e in events {
        if let EventKind::GroupAssigned { node, member, generation, positions, join_started_ms, .. } = &e.kind {
            for (p, at) in positions {
                let before = commits.get(node).and_then(|c| c.get(p)).into_iter().flatten().filter(|(t, ..)| t < join_started_ms);
                if let Some((t, o, _)) = before.max_by_key(|(_, o, _)| *o)
                    && at < o
                {
                    r.add(
                        "commit-not-lost",
                        format!("node {node} p{p}: {member} (generation {generation}) resumed at {at}, below the commit of {o} acknowledged at {t} ms"),
                    );
                }
            }
        }
    }
    // What an observer saw must include every commit acknowledged before
    // it asked.
    for e in events {
        if let EventKind::GroupObserved { node, invoked_ms, committed } = &e.kind {
            for (p, seen) in committed {
                let before = commits.get(node).and_then(|c| c.get(p)).into_iter().flatten().filter(|(t, ..)| t < invoked_ms);
                if let Some((t, o, _)) = before.max_by_key(|(_, o, _)| *o)
                    && seen < o
                {
                    r.add(
                        "commit-not-lost",
                        format!("node {node} p{p}: an OffsetFetch sent at {invoked_ms} ms saw {seen}, below the commit of {o} acknowledged at {t} ms"),
                    );
                }
            }
        }
    }
    for e in events {
        match &e.kind {
            EventKind::GroupFinal { node, committed } => {
                for (p, o) in committed {
                    let hw = final_hw.get(&(*node, *p)).copied();
                    if hw.is_some_and(|hw| *o != hw) {
                        r.add(
                            "group-consumes-all",
                            format!("node {node} p{p}: the group committed {o} at the end, the log ends at {}", hw.unwrap_or(-1)),
                        );
                    }
                }
            }
            EventKind::GroupFinalFailed { node, error } => {
                r.add("group-consumes-all", format!("node {node}: the group's offsets could not be read at the end ({error})"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::Report;

    fn ev(at_ms: u64, kind: EventKind) -> Event {
        Event { at_ms, kind }
    }

    fn assigned(at: u64, member: &str, generation: i32, partitions: &[i32], positions: &[(i32, i64)], join_started_ms: u64) -> Event {
        ev(
            at,
            EventKind::GroupAssigned {
                node: 0,
                consumer: 0,
                member: member.into(),
                instance: None,
                generation,
                partitions: partitions.to_vec(),
                positions: positions.to_vec(),
                join_started_ms,
            },
        )
    }

    fn committed(at: u64, invoked_ms: u64, member: &str, offsets: &[(i32, i64)]) -> Event {
        ev(at, EventKind::GroupCommitted { node: 0, invoked_ms, consumer: 0, member: member.into(), generation: 1, offsets: offsets.to_vec() })
    }

    fn finals(hw: i64, committed: i64) -> Vec<Event> {
        vec![
            ev(900, EventKind::Final { node: 0, partition: 0, high_watermark: hw, records: Vec::new() }),
            ev(901, EventKind::GroupFinal { node: 0, committed: vec![(0, committed)] }),
        ]
    }

    fn violations(events: &[Event]) -> Vec<&'static str> {
        let mut r = Report::default();
        check(events, true, &mut r);
        r.violations().iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_clean_group_history_passes() {
        let mut h = vec![
            assigned(10, "a", 1, &[0], &[(0, 0)], 5),
            committed(20, 15, "a", &[(0, 5)]),
            assigned(40, "b", 2, &[0], &[(0, 5)], 30),
            committed(50, 45, "b", &[(0, 9)]),
        ];
        h.extend(finals(9, 9));
        assert_eq!(violations(&h), Vec::<&str>::new());
    }

    #[test]
    fn each_group_violation_is_caught() {
        // Two owners of p0 in one generation.
        let h = vec![assigned(10, "a", 1, &[0], &[(0, 0)], 5), assigned(11, "b", 1, &[0], &[(0, 0)], 5)];
        assert_eq!(violations(&h), vec!["one-owner"]);
        // A static member's restart within its generation is the same owner.
        let mut h2 = h.clone();
        for e in h2.iter_mut() {
            if let EventKind::GroupAssigned { instance, .. } = &mut e.kind {
                *instance = Some("i".into());
            }
        }
        assert_eq!(violations(&h2), Vec::<&str>::new());
        // A commit sent after 5 was acknowledged goes back to 3.
        let h = vec![assigned(10, "a", 1, &[0], &[(0, 0)], 5), committed(20, 15, "a", &[(0, 5)]), committed(30, 25, "a", &[(0, 3)])];
        assert_eq!(violations(&h), vec!["commits-monotonic"]);
        // ...but two commits in flight at once are not ordered.
        let h = vec![assigned(10, "a", 1, &[0], &[(0, 0)], 5), committed(20, 15, "a", &[(0, 5)]), committed(30, 18, "b", &[(0, 3)])];
        assert_eq!(violations(&h), Vec::<&str>::new());
        // A member resumes below an acknowledged commit: it was lost.
        let h = vec![committed(20, 15, "a", &[(0, 5)]), assigned(40, "b", 2, &[0], &[(0, 2)], 30)];
        assert_eq!(violations(&h), vec!["commit-not-lost"]);
        // An observer sees less than was acknowledged before it asked.
        let h = vec![
            committed(20, 15, "a", &[(0, 5)]),
            ev(40, EventKind::GroupObserved { node: 0, invoked_ms: 30, committed: vec![(0, 4)] }),
            ev(50, EventKind::GroupObserved { node: 0, invoked_ms: 18, committed: vec![(0, 4)] }),
        ];
        assert_eq!(violations(&h), vec!["commit-not-lost"]);
        // The group did not consume everything.
        assert_eq!(violations(&finals(9, 7)), vec!["group-consumes-all"]);
        let failed = vec![ev(5, EventKind::GroupAssigned {
            node: 0, consumer: 0, member: "a".into(), instance: None, generation: 1, partitions: vec![], positions: vec![], join_started_ms: 1,
        }), ev(900, EventKind::GroupFinalFailed { node: 0, error: "timeout".into() })];
        assert_eq!(violations(&failed), vec!["group-consumes-all"]);
    }
}
