//! What happens when time passes: sessions expire, rebalances time out,
//! and offsets of groups that stayed empty too long are deleted.

use super::state::{Group, GroupState};
use super::sync::remove_and_answer;
use super::{GroupCoordinator, GroupEffect};
use crate::Millis;

impl GroupCoordinator {
    pub(super) fn tick(&mut self, now: Millis, out: &mut Vec<GroupEffect>) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            self.expire_members(now, &id, out);
        }
        let interval = self.config.offsets_retention_check_interval_ms.max(1);
        match self.next_retention_check {
            None => self.next_retention_check = Some(now.saturating_add(interval)),
            Some(at) if now >= at => {
                self.next_retention_check = Some(now.saturating_add(interval));
                self.expire_offsets(now, out);
            }
            Some(_) => {}
        }
    }

    fn expire_members(&mut self, now: Millis, group_id: &str, out: &mut Vec<GroupEffect>) {
        let group = self.groups.get_mut(group_id).expect("listed");
        group.pending_members.retain(|_, deadline| *deadline > now);
        let mut expired: Vec<String> =
            group.members.values().filter(|m| !m.is_waiting() && m.session_deadline <= now).map(|m| m.id.clone()).collect();
        // A generation whose members never all sent SyncGroup in time: the
        // ones that did not are dropped (unless the assignment is being
        // written, which ends the wait either way).
        if group.state == GroupState::CompletingRebalance
            && group.assignment_write.is_none()
            && group.rebalance_deadline.is_some_and(|d| now >= d)
        {
            expired.extend(group.members.values().filter(|m| m.awaiting_sync.is_none()).map(|m| m.id.clone()));
            expired.dedup();
            if expired.is_empty() {
                // Everybody synced but the leader's assignment never came.
                if let Some(leader) = group.leader.clone() {
                    expired.push(leader);
                }
            }
        }
        for id in &expired {
            remove_and_answer(group, id, out);
        }
        if expired.is_empty() {
            self.maybe_complete_join(now, group_id, out);
        } else {
            self.members_left(now, group_id, out);
        }
    }

    /// Deletes committed offsets of groups that have been empty for the
    /// retention period (and not committed to since), and then the groups.
    fn expire_offsets(&mut self, now: Millis, out: &mut Vec<GroupEffect>) {
        let retention = self.config.offsets_retention_ms;
        let idle = |g: &Group| g.state == GroupState::Empty && g.commits_in_flight == 0;
        self.delete_offsets(
            |g, _, c| idle(g) && now.saturating_sub(c.commit_timestamp.max(g.empty_since)) >= retention,
            |g, _| idle(g) && now.saturating_sub(g.empty_since) >= retention,
            out,
        );
    }
}
