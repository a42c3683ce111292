//! One client connection: a reader that decodes frames and hands requests
//! to the broker loop, and a writer that sends responses in request order.
//!
//! Bad input is this connection's problem only: an oversized length, a
//! truncated or undecodable frame, an unknown API key or an unsupported
//! version closes this connection (after the responses already owed) and
//! nothing else.

use bytes::{Buf, Bytes, BytesMut};
use millrace_core::broker::{Request, RequestId, Response};
use millrace_core::group::GroupRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::broker_loop::Command;
use crate::kafka::{self, Decoded, MAX_FRAME_BYTES, RequestMeta};

/// Responses a connection may owe at once; a client pipelining more waits.
const MAX_IN_FLIGHT: usize = 256;

enum Slot {
    Ready(Bytes),
    Pending(RequestMeta, oneshot::Receiver<Response>),
}

pub async fn serve(stream: TcpStream, conn: u64, broker: mpsc::Sender<Command>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    // Kafka's form for a member's client host: "/" and the IP address.
    let peer_host = stream.peer_addr().map(|a| format!("/{}", a.ip())).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = tokio::io::split(stream);
    let (slots, slot_rx) = mpsc::channel(MAX_IN_FLIGHT);
    let mut writer = AbortOnDrop(tokio::spawn(write_responses(wr, slot_rx)));
    let mut seq = 0u64;
    // One receive buffer per connection: frames are split off it without
    // zero-filling, and its memory is reused once a frame is dropped.
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        // The length prefix, then the frame, both from the buffer (a read
        // may bring in more than one frame).
        if fill(&mut rd, &mut buf, 4).await.is_err() {
            break None; // closed by the client
        }
        let len = i32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        if len < 0 || len as usize > MAX_FRAME_BYTES {
            break Some(format!("frame length {len} outside 0..={MAX_FRAME_BYTES}"));
        }
        let len = len as usize;
        if fill(&mut rd, &mut buf, 4 + len).await.is_err() {
            break Some(format!("connection closed inside a {len}-byte frame"));
        }
        buf.advance(4);
        let frame = buf.split_to(len).freeze();
        let slot = match kafka::decode(frame) {
            Err(e) => break Some(e.to_string()),
            Ok(Decoded::ApiVersions { meta, supported }) => match kafka::response::api_versions(&meta, supported) {
                Ok(bytes) => Slot::Ready(bytes),
                Err(e) => break Some(format!("encoding ApiVersions: {e}")),
            },
            Ok(Decoded::Broker { meta, mut request, expects_reply }) => {
                if let Request::Group(GroupRequest::Join(join)) = &mut request {
                    // DescribeGroups shows where each member connects from.
                    join.client_host = peer_host.clone();
                }
                tracing::debug!(conn, api = ?meta.api_key, corr = meta.correlation_id, "request");
                seq += 1;
                let (reply, rx) = oneshot::channel();
                let id = RequestId { conn, seq };
                if broker.send(Command::Request { id, request, reply }).await.is_err() {
                    break Some("broker stopped".into());
                }
                if !expects_reply {
                    continue; // acks=0: Kafka sends no response at all
                }
                Slot::Pending(meta, rx)
            }
        };
        if slots.send(slot).await.is_err() {
            break None; // the writer stopped: the socket is gone
        }
    };
    if let Some(reason) = reason {
        tracing::warn!(conn, %peer, %reason, "closing connection");
    }
    drop(slots);
    let _ = broker.send(Command::Disconnected { conn }).await;
    let _ = (&mut writer.0).await;
}

/// Reads until `buf` holds at least `n` bytes; an error at end of stream.
async fn fill(rd: &mut tokio::io::ReadHalf<TcpStream>, buf: &mut BytesMut, n: usize) -> std::io::Result<()> {
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

async fn write_responses(mut wr: tokio::io::WriteHalf<TcpStream>, mut slots: mpsc::Receiver<Slot>) {
    while let Some(slot) = slots.recv().await {
        let bytes = match slot {
            Slot::Ready(b) => b,
            Slot::Pending(meta, rx) => match rx.await {
                Ok(response) => match kafka::response::encode(&meta, response) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(?meta, %e, "cannot encode response; closing connection");
                        break;
                    }
                },
                Err(_) => break, // the broker dropped the request (shutdown)
            },
        };
        tracing::debug!(len = bytes.len(), "response");
        // Flush each response: simulated sockets send only on flush.
        if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Aborts the task when dropped: when a stopping server aborts a
/// connection's reader, its writer (which owns half of the socket) must go
/// too, or the socket outlives the server (under the simulator, a restarted
/// server's port then accepted connections nobody read).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
