//! The inter-node transport: best-effort datagrams between the nodes of a
//! cluster, framed on TCP with bincode.
//!
//! The state machines treat every message as one that may be lost (they
//! handle loss with timeouts), so this transport never blocks a sender and
//! never retries: [`PeerTransport::send`] queues the message and returns; a
//! full queue, an unknown peer, a failed connection attempt or a failed
//! write drops messages (counted in [`PeerTransport::dropped`], logged at
//! debug). What it does guarantee: messages from one node to another that
//! arrive, arrive once and in the order they were sent.
//!
//! # Tasks
//!
//! - One outgoing task per peer, fed by a bounded queue
//!   ([`PEER_QUEUE`] messages). It connects lazily on the first message,
//!   sends everything queued in one write and one flush, and after a failure
//!   (connect, write, or the peer closing the connection) waits a backoff
//!   ([`INITIAL_BACKOFF`] doubling to [`MAX_BACKOFF`]) before the next
//!   attempt. The message a connection attempt failed on (or the batch a
//!   write failed on) is dropped; messages queued during the backoff wait in
//!   the queue.
//! - One accept task, and one reading task per accepted connection. Every
//!   reader forwards `(from, message)` into one bounded channel, the
//!   receiver [`PeerTransport::bind`] returns; when it is full a reader
//!   waits, which pushes back on that peer's connection only.
//!
//! Connections are one-way: a node writes only on the connections it opened
//! and reads only on the ones it accepted (so two nodes talking both ways
//! hold two connections).
//!
//! # Wire format
//!
//! - Handshake, first on every connection, [`HANDSHAKE_LEN`] fixed bytes:
//!   the magic `b"MLRC"`, the protocol version ([`PROTOCOL_VERSION`], u16
//!   big-endian), the sender's node id and its incarnation (u64 big-endian
//!   each; the incarnation is new each time a node starts). A wrong magic, a
//!   wrong version, or the receiver's own id closes the connection (warning).
//! - Then frames: a u32 big-endian length, then that many bytes of
//!   `bincode::serde::encode_to_vec(&msg, bincode::config::standard())`,
//!   then, for a message with a [`Payload`] (a replicated batch), the
//!   payload's raw bytes: the frame's length covers both, and what follows
//!   the encoded message is the payload. The payload goes from the sender's
//!   memory to the socket and from the receive buffer to the message
//!   without a copy through bincode (which cost a copy of every replicated
//!   byte on each side). A length over [`MAX_FRAME_BYTES`], a message that
//!   does not decode, or bytes left over that the message takes no payload
//!   for closes that connection only (warning).
//!
//! # Addresses in tests
//!
//! [`PeerTransport::bind`] takes the peers' addresses, but a test binding on
//! port 0 learns them only after binding: bind every node with an empty map,
//! then give each one the others' [`PeerTransport::local_addr`]s with
//! [`PeerTransport::set_peers`].
//!
//! # Shutdown
//!
//! [`PeerTransport::shutdown`] aborts every task, which drops every socket,
//! so the port is free again (a restarted node binds the same address). The
//! abort takes effect when the runtime next schedules the tasks;
//! [`PeerTransport::shutdown_and_wait`] also waits for it. Dropping the last
//! handle shuts down too. The receiver sees the end of its stream once the
//! listener and every accepted connection are closed: from then on the port
//! is free.
//!
//! # Sharing the port, and link events
//!
//! [`PeerTransport::bind_with`] takes [`Extras`]: a connection whose first
//! four bytes are not the magic can be handed to the caller (with the bytes
//! already read) instead of being closed — the batch service serves its
//! command-line clients on the port its workers talk on — and the caller
//! can be told when connections come and go ([`LinkEvent`]): a node that
//! was killed closes its sockets, which says more, sooner, than a missed
//! heartbeat. [`PeerTransport::bind`] uses neither.
//!
//! Determinism (the simulator replays seeds): `select!` is always `biased`,
//! peers live in a `BTreeMap`, and time is `tokio::time` only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A node of the cluster.
pub type NodeId = u64;

