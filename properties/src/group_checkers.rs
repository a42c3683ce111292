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

pub(crate) fn check(events: &[Event], durable_acks: bool, r: &mut Report) {
    // node -> generation -> partition -> member
    let mut owners: BTreeMap<usize, BTreeMap<i32, BTreeMap<i32, &str>>> = BTreeMap::new();
    // node -> partition -> (ack time, offset, sent time)
    let mut commits: BTreeMap<usize, BTreeMap<i32, Vec<(u64, i64, u64)>>> = BTreeMap::new();
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
                for (p, o) in offsets {
                    commits.entry(*node).or_default().entry(*p).or_default().push((e.at_ms, *o, *invoked_ms));
                }
            }
            EventKind::Final { node, partition, high_watermark, .. } => {
                final_hw.insert((*node, *partition), *high_watermark);
            }
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
