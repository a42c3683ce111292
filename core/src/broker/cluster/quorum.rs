//! The node's controller quorum member and its calls to the active
//! controller.
//!
//! Raft's effects are carried out here against the broker's storage, in
//! order, with the Raft log synced before any message leaves (Raft's
//! contract: a vote or an acknowledgement never goes out before what it
//! promises is durable). The metadata log is small, so syncing each append
//! at once costs little.
//!
//! Calls to the controller (register, heartbeat, AlterPartition, create and
//! delete topics) go to the Raft leader: stepped locally if that is this
//! node, sent otherwise. Each call has a deadline; a lost call fails like a
//! refused one and its purpose decides whether to retry.

use super::super::{Broker, Effect};
use super::{Call, CallPurpose, Cluster, PeerMessage, reply_target, reply_to};
use crate::Millis;
use crate::controller::{ControllerEffect, ControllerInput, ControllerReply, ControllerRequest};
use crate::raft;
use crate::storage::Storage;

impl<S: Storage> Broker<S> {
    pub(in crate::broker) fn cluster_mut(&mut self) -> &mut Cluster {
        self.cluster.as_mut().expect("cluster mode")
    }

    pub(in crate::broker) fn cluster_ref(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster mode")
    }

    /// Steps the controller and carries out its effects; replies to this
    /// node's own calls are handled once the controller is done.
    pub(in crate::broker) fn controller_step(&mut self, now: Millis, input: ControllerInput, out: &mut Vec<Effect>) {
        let mut effects = Vec::new();
        self.cluster_mut().controller.step(now, input, &mut effects);
        let me = self.cluster_mut().me;
        let mut local_replies = Vec::new();
        for effect in effects {
            if self.failed.is_some() {
                return;
            }
            match effect {
                ControllerEffect::Raft(e) => self.raft_effect(e, out),
                ControllerEffect::Fatal { reason } => self.fail(format!("controller: {reason}"), out),
                ControllerEffect::Reply { to, reply } => {
                    let (node, call) = reply_target(to);
                    if node == me {
                        local_replies.push((call, reply));
                    } else {
                        out.push(Effect::Send { to: node, message: PeerMessage::ControllerReply { call, reply } });
                    }
                }
            }
        }
        self.metadata_changed(now, out);
        for (call, reply) in local_replies {
            self.call_answered(now, call, Some(reply), out);
        }
    }

    fn raft_effect(&mut self, effect: raft::Effect, out: &mut Vec<Effect>) {
        let Broker { cluster, storage, .. } = self;
        let c = cluster.as_mut().expect("cluster mode");
        let result = match effect {
            raft::Effect::PersistState(hs) => c.raft_store.persist_state(storage, hs),
            // Synced at once: an AppendEntries acknowledgement or a leader's
            // own count may follow in the same step.
            raft::Effect::Append(entries) => c.raft_store.append(storage, &entries).and_then(|()| c.raft_store.sync(storage)),
            raft::Effect::Truncate(index) => c.raft_store.truncate(storage, index),
            // Durable at return, like a truncation.
            raft::Effect::SaveSnapshot { index, term, data } => c.raft_store.save_snapshot(storage, index, term, &data),
            raft::Effect::Send(env) => {
                out.push(Effect::Send { to: env.to as i32, message: PeerMessage::Raft(env) });
                Ok(())
            }
            raft::Effect::Timer { at } => {
                out.push(Effect::Timer { at });
                Ok(())
            }
            // Consumed by the controller machine.
            raft::Effect::Apply(_)
            | raft::Effect::RestoreSnapshot { .. }
            | raft::Effect::NotLeader { .. }
            | raft::Effect::Proposed { .. } => Ok(()),
        };
        if let Err(e) = result {
            self.fail(format!("metadata log: {e}"), out);
        }
    }