/// First bytes of every inter-node connection.
pub const MAGIC: [u8; 4] = *b"MLRC";
/// Bumped whenever the handshake or the framing changes (2: the
/// incarnation; 3: payloads after the encoded message).
pub const PROTOCOL_VERSION: u16 = 3;
/// Magic, version, sender's node id, sender's incarnation.
pub const HANDSHAKE_LEN: usize = 4 + 2 + 8 + 8;
/// Largest frame payload accepted (and sent: a bigger message is dropped).
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Messages queued for one peer before `send` starts dropping.
pub const PEER_QUEUE: usize = 8192;
/// Messages received but not yet taken by the node before readers wait.
pub const INCOMING_QUEUE: usize = 8192;
/// First wait after a failure; doubles on each failure in a row.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between attempts; a connection that lived this long resets
/// the backoff when it fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A connection attempt slower than this fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch not written within this fails its connection (a peer that stopped
/// reading, or a blackholed link, must not hold the queue forever).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// An accepted connection must handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A batch stops taking queued messages once it is this big.
const BATCH_BYTES: usize = 1 << 20;
/// Initial capacity of a reader's receive buffer.
const READ_BUFFER: usize = 64 * 1024;

/// A message that may carry one large byte string (a replicated batch)
/// which the transport moves without copying it: the sender takes it out
/// before encoding the message and writes it after the encoding; the
/// receiver hands the rest of the frame back as a slice of its buffer.
pub trait Payload {
    /// Takes the payload out (leaving it empty); `None` if there is none.
    fn take_payload(&mut self) -> Option<Bytes> {
        None
    }

    /// Puts a received payload back; `Err` if this message has no place for
    /// one (the frame then had bytes left over: a protocol error).
    fn put_payload(&mut self, payload: Bytes) -> Result<(), Bytes> {
        Err(payload)
    }
}

/// The handshake a node with id `from` sends first on a connection it opens.
pub fn handshake(from: NodeId, incarnation: u64) -> [u8; HANDSHAKE_LEN] {
    let mut h = [0u8; HANDSHAKE_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    h[6..14].copy_from_slice(&from.to_be_bytes());
    h[14..].copy_from_slice(&incarnation.to_be_bytes());
    h
}

/// What the transport reports about its connections, when asked to
/// ([`Extras::links`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// A connection from `peer` (that incarnation) completed its handshake.
    Up { peer: NodeId, incarnation: u64 },
    /// A connection from `peer` ended (closed, broken, or closed by us for
    /// a protocol error): what it was sending may have been lost.
    Down { peer: NodeId, incarnation: u64 },
    /// Our connection to `peer` could not be opened, or failed, or the peer
    /// closed it: messages to it were dropped, or may have been.
    Broken { peer: NodeId },
}

/// A connection that did not start with the magic, handed over with the
/// bytes read from it so far (at least four).
pub struct Foreign {
    pub stream: TcpStream,
    pub remote: SocketAddr,
    pub prefix: Vec<u8>,
}

/// Optional services of [`PeerTransport::bind_with`].
#[derive(Default)]
pub struct Extras {
    /// Where connections that do not start with the magic go (otherwise
    /// they are closed with a warning).
    pub foreign: Option<mpsc::UnboundedSender<Foreign>>,
    /// Where [`LinkEvent`]s go.
    pub links: Option<mpsc::UnboundedSender<LinkEvent>>,
}

