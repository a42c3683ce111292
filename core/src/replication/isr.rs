//! The partition leader's view of its followers: their log end offsets, the
//! in-sync replica set (ISR), and the high watermark it yields.
//!
//! - A follower's fetch at offset o says it holds everything below o.
//! - The high watermark is the smallest log end offset in the ISR (the
//!   leader included): what every in-sync replica holds, so what survives
//!   the loss of any of them. Consumers read below it; `acks=all` waits
//!   for it. It never goes back.
//! - A follower that has not caught up to the leader's log end for
//!   `replica.lag.time.max.ms` leaves the ISR; one that reaches the high
//!   watermark and the leader's log end at the start of its epoch rejoins
//!   it. ISR changes go through the controller
//!   (AlterPartition in Kafka), so this only proposes them.
//! - With fewer than `min.insync.replicas` in the ISR, `acks=all` writes
//!   are refused (NOT_ENOUGH_REPLICAS) rather than acknowledged with less
//!   redundancy than promised.

use std::collections::{BTreeMap, BTreeSet};

use crate::Millis;
use crate::controller::BrokerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Follower {
    log_end: i64,
    /// Last time it was caught up to the leader's log end.
    caught_up_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderPartition {
    leader: BrokerId,
    isr: BTreeSet<BrokerId>,
    /// Followers whose joining the ISR is proposed but not yet committed.
    /// The high watermark already counts them (Kafka's "maximal ISR",
    /// KIP-497): once the controller commits the expansion, every member
    /// of the ISR must already hold the high watermark.
    joining: BTreeSet<BrokerId>,
    /// One ISR change in flight at a time: a late answer to an older
    /// proposal must not undo a newer one (Kafka rejects stale
    /// AlterPartition requests by partition epoch for the same reason).
    change_in_flight: bool,
    followers: BTreeMap<BrokerId, Follower>,
    leader_log_end: i64,
    /// The leader's log end when it took the lead. A new leader's high
    /// watermark can lag what its predecessor committed (it learns the
    /// high watermark one fetch late, and a restarted node starts from
    /// its checkpoint), so a follower that only reached the high watermark
    /// may lack acknowledged records; everything below this offset is all
    /// the new leader holds and may have been acknowledged (Kafka's
    /// leader-epoch start offset rule). Chaos seed 11203: a follower
    /// rejoined at 8 while 8..15 were acknowledged, then led alone.
    epoch_start: i64,
    high_watermark: i64,
    min_insync: usize,
    lag_time_max_ms: i64,
}

/// An ISR change the leader asks the controller for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsrChange {
    Shrink(Vec<BrokerId>),
    Expand(Vec<BrokerId>),
}

