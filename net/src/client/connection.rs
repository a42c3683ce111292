//! One Kafka protocol connection: send a request, read its response.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ClientError;

pub struct Connection {
    stream: TcpStream,
    next_correlation: i32,
    client_id: StrBytes,
}

impl Connection {
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Io(format!("cannot connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(Self { stream, next_correlation: 1, client_id: StrBytes::from_static_str("millrace-cli") })
    }

    /// Sends `req` at `version` and waits for its response.
    pub async fn call<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response, ClientError> {
        let correlation = self.send(req, version).await?;
        self.receive::<R>(version, correlation).await
    }

    /// Sends without waiting (pipelining, or acks=0); returns the correlation id.
    pub async fn send<R: Request>(&mut self, req: &R, version: i16) -> Result<i32, ClientError> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| ClientError::Protocol(format!("unknown api key {}", R::KEY)))?;
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));
        let hv = key.request_header_version(version);
        let proto = |e: anyhow::Error| ClientError::Protocol(e.to_string());
        let size = header.compute_size(hv).map_err(proto)? + req.compute_size(version).map_err(proto)?;
        let mut buf = BytesMut::with_capacity(size + 4);
        buf.put_i32(size as i32);
        header.encode(&mut buf, hv).map_err(proto)?;
        req.encode(&mut buf, version).map_err(proto)?;
        self.stream.write_all(&buf).await.map_err(|e| ClientError::Io(e.to_string()))?;
        // Simulated sockets send only on flush.
        self.stream.flush().await.map_err(|e| ClientError::Io(e.to_string()))?;
        Ok(correlation)
    }

    pub async fn receive<R: Request>(&mut self, version: i16, correlation: i32) -> Result<R::Response, ClientError> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| ClientError::Protocol(format!("unknown api key {}", R::KEY)))?;
        let mut frame = self.read_frame().await?;
        let proto = |e: anyhow::Error| ClientError::Protocol(e.to_string());
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version)).map_err(proto)?;
        if header.correlation_id != correlation {
            return Err(ClientError::Protocol(format!(
                "response correlation id {} does not match request {correlation}",
                header.correlation_id
            )));
        }
        R::Response::decode(&mut frame, version).map_err(proto)
    }

    async fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(format!("reading a response: {e}"));
        let len = self.stream.read_i32().await.map_err(io)?;
        if !(0..=256 * 1024 * 1024).contains(&len) {
            return Err(ClientError::Protocol(format!("response length {len} out of range")));
        }
        let mut buf = BytesMut::zeroed(len as usize);
        self.stream.read_exact(&mut buf).await.map_err(io)?;
        let mut frame = buf.freeze();
        let _ = frame.remaining();
        Ok(frame.split_off(0))
    }
}