/// The sender's id and incarnation, or what is wrong with the handshake.
fn check_handshake(me: NodeId, h: &[u8]) -> Result<(NodeId, u64), String> {
    if h[..4] != MAGIC {
        return Err(format!("bad magic {:02x?} (expected {:02x?} \"MLRC\")", &h[..4], MAGIC));
    }
    let version = u16::from_be_bytes([h[4], h[5]]);
    if version != PROTOCOL_VERSION {
        return Err(format!("protocol version {version}, this node speaks {PROTOCOL_VERSION}"));
    }
    let from = NodeId::from_be_bytes(h[6..14].try_into().expect("8 bytes"));
    if from == me {
        return Err(format!("the peer claims this node's own id {me}"));
    }
    Ok((from, u64::from_be_bytes(h[14..HANDSHAKE_LEN].try_into().expect("8 bytes"))))
}

/// A cloneable handle on one node's inter-node transport.
pub struct PeerTransport<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for PeerTransport<M> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

struct Shared<M> {
    me: NodeId,
    /// This start of the node, sent in every handshake.
    incarnation: u64,
    local_addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    links: Option<mpsc::UnboundedSender<LinkEvent>>,
    state: Mutex<State<M>>,
}

struct State<M> {
    stopped: bool,
    peers: BTreeMap<NodeId, Peer<M>>,
    /// The incarnation each peer last connected to us from.
    incarnations: BTreeMap<NodeId, u64>,
    accept: Option<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
    /// Aborted tasks not yet known to be gone (for `shutdown_and_wait`).
    retired: Vec<JoinHandle<()>>,
}

struct Peer<M> {
    addr: SocketAddr,
    queue: mpsc::Sender<M>,
    task: JoinHandle<()>,
    /// Told when the peer connects to us from a new incarnation: it
    /// restarted, and our connection to its previous incarnation may be
    /// dead without anyone noticing (the simulator's TCP does not always
    /// report a socket its owner dropped). A new connection from the same
    /// incarnation (it lost or replaced its connection) says nothing about
    /// ours: taking it as a restart made the two sides replace their
    /// connections in turn for as long as each reconnection took over
    /// [`RESET_MIN_AGE`] — with madsim's connect and accept stalls, 18 s
    /// in which a broker's registration replies were lost (replication
    /// suite, seed 400215).
    restarted: Arc<Notify>,
}

/// A connection younger than this is not replaced on a peer's restart: it
/// may already go to the new incarnation.
const RESET_MIN_AGE: Duration = MAX_BACKOFF;

impl<M> Shared<M> {
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // Nothing panics while holding the lock; a poisoned one is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<M> State<M> {
    /// Aborts every task and keeps their handles in `retired`.
    fn abort_all(&mut self) {
        self.stopped = true;
        let peers = std::mem::take(&mut self.peers);
        let tasks = self.accept.take().into_iter().chain(self.readers.drain(..)).chain(peers.into_values().map(|p| p.task));
        for task in tasks {
            task.abort();
            self.retired.push(task);
        }
    }
}

impl<M> Drop for Shared<M> {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        state.abort_all();
    }
}