    /// Sends `request` to the active controller on behalf of `purpose`.
    pub(in crate::broker) fn call_controller(&mut self, now: Millis, purpose: CallPurpose, request: ControllerRequest, out: &mut Vec<Effect>) {
        let c = self.cluster_mut();
        let call = c.next_call;
        c.next_call = (c.next_call + 1) & ((1 << 40) - 1);
        let deadline = now + c.config.request_timeout_ms;
        c.calls.insert(call, Call { purpose, deadline });
        let me = c.me;
        match c.controller.raft().leader() {
            Some(leader) if leader == me as u64 => {
                self.controller_step(now, ControllerInput::Request { from: reply_to(me, call), request }, out)
            }
            Some(leader) => out.push(Effect::Send { to: leader as i32, message: PeerMessage::ControllerRequest { call, request } }),
            // No controller known (an election is on): fail now, retry later.
            None => self.call_answered(now, call, None, out),
        }
    }

    /// A call's answer (`None`: lost, timed out or no controller).
    pub(in crate::broker) fn call_answered(&mut self, now: Millis, call: u64, reply: Option<ControllerReply>, out: &mut Vec<Effect>) {
        let Some(Call { purpose, .. }) = self.cluster_mut().calls.remove(&call) else { return };
        match purpose {
            CallPurpose::Register => {
                if let Some(ControllerReply::Registered { epoch }) = reply {
                    let c = self.cluster_mut();
                    c.broker_epoch = Some(epoch);
                    // Heartbeat soon: the controller unfences a broker that
                    // says it caught up.
                    c.next_heartbeat_at = now;
                    self.metadata_changed(now, out);
                }
            }
            CallPurpose::Heartbeat => {
                if let Some(ControllerReply::StaleEpoch) = reply {
                    let c = self.cluster_mut();
                    c.broker_epoch = None;
                    c.next_heartbeat_at = now;
                }
            }
            CallPurpose::AlterPartition { topic, partition, leader_epoch } => {
                if !matches!(reply, Some(ControllerReply::IsrChanged)) {
                    self.isr_change_refused(now, &topic, partition, leader_epoch, out);
                }
            }
            CallPurpose::Admin { id, index } => self.admin_answered(now, id, index, reply, out),
            CallPurpose::AutoCreate => {}
        }
    }

    /// The periodic part of being a cluster member: register or heartbeat,
    /// give up on calls whose answer is overdue.
    pub(in crate::broker) fn quorum_tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let overdue: Vec<u64> = self.cluster_mut().calls.iter().filter(|(_, c)| c.deadline <= now).map(|(id, _)| *id).collect();
        for call in overdue {
            self.call_answered(now, call, None, out);
        }
        let c = self.cluster_mut();
        if now < c.next_heartbeat_at {
            return;
        }
        c.next_heartbeat_at = now + c.config.broker_heartbeat_interval_ms;
        let registering = c.calls.values().any(|call| matches!(call.purpose, CallPurpose::Register));
        let request = match c.broker_epoch {
            Some(epoch) => ControllerRequest::Heartbeat { broker: c.me, epoch, caught_up: c.caught_up },
            None if !registering => ControllerRequest::Register {
                broker: c.me,
                host: self.config.advertised_host.clone(),
                port: self.config.advertised_port,
            },
            None => return,
        };
        let purpose = if matches!(request, ControllerRequest::Register { .. }) { CallPurpose::Register } else { CallPurpose::Heartbeat };
        self.call_controller(now, purpose, request, out);
    }

    /// A message from another node.
    pub(in crate::broker) fn peer_message(&mut self, now: Millis, from: i32, message: PeerMessage, out: &mut Vec<Effect>) {
        match message {
            PeerMessage::Raft(env) => {
                if env.from == from as u64 {
                    self.controller_step(now, ControllerInput::Raft(env), out);
                }
            }
            PeerMessage::ControllerRequest { call, request } => {
                self.controller_step(now, ControllerInput::Request { from: reply_to(from, call), request }, out)
            }
            PeerMessage::ControllerReply { call, reply } => self.call_answered(now, call, Some(reply), out),
            PeerMessage::Fetch(fetch) => self.serve_replica_fetch(now, from, fetch, true, None, out),
            PeerMessage::FetchReply(reply) => self.replica_fetched(now, from, reply, out),
        }
    }
}
