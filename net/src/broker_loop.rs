//! The task that owns the broker machine: it turns commands from
//! connections and timer expiries into inputs, and executes the effects.
//!
//! Group commit falls out of the loop's shape: it takes every command
//! already queued before answering `SyncNeeded`, so one fsync covers all
//! the produce requests that arrived while the previous one ran.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use millrace_core::broker::cluster::{FetchOutcome, ReplicaFetchReply};
use millrace_core::broker::{Broker, Effect, Input, PeerMessage, Request, RequestId, Response};
use millrace_core::storage::Storage;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::peer::{Payload, PeerTransport};

/// Cluster mode: the transport to the other nodes and what they send.
pub struct Peers {
    pub transport: PeerTransport<PeerMessage>,
    pub inbox: mpsc::Receiver<(u64, PeerMessage)>,
}

/// A replicated batch travels as its frame's payload: from the leader's
/// memory to the socket, and from the follower's receive buffer to its
/// append, without a copy through bincode on either side.
impl Payload for PeerMessage {
    fn take_payload(&mut self) -> Option<Bytes> {
        match self {
            PeerMessage::FetchReply(ReplicaFetchReply { outcome: FetchOutcome::Data { records, .. }, .. }) => {
                Some(std::mem::take(records))
            }
            _ => None,
        }
    }

    fn put_payload(&mut self, payload: Bytes) -> Result<(), Bytes> {
        match self {
            PeerMessage::FetchReply(ReplicaFetchReply { outcome: FetchOutcome::Data { records, .. }, .. }) if records.is_empty() => {
                *records = payload;
                Ok(())
            }
            _ => Err(payload),
        }
    }
}

/// Upper bound of commands taken per loop turn (bounded work per turn).
const MAX_BURST: usize = 4096;

pub enum Command {
    Request { id: RequestId, request: Request, reply: oneshot::Sender<Response> },
    Disconnected { conn: u64 },
    /// Make everything durable, then stop; answered when done.
    Shutdown { done: oneshot::Sender<()> },
}