impl<M: Serialize + DeserializeOwned + Payload + Send + 'static> PeerTransport<M> {
    /// Listens on `listen` for other nodes; `peers` maps every other node id
    /// to its peer address (an entry for `me` is ignored). `incarnation`
    /// must differ on each start of the node (peers tell a restart from a
    /// reconnection by it). Returns the handle and the receiver of
    /// `(from, message)` for everything that arrives.
    pub async fn bind(
        me: NodeId,
        incarnation: u64,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> anyhow::Result<(Self, mpsc::Receiver<(NodeId, M)>)> {
        Self::bind_with(me, incarnation, listen, peers, Extras::default()).await
    }

    /// [`Self::bind`] with the [`Extras`] asked for.
    pub async fn bind_with(
        me: NodeId,
        incarnation: u64,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        extras: Extras,
    ) -> anyhow::Result<(Self, mpsc::Receiver<(NodeId, M)>)> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for peers on {listen}: {e}"))?;
        let local_addr = listener.local_addr()?;
        let (incoming, rx) = mpsc::channel(INCOMING_QUEUE);
        let shared = Arc::new(Shared {
            me,
            incarnation,
            local_addr,
            dropped: Arc::new(AtomicU64::new(0)),
            links: extras.links,
            state: Mutex::new(State {
                stopped: false,
                peers: BTreeMap::new(),
                incarnations: BTreeMap::new(),
                accept: None,
                readers: Vec::new(),
                retired: Vec::new(),
            }),
        });
        let accept = tokio::spawn(accept_loop(me, Acceptor { listener, incoming, foreign: extras.foreign }, Arc::downgrade(&shared)));
        shared.lock().accept = Some(accept);
        let transport = Self { shared };
        transport.set_peers(peers);
        tracing::info!(me, listen = %local_addr, "peer transport listening");
        Ok((transport, rx))
    }

    /// Replaces the peer map. A peer whose address is unchanged keeps its
    /// queue and connection; a new one gets a fresh queue; a removed or moved
    /// one loses what was queued for it. Must be called inside the runtime
    /// (it spawns the new peers' tasks). Ignored after shutdown.
    pub fn set_peers(&self, peers: BTreeMap<NodeId, SocketAddr>) {
        let me = self.shared.me;
        let mut state = self.shared.lock();
        if state.stopped {
            return;
        }
        let mut old = std::mem::take(&mut state.peers);
        for (id, addr) in peers {
            if id == me {
                tracing::warn!(me, %addr, "the peer map names this node; ignoring that entry");
                continue;
            }
            let peer = match old.remove(&id) {
                Some(p) if p.addr == addr => p,
                moved => {
                    if let Some(p) = moved {
                        p.task.abort();
                        state.retired.push(p.task);
                    }
                    let (queue, rx) = mpsc::channel(PEER_QUEUE);
                    let restarted = Arc::new(Notify::new());
                    let task =
                        tokio::spawn(run_sender(
                        me,
                        self.shared.incarnation,
                        id,
                        addr,
                        rx,
                        self.shared.dropped.clone(),
                        restarted.clone(),
                        self.shared.links.clone(),
                    ));
                    Peer { addr, queue, task, restarted }
                }
            };
            state.peers.insert(id, peer);
        }
        for (_, p) in old {
            p.task.abort();
            state.retired.push(p.task);
        }
        state.retired.retain(|t| !t.is_finished());
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The current peer map.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.shared.lock().peers.iter().map(|(id, p)| (*id, p.addr)).collect()
    }

    /// Queues `msg` for `to` and returns at once. Never blocks the caller: if
    /// the peer's bounded queue is full, or the peer is unknown, the message
    /// is dropped (counted, logged at debug).
    pub fn send(&self, to: NodeId, msg: M) {
        let reason = {
            let state = self.shared.lock();
            match state.peers.get(&to) {
                Some(p) => match p.queue.try_send(msg) {
                    Ok(()) => return,
                    Err(mpsc::error::TrySendError::Full(_)) => "queue full",
                    Err(mpsc::error::TrySendError::Closed(_)) => "sender task gone",
                },
                None if state.stopped => "transport shut down",
                None => "unknown peer",
            }
        };
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(me = self.shared.me, to, reason, "dropping message");
    }

    /// Messages dropped so far: queue full, unknown peer, failed connection
    /// attempt or write, unencodable or oversized message, after shutdown.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stops every task and closes every socket (a node that stops must free
    /// its port: the simulator restarts nodes on the same address). The
    /// tasks end when the runtime next schedules them; see
    /// [`Self::shutdown_and_wait`].
    pub fn shutdown(&self) {
        let mut state = self.shared.lock();
        if !state.stopped {
            tracing::info!(me = self.shared.me, addr = %self.shared.local_addr, "peer transport shutting down");
        }
        state.abort_all();
    }

    /// [`Self::shutdown`], then waits until every task is gone: when it
    /// returns, every socket is closed and the port is free.
    pub async fn shutdown_and_wait(&self) {
        self.shutdown();
        // An accept task caught mid-step may still retire one more reader.
        loop {
            let tasks = std::mem::take(&mut self.shared.lock().retired);
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                let _ = task.await; // cancelled (or already finished)
            }
        }
    }
}