impl LeaderPartition {
    /// A new leader: it starts from the ISR the controller gave it, its own
    /// log end, and the high watermark it knew as a follower.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        leader: BrokerId,
        replicas: &[BrokerId],
        isr: &[BrokerId],
        log_end: i64,
        high_watermark: i64,
        min_insync: usize,
        lag_time_max_ms: i64,
        now: Millis,
    ) -> Self {
        let followers = replicas
            .iter()
            .filter(|r| **r != leader)
            .map(|r| (*r, Follower { log_end: -1, caught_up_at: now }))
            .collect();
        Self {
            leader,
            isr: isr.iter().copied().collect(),
            joining: BTreeSet::new(),
            change_in_flight: false,
            followers,
            leader_log_end: log_end,
            epoch_start: log_end,
            high_watermark: high_watermark.min(log_end),
            min_insync,
            lag_time_max_ms,
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn isr(&self) -> Vec<BrokerId> {
        self.isr.iter().copied().collect()
    }

    /// Whether an `acks=all` write may be taken now.
    pub fn enough_replicas(&self) -> bool {
        self.isr.len() >= self.min_insync
    }

    /// The leader appended: its log ends at `log_end` now.
    pub fn appended(&mut self, log_end: i64) {
        self.leader_log_end = self.leader_log_end.max(log_end);
        self.advance();
    }

    /// A follower fetched at `offset` (it holds everything below it).
    /// Returns an ISR expansion to propose, if it caught up.
    pub fn fetched(&mut self, follower: BrokerId, offset: i64, now: Millis) -> Option<IsrChange> {
        let f = self.followers.get_mut(&follower)?;
        f.log_end = offset.min(self.leader_log_end);
        if f.log_end >= self.leader_log_end {
            f.caught_up_at = now;
        }
        let rejoin = !self.change_in_flight
            && !self.isr.contains(&follower)
            && f.log_end >= self.high_watermark
            && f.log_end >= self.epoch_start;
        if rejoin {
            self.joining.insert(follower);
            self.change_in_flight = true;
        }
        self.advance();
        rejoin.then(|| {
            let mut isr = self.isr.clone();
            isr.insert(follower);
            IsrChange::Expand(isr.into_iter().collect())
        })
    }

    /// Followers lagging past the limit leave the ISR (never the leader).
    /// A joining follower that stopped fetching stops holding the high
    /// watermark back after the same time: by then the metadata has shown
    /// any expansion that committed.
    pub fn check_lag(&mut self, now: Millis) -> Option<IsrChange> {
        let stalled: Vec<BrokerId> = self
            .joining
            .iter()
            .copied()
            .filter(|r| self.followers.get(r).is_some_and(|f| now - f.caught_up_at > self.lag_time_max_ms))
            .collect();
        if !self.change_in_flight && !stalled.is_empty() {
            for r in stalled {
                self.joining.remove(&r);
            }
            self.advance();
        }
        if self.change_in_flight {
            return None;
        }
        let lagging: Vec<BrokerId> = self
            .isr
            .iter()
            .copied()
            .filter(|r| *r != self.leader)
            .filter(|r| self.followers.get(r).is_some_and(|f| now - f.caught_up_at > self.lag_time_max_ms))
            .collect();
        if lagging.is_empty() {
            return None;
        }
        self.change_in_flight = true;
        Some(IsrChange::Shrink(self.isr.iter().copied().filter(|r| !lagging.contains(r)).collect()))
    }

    /// The controller committed a new ISR for this leader epoch.
    pub fn isr_changed(&mut self, isr: &[BrokerId]) {
        self.isr = isr.iter().copied().collect();
        // Settled either way; a follower still out is proposed again at
        // its next fetch.
        self.joining.clear();
        self.change_in_flight = false;
        self.advance();
    }

    /// The proposal was refused, or its answer was lost: propose anew
    /// later. A joining follower keeps counting for the high watermark
    /// until the metadata says otherwise: an answer lost on the way (or a
    /// refusal of a repeat whose first copy committed) does not mean the
    /// controller did not add it, and a high watermark that moved past a
    /// committed ISR member's log end would let that member, once leader,
    /// lose visible records (found by the replication suite, seed 22367).
    pub fn isr_change_refused(&mut self) {
        self.change_in_flight = false;
    }

    fn advance(&mut self) {
        let min_isr_end = self
            .isr
            .union(&self.joining)
            .map(|r| if *r == self.leader { self.leader_log_end } else { self.followers.get(r).map_or(-1, |f| f.log_end) })
            .min()
            .unwrap_or(self.leader_log_end);
        // Never backwards: a shrink may lower the minimum no further than
        // what was already exposed.
        self.high_watermark = self.high_watermark.max(min_isr_end.min(self.leader_log_end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> LeaderPartition {
        LeaderPartition::new(1, &[1, 2, 3], &[1, 2, 3], 0, 0, 2, 1_000, 0)
    }

    #[test]
    fn the_high_watermark_is_the_smallest_log_end_in_the_isr() {
        let mut l = leader();
        l.appended(10);
        assert_eq!(l.high_watermark(), 0, "followers have not fetched yet");
        l.fetched(2, 10, 5);
        assert_eq!(l.high_watermark(), 0, "3 is in the ISR and has nothing");
        l.fetched(3, 4, 5);
        assert_eq!(l.high_watermark(), 4);
        l.fetched(3, 10, 6);
        assert_eq!(l.high_watermark(), 10);
    }

    #[test]
    fn a_lagging_follower_leaves_and_rejoins_once_caught_up() {
        let mut l = leader();
        l.appended(10);
        l.fetched(2, 10, 100);
        l.fetched(3, 2, 100);
        assert_eq!(l.check_lag(500), None);
        // 3 has not been caught up since the start (time 0).
        assert_eq!(l.check_lag(1_001), Some(IsrChange::Shrink(vec![1, 2])));
        l.isr_changed(&[1, 2]);
        assert_eq!(l.high_watermark(), 10, "without 3, the ISR holds everything");
        assert!(l.enough_replicas());
        l.isr_changed(&[1]);
        assert!(!l.enough_replicas(), "min.insync.replicas 2: acks=all must be refused");
        l.isr_changed(&[1, 2]);
        assert_eq!(l.fetched(3, 9, 1_100), None, "below the high watermark: not yet in sync");
        assert_eq!(l.fetched(3, 10, 1_200), Some(IsrChange::Expand(vec![1, 2, 3])));
    }

    #[test]
    fn a_follower_rejoins_only_once_it_holds_what_the_leader_held_when_it_took_the_lead() {
        // A new leader with 15 records whose high watermark (learnt one
        // fetch late, or restored after a restart) says only 8; the other
        // replica of its ISR is gone, a third returns with 8 records.
        let mut l = LeaderPartition::new(2, &[1, 2, 3], &[2], 15, 8, 1, 1_000, 0);
        assert_eq!(l.fetched(3, 8, 10), None, "8..15 may be acknowledged: 3 lacks them");
        assert_eq!(l.fetched(3, 12, 20), None);
        assert_eq!(l.fetched(3, 15, 30), Some(IsrChange::Expand(vec![2, 3])));
    }

    #[test]
    fn the_high_watermark_never_goes_back() {
        let mut l = leader();
        l.appended(10);
        l.fetched(2, 10, 1);
        l.fetched(3, 10, 1);
        assert_eq!(l.high_watermark(), 10);
        l.appended(20);
        // A stale fetch (an old request arriving late) cannot lower it.
        l.fetched(3, 5, 2);
        assert_eq!(l.high_watermark(), 10);
    }
}