/// Runs until shutdown (Ok) or a fatal storage failure (Err with the reason:
/// the node must stop without acknowledging anything more).
///
/// In cluster mode syncs run off the loop ([`Input::SyncStart`]): while a
/// node's fsync runs, it goes on appending, answering fetches and
/// acknowledging what earlier syncs made durable (a sync on the loop held
/// all of that up, a leader's acknowledgements behind its sync of a
/// partition it follows, say). A single node syncs on the loop.
pub async fn run<S: Storage>(
    broker: Broker<S>,
    mut commands: mpsc::Receiver<Command>,
    clock: Clock,
    peers: Option<Peers>,
) -> Result<(), String> {
    let (transport, mut inbox) = match peers {
        Some(p) => (Some(p.transport), Some(p.inbox)),
        None => (None, None),
    };
    let off_loop = transport.is_some().then(OffLoopSyncs::new);
    let mut l = Loop { broker, clock, out: Vec::new(), waiting: HashMap::new(), timers: BTreeSet::new(), transport, off_loop };
    // A first tick lets the machine arm its periodic timers (retention
    // checks) and gives state restored on open (group members' sessions,
    // offset retention) its timers, before any request arrives.
    l.step(Input::Tick);
    l.execute_and_settle();
    let mut watch = crate::cluster_watch::ClusterWatch::default();
    loop {
        if let Some(reason) = l.broker.failure() {
            return Err(reason.to_string());
        }
        watch.observe(&l.broker);
        let first = match l.timers.first().copied() {
            Some(at) => tokio::select! {
                // Polled in order: tokio's random branch order would draw from a
                // process-global seed and break replay in the simulator.
                // Timers first, so a stream of commands cannot starve them.
                biased;
                _ = tokio::time::sleep_until(l.clock.instant_at(at)) => {
                    let now = l.clock.now();
                    while l.timers.first().is_some_and(|t| *t <= now) {
                        l.timers.pop_first();
                    }
                    l.step(Input::Tick);
                    l.execute_and_settle();
                    // A timer armed for "now" (the log cleaner has more
                    // steps) is due again at once: take the commands already
                    // queued first, so background work never starves them.
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                d = recv_synced(&mut l.off_loop) => {
                    l.synced(d);
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                m = recv_peer(&mut inbox) => {
                    l.peer_turn(m, &mut inbox);
                    // Then the commands already queued: neither side starves.
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                c = commands.recv() => c,
            },
            None => tokio::select! {
                biased;
                d = recv_synced(&mut l.off_loop) => {
                    l.synced(d);
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                m = recv_peer(&mut inbox) => {
                    l.peer_turn(m, &mut inbox);
                    // Then the commands already queued: neither side starves.
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                c = commands.recv() => c,
            },
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut taken = 0;
        let mut shutdown = None;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Request { id, request, reply } => {
                    l.waiting.insert(id, reply);
                    l.step(Input::Request { id, request });
                }
                Command::Disconnected { conn } => {
                    l.waiting.retain(|id, _| id.conn != conn);
                    l.step(Input::Disconnected { conn });
                }
                Command::Shutdown { done } => shutdown = Some(done),
            }
            taken += 1;
            if taken < MAX_BURST && shutdown.is_none() {
                next = commands.try_recv().ok();
            }
        }
        let needs_sync = l.execute().is_some();
        if needs_sync && l.off_loop.is_none() && let Some(delay) = crate::buggify::slow_fsync() {
            tokio::time::sleep(delay).await;
        }
        if needs_sync {
            l.settle();
        }
        if let Some(done) = shutdown {
            l.finish().await;
            let _ = done.send(());
            return l.broker.failure().map_or(Ok(()), |r| Err(r.to_string()));
        }
    }
    l.finish().await;
    l.broker.failure().map_or(Ok(()), |r| Err(r.to_string()))
}

/// The machine and what the loop keeps for it.
struct Loop<S: Storage> {
    broker: Broker<S>,
    clock: Clock,
    out: Vec<Effect>,
    waiting: HashMap<RequestId, oneshot::Sender<Response>>,
    timers: BTreeSet<i64>,
    transport: Option<PeerTransport<PeerMessage>>,
    /// Cluster mode: the syncs running off the loop.
    off_loop: Option<OffLoopSyncs>,
}

/// Syncs running off the loop; each reports its ticket and outcome.
struct OffLoopSyncs {
    done_tx: mpsc::UnboundedSender<(u64, Result<(), String>)>,
    done: mpsc::UnboundedReceiver<(u64, Result<(), String>)>,
    in_flight: usize,
}

impl OffLoopSyncs {
    fn new() -> Self {
        let (done_tx, done) = mpsc::unbounded_channel();
        Self { done_tx, done, in_flight: 0 }
    }
}

/// The next finished off-loop sync; pending forever without them.
async fn recv_synced(off_loop: &mut Option<OffLoopSyncs>) -> (u64, Result<(), String>) {
    match off_loop {
        Some(o) => match o.done.recv().await {
            Some(d) => d,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl<S: Storage> Loop<S> {
    fn step(&mut self, input: Input) {
        self.broker.step(self.clock.now(), input, &mut self.out);
    }

    /// Carries out effects (starting the syncs of [`Effect::SyncFiles`]).
    /// Returns `Some(())` if a sync was asked for.
    fn execute(&mut self) -> Option<()> {
        let mut started = Vec::new();
        let sync = execute(&self.broker, &mut self.out, &mut self.waiting, &mut self.timers, self.transport.as_ref(), &mut started);
        for (ticket, files) in started {
            self.start_sync(ticket, files);
        }
        sync
    }

    fn execute_and_settle(&mut self) {
        if self.execute().is_some() {
            self.settle();
        }
    }

    /// Answers the machine's `SyncNeeded`: on the loop (`Sync` until the
    /// machine stops asking: finishing a sync can append more, the group
    /// coordinator persisting the next step of a rebalance), or by starting
    /// a sync off the loop.
    fn settle(&mut self) {
        const MAX_ROUNDS: usize = 16;
        let input = if self.off_loop.is_some() { Input::SyncStart } else { Input::Sync };
        for _ in 0..MAX_ROUNDS {
            self.step(input.clone());
            if self.execute().is_none() {
                return;
            }
        }
        tracing::warn!("sync requests did not settle after {MAX_ROUNDS} rounds; the next turn continues");
    }

    /// Runs the sync of `files` off the loop; its outcome comes back
    /// through [`recv_synced`].
    fn start_sync(&mut self, ticket: u64, files: Vec<String>) {
        let Some(o) = self.off_loop.as_mut() else {
            tracing::error!(ticket, "a sync to run off the loop, but this loop runs none");
            return;
        };
        let tx = o.done_tx.clone();
        o.in_flight += 1;
        let job = match self.broker.storage_mut().detach_sync(&files) {
            Ok(job) => job,
            Err(e) => {
                let _ = tx.send((ticket, Err(e.to_string())));
                return;
            }
        };
        // In the simulator: a slow disk, and the data stays unsynced (a
        // crash loses it) until the job runs.
        #[cfg(madsim)]
        {
            let delay = crate::buggify::slow_fsync();
            tokio::spawn(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                let _ = tx.send((ticket, job().map_err(|e| e.to_string())));
            });
        }
        #[cfg(not(madsim))]
        tokio::task::spawn_blocking(move || {
            let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the fsync thread panicked".to_string()),
            };
            let _ = tx.send((ticket, result));
        });
    }

    /// An off-loop sync finished.
    fn synced(&mut self, (ticket, result): (u64, Result<(), String>)) {
        if let Some(o) = self.off_loop.as_mut() {
            o.in_flight = o.in_flight.saturating_sub(1);
        }
        match result {
            Ok(()) => self.step(Input::Synced { ticket }),
            Err(reason) => self.step(Input::SyncFailed { reason }),
        }
        self.execute_and_settle();
    }

    /// Before stopping: waits for the syncs running off the loop, then
    /// makes everything durable on the loop.
    async fn finish(&mut self) {
        while self.off_loop.as_ref().is_some_and(|o| o.in_flight > 0) && self.broker.failure().is_none() {
            let d = recv_synced(&mut self.off_loop).await;
            self.synced(d);
        }
        self.off_loop = None;
        self.settle();
    }

    /// Steps the machine with a peer message and the others already queued
    /// (bounded), then syncs once if asked: replicated appends are
    /// group-committed like produce requests.
    fn peer_turn(&mut self, first: Option<(u64, PeerMessage)>, inbox: &mut Option<mpsc::Receiver<(u64, PeerMessage)>>) {
        let Some(first) = first else {
            // The transport is gone: no more peer messages.
            *inbox = None;
            return;
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some((from, message)) = next.take() {
            self.step(Input::Peer { from: from as i32, message });
            taken += 1;
            if taken < MAX_BURST {
                next = inbox.as_mut().and_then(|rx| rx.try_recv().ok());
            }
        }
        self.execute_and_settle();
    }
}

/// Carries out effects. Returns `Some(())` if a sync was asked for; the
/// syncs to start off the loop go to `started`.
fn execute<S: Storage>(
    broker: &Broker<S>,
    out: &mut Vec<Effect>,
    waiting: &mut HashMap<RequestId, oneshot::Sender<Response>>,
    timers: &mut BTreeSet<i64>,
    transport: Option<&PeerTransport<PeerMessage>>,
    started: &mut Vec<(u64, Vec<String>)>,
) -> Option<()> {
    if broker.failure().is_some() {
        // Nothing more may leave a failed machine.
        out.clear();
        waiting.clear();
        return None;
    }
    let mut sync = None;
    for effect in out.drain(..) {
        match effect {
            Effect::Reply { id, response } => {
                if let Some(reply) = waiting.remove(&id) {
                    let _ = reply.send(response);
                }
            }
            Effect::Timer { at } => {
                timers.insert(at);
            }
            Effect::SyncNeeded => sync = Some(()),
            Effect::SyncFiles { ticket, files } => started.push((ticket, files)),
            Effect::Send { to, message } => match transport {
                Some(t) => t.send(to as u64, message),
                None => tracing::warn!(to, "a message for a peer, but this node has no peers"),
            },
            Effect::Fatal { reason } => {
                tracing::error!(%reason, "fatal storage failure; stopping so no unsynced write is acknowledged");
                waiting.clear();
            }
        }
    }
    sync
}

/// The next message from a peer; pending forever without peers.
async fn recv_peer(inbox: &mut Option<mpsc::Receiver<(u64, PeerMessage)>>) -> Option<(u64, PeerMessage)> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_core::broker::cluster::ReplicaFetch;

    fn roundtrip(mut msg: PeerMessage) -> PeerMessage {
        let payload = msg.take_payload();
        let config = bincode::config::standard();
        let mut back: PeerMessage = bincode::serde::decode_from_slice(&bincode::serde::encode_to_vec(&msg, config).unwrap(), config).unwrap().0;
        if let Some(p) = payload.filter(|p| !p.is_empty()) {
            back.put_payload(p).expect("the message takes its payload back");
        }
        back
    }

    #[test]
    fn replicated_batches_travel_as_payloads_and_other_messages_take_none() {
        let data = |records: &'static [u8]| {
            PeerMessage::FetchReply(ReplicaFetchReply {
                seq: 7,
                topic: "t".into(),
                partition: 2,
                leader_epoch: 3,
                outcome: FetchOutcome::Data { high_watermark: 5, log_start: 0, records: Bytes::from_static(records) },
            })
        };
        let mut m = data(b"batches");
        assert_eq!(m.clone().take_payload().as_deref(), Some(&b"batches"[..]));
        assert_eq!(roundtrip(m.clone()), m);
        assert_eq!(roundtrip(data(b"")), data(b""));
        // A message that already holds its records, or none at all, takes no payload.
        assert!(m.put_payload(Bytes::from_static(b"x")).is_err());
        let mut fetch = PeerMessage::Fetch(ReplicaFetch {
            seq: 1,
            topic: "t".into(),
            partition: 0,
            leader_epoch: 1,
            fetch_offset: 0,
            last_fetched_epoch: -1,
        });
        assert!(fetch.take_payload().is_none());
        assert!(fetch.put_payload(Bytes::from_static(b"x")).is_err());
    }
}