/// What the accept task owns. Fields drop in order: the listener is closed
/// before the channel sender goes, so a receiver that has ended means the
/// port is free.
struct Acceptor<M> {
    listener: TcpListener,
    incoming: mpsc::Sender<(NodeId, M)>,
    foreign: Option<mpsc::UnboundedSender<Foreign>>,
}

async fn accept_loop<M: DeserializeOwned + Payload + Send + 'static>(me: NodeId, acceptor: Acceptor<M>, shared: Weak<Shared<M>>) {
    loop {
        match acceptor.listener.accept().await {
            Ok((stream, remote)) => {
                tracing::debug!(me, %remote, "accepted peer connection");
                let Some(shared) = shared.upgrade() else { return };
                let conn = Inbound { stream, incoming: acceptor.incoming.clone(), foreign: acceptor.foreign.clone() };
                let reader = tokio::spawn(run_reader(me, conn, remote, Arc::downgrade(&shared)));
                let mut state = shared.lock();
                if state.stopped {
                    reader.abort();
                    state.retired.push(reader);
                    return;
                }
                state.readers.retain(|r| !r.is_finished());
                state.readers.push(reader);
            }
            Err(e) => {
                tracing::warn!(me, %e, "accepting a peer connection failed");
                tokio::time::sleep(INITIAL_BACKOFF).await;
            }
        }
    }
}

/// What a reading task owns; the socket closes before the sender goes (as in
/// [`Acceptor`]: under the simulator an accepted socket holds the port).
struct Inbound<M> {
    stream: TcpStream,
    incoming: mpsc::Sender<(NodeId, M)>,
    foreign: Option<mpsc::UnboundedSender<Foreign>>,
}

/// How a reading task ended.
enum End {
    /// The peer closed between frames.
    Closed,
    /// The connection ended or failed inside a frame (a crashed peer).
    Broken(String),
    /// The peer broke the protocol.
    Bad(String),
    /// The node dropped the receiver.
    ReceiverGone,
}

