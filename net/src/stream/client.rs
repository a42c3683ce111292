//! `millrace stream start|list|describe|stop`: requests on a node's batch
//! port (the same framed protocol as `millrace sql --server`), so a node
//! has one port for clients and one place that owns its queries.

use anyhow::bail;

use crate::batch::client::{call, done};
use crate::batch::proto::{Reply, Request, StreamInfo, StreamSpec};

fn streams(server: &str, r: Reply) -> anyhow::Result<Vec<StreamInfo>> {
    match r {
        Reply::Streams(s) => Ok(s),
        other => bail!("unexpected answer from {server}: {other:?}"),
    }
}

pub fn start(server: &str, spec: StreamSpec) -> anyhow::Result<String> {
    done(server, call(server, &Request::StreamStart(spec))?)
}

pub fn stop(server: &str, name: &str) -> anyhow::Result<String> {
    done(server, call(server, &Request::StreamStop { name: name.to_string() })?)
}

pub fn list(server: &str) -> anyhow::Result<Vec<StreamInfo>> {
    streams(server, call(server, &Request::StreamList)?)
}

pub fn describe(server: &str, name: &str) -> anyhow::Result<StreamInfo> {
    let mut s = streams(server, call(server, &Request::StreamDescribe { name: name.to_string() })?)?;
    match s.pop() {
        Some(i) => Ok(i),
        None => bail!("no stream query named {name}"),
    }
}