async fn run_reader<M: DeserializeOwned + Payload + Send + 'static>(me: NodeId, mut conn: Inbound<M>, remote: SocketAddr, shared: Weak<Shared<M>>) {
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let foreign = conn.foreign.is_some();
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        fill(&mut conn.stream, &mut buf, MAGIC.len()).await?;
        if foreign && buf[..MAGIC.len()] != MAGIC {
            return Ok(false);
        }
        fill(&mut conn.stream, &mut buf, HANDSHAKE_LEN).await.map(|()| true)
    });
    let (from, incarnation) = match handshake.await {
        Ok(Ok(false)) => {
            // Not a peer: someone else's protocol on the shared port.
            let Inbound { stream, foreign, .. } = conn;
            if let Some(f) = foreign {
                let _ = f.send(Foreign { stream, remote, prefix: buf.to_vec() });
            }
            return;
        }
        Err(_) => {
            tracing::warn!(me, %remote, "no handshake within {HANDSHAKE_TIMEOUT:?}; closing the connection");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(me, %remote, %e, "peer connection ended before its handshake");
            return;
        }
        Ok(Ok(true)) => match check_handshake(me, &buf[..HANDSHAKE_LEN]) {
            Ok(from) => from,
            Err(problem) => {
                tracing::warn!(me, %remote, %problem, "bad handshake; closing the connection");
                return;
            }
        },
    };
    buf.advance(HANDSHAKE_LEN);
    tracing::debug!(me, from, incarnation, %remote, "peer connection open");
    let links = shared.upgrade().and_then(|s| s.links.clone());
    if let Some(links) = &links {
        let _ = links.send(LinkEvent::Up { peer: from, incarnation });
    }
    if let Some(shared) = shared.upgrade() {
        let mut state = shared.lock();
        if state.incarnations.insert(from, incarnation) != Some(incarnation)
            && let Some(peer) = state.peers.get(&from)
        {
            peer.restarted.notify_one();
        }
    }
    drop(shared);
    let config = bincode::config::standard().with_limit::<MAX_FRAME_BYTES>();
    let end = loop {
        if let Err(e) = fill(&mut conn.stream, &mut buf, 4).await {
            break if buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof {
                End::Closed
            } else {
                End::Broken(format!("{e} inside a length prefix"))
            };
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_BYTES {
            break End::Bad(format!("frame length {len} exceeds {MAX_FRAME_BYTES}"));
        }
        if let Err(e) = fill(&mut conn.stream, &mut buf, 4 + len).await {
            break End::Broken(format!("{e} inside a {len}-byte frame"));
        }
        let (mut msg, used) = match bincode::serde::decode_from_slice::<M, _>(&buf[4..4 + len], config) {
            Ok(decoded) => decoded,
            Err(e) => break End::Bad(format!("undecodable {len}-byte frame: {e}")),
        };
        if used == len {
            buf.advance(4 + len);
        } else {
            // The rest of the frame is the message's payload: a slice of the
            // receive buffer, not a copy.
            let payload = buf.split_to(4 + len).freeze().slice(4 + used..);
            if msg.put_payload(payload).is_err() {
                break End::Bad(format!("{} bytes left over after the message in a {len}-byte frame", len - used));
            }
        }
        if conn.incoming.send((from, msg)).await.is_err() {
            break End::ReceiverGone;
        }
    };
    if let Some(links) = &links
        && !matches!(end, End::ReceiverGone)
    {
        let _ = links.send(LinkEvent::Down { peer: from, incarnation });
    }
    match end {
        End::Closed => tracing::debug!(me, from, %remote, "peer closed the connection"),
        End::Broken(reason) => tracing::info!(me, from, %remote, %reason, "peer connection broke"),
        End::Bad(problem) => tracing::warn!(me, from, %remote, %problem, "closing the peer connection"),
        End::ReceiverGone => tracing::debug!(me, from, %remote, "node stopped receiving; closing the connection"),
    }
}

/// Reads until `buf` holds at least `n` bytes; an error at end of stream.
async fn fill<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut, n: usize) -> std::io::Result<()> {
    if buf.len() < n {
        buf.reserve(n - buf.len());
    }
    while buf.len() < n {
        if rd.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Appends one frame for `msg` to `out`, except its payload, which is
/// returned: it goes on the wire right after what `out` holds then. On
/// error `out` is unchanged.
fn encode_frame<M: Serialize + Payload>(mut msg: M, out: &mut Vec<u8>) -> Result<Option<Bytes>, String> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let payload = msg.take_payload().filter(|p| !p.is_empty());
    let extra = payload.as_ref().map_or(0, Bytes::len);
    match bincode::serde::encode_into_std_write(&msg, out, bincode::config::standard()) {
        Ok(len) if len + extra <= MAX_FRAME_BYTES => {
            out[start..start + 4].copy_from_slice(&((len + extra) as u32).to_be_bytes());
            Ok(payload)
        }
        Ok(len) => {
            out.truncate(start);
            Err(format!("{}-byte message exceeds the {MAX_FRAME_BYTES}-byte frame limit", len + extra))
        }
        Err(e) => {
            out.truncate(start);
            Err(format!("cannot encode: {e}"))
        }
    }
}

/// An open outgoing connection.
struct Link {
    stream: TcpStream,
    since: Instant,
}

enum Event<M> {
    Message(Option<M>),
    /// The peer opened a new connection to us (it may have restarted).
    PeerRestarted,
    /// The peer wrote or closed on a connection it must only read.
    PeerSide(std::io::Result<usize>),
}

/// Waits out the backoff after a failure. A connection that lived at least
/// `MAX_BACKOFF` (it worked) starts the doubling over.
async fn back_off(backoff: &mut Duration, connected_since: Option<Instant>) {
    if connected_since.is_some_and(|t| t.elapsed() >= MAX_BACKOFF) {
        *backoff = INITIAL_BACKOFF;
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

async fn connect(me: NodeId, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {CONNECT_TIMEOUT:?}"))),
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(me, %addr, %e, "cannot set TCP_NODELAY");
    }
    Ok(stream)
}

/// The outgoing task for one peer: connects lazily, batches what is queued
/// into one write, and backs off after failures.
#[allow(clippy::too_many_arguments)]
async fn run_sender<M: Serialize + Payload>(
    me: NodeId,
    incarnation: u64,
    to: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<M>,
    dropped: Arc<AtomicU64>,
    restarted: Arc<Notify>,
    links: Option<mpsc::UnboundedSender<LinkEvent>>,
) {
    let broken = || {
        if let Some(l) = &links {
            let _ = l.send(LinkEvent::Broken { peer: to });
        }
    };
    let mut link: Option<Link> = None;
    let mut backoff = INITIAL_BACKOFF;
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    let mut payloads: Vec<(usize, Bytes)> = Vec::new();
    let mut probe = [0u8; 64];
    loop {
        let event = match link.as_mut() {
            None => Event::Message(queue.recv().await),
            Some(l) => tokio::select! {
                // Polled in order: tokio's random branch order would break
                // replay in the simulator. A closed connection is noticed
                // before the next batch is written into it.
                biased;
                r = l.stream.read(&mut probe) => Event::PeerSide(r),
                _ = restarted.notified() => Event::PeerRestarted,
                m = queue.recv() => Event::Message(m),
            },
        };
        let first = match event {
            Event::Message(Some(m)) => m,
            Event::Message(None) => return, // every handle is gone
            Event::PeerRestarted => {
                if link.as_ref().is_some_and(|l| l.since.elapsed() >= RESET_MIN_AGE) {
                    tracing::debug!(me, to, %addr, "peer reconnected to us; replacing our connection to it");
                    link = None;
                }
                continue;
            }
            Event::PeerSide(r) => {
                match r {
                    Ok(0) => tracing::debug!(me, to, %addr, "peer closed the connection"),
                    Ok(n) => tracing::warn!(me, to, %addr, n, "peer wrote on a send-only connection; closing it"),
                    Err(e) => tracing::debug!(me, to, %addr, %e, "peer connection failed"),
                }
                let since = link.take().map(|l| l.since);
                broken();
                back_off(&mut backoff, since).await;
                continue;
            }
        };
        out.clear();
        if link.is_none() {
            match connect(me, addr).await {
                Ok(stream) => {
                    tracing::debug!(me, to, %addr, "connected to peer");
                    out.extend_from_slice(&handshake(me, incarnation));
                    link = Some(Link { stream, since: Instant::now() });
                }
                Err(e) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(me, to, %addr, %e, retry_in = ?backoff, "cannot connect to peer; dropping the message");
                    broken();
                    back_off(&mut backoff, None).await;
                    continue;
                }
            }
        }
        // Everything queued, up to a bound, goes in one write (plus one per
        // payload, written from where it lies: `out` up to the position
        // recorded, then the payload).
        let mut batch = 0u64;
        let mut payload_bytes = 0;
        payloads.clear();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match encode_frame(msg, &mut out) {
                Ok(payload) => {
                    batch += 1;
                    if let Some(p) = payload {
                        payload_bytes += p.len();
                        payloads.push((out.len(), p));
                    }
                }
                Err(problem) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(me, to, %problem, "dropping a message");
                }
            }
            if out.len() + payload_bytes < BATCH_BYTES {
                next = queue.try_recv().ok();
            }
        }
        let l = link.as_mut().expect("connected above");
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            let mut from = 0;
            for (at, payload) in &payloads {
                l.stream.write_all(&out[from..*at]).await?;
                l.stream.write_all(payload).await?;
                from = *at;
            }
            l.stream.write_all(&out[from..]).await?;
            // Simulated sockets send only on flush.
            l.stream.flush().await
        })
        .await;
        payloads.clear();
        if out.capacity() > 4 * BATCH_BYTES {
            out = Vec::with_capacity(READ_BUFFER); // a huge message passed; give its memory back
        }
        let failure = match written {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("write not done within {WRITE_TIMEOUT:?}"),
        };
        dropped.fetch_add(batch, Ordering::Relaxed);
        tracing::debug!(me, to, %addr, %failure, messages = batch, "write to peer failed; dropping the batch");
        let since = link.take().map(|l| l.since);
        broken();
        back_off(&mut backoff, since).await;
    }
}

/// The transport inside the simulator: the same code as on real TCP delivers
/// in order, reaches a node that is killed and restarted on the same address,
/// and frees its port on shutdown. Here rather than in `tests/` because the
/// `millrace` binary (which integration tests build) does not compile under
/// madsim. Run with
/// `RUSTFLAGS="--cfg madsim" cargo test -p millrace-net --lib peer::sim_tests`.
#[cfg(all(test, madsim))]
mod sim_tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use madsim::runtime::Handle;
    use super::{Payload, PeerTransport};

    impl Payload for u64 {}

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), 7000)
    }

    #[madsim::test]
    async fn a_killed_and_restarted_peer_hears_the_sender_again() {
        let handle = Handle::current();
        let (a_addr, b_addr) = (addr(1), addr(2));
        // What node 2 receives, reported to the test with the incarnation.
        let (report, mut heard) = tokio::sync::mpsc::unbounded_channel::<(u32, u64, u64)>();
        let incarnation = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let b = handle
            .create_node()
            .name("b")
            .ip(b_addr.ip())
            .init(move || {
                let report = report.clone();
                let inc = incarnation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    // A graceful stop and a re-bind on the same address first.
                    let (t, _rx) = PeerTransport::<u64>::bind(2, b_addr, BTreeMap::from([(1, a_addr)])).await.unwrap();
                    t.shutdown_and_wait().await;
                    let (t, mut rx) = PeerTransport::<u64>::bind(2, b_addr, BTreeMap::from([(1, a_addr)])).await.unwrap();
                    while let Some((from, n)) = rx.recv().await {
                        let _ = report.send((inc, from, n));
                    }
                    t.shutdown();
                }
            })
            .build();
        handle
            .create_node()
            .name("a")
            .ip(a_addr.ip())
            .init(move || async move {
                let (t, _rx) = PeerTransport::<u64>::bind(1, a_addr, BTreeMap::from([(2, b_addr)])).await.unwrap();
                for n in 0.. {
                    t.send(2, n);
                    madsim::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .build();

        let mut last = None;
        let mut got = 0;
        while got < 50 {
            let (inc, from, n) = heard.recv().await.unwrap();
            assert_eq!((inc, from), (0, 1));
            assert!(last.is_none_or(|l| l < n), "in order");
            last = Some(n);
            got += 1;
        }
        handle.kill(b.id());
        madsim::time::sleep(Duration::from_secs(2)).await;
        while heard.try_recv().is_ok() {} // in flight before the kill
        handle.restart(b.id());
        let mut after = Vec::new();
        while after.len() < 50 {
            let (inc, from, n) = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await.expect("heard again").unwrap();
            assert_eq!(from, 1);
            if inc == 1 {
                after.push(n);
            }
        }
        assert!(after.windows(2).all(|w| w[0] < w[1]), "in order: {after:?}");
        // After the first message, a steady sender loses nothing.
        assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "no gaps once connected: {after:?}");
    }
}
