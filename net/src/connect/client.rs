//! `millrace connect start|list|describe|stop`: requests on a node's batch
//! port, like `millrace stream`.

use anyhow::bail;

use crate::batch::client::{call, done};
use crate::batch::proto::{ConnectSpec, ConnectorInfo, Reply, Request};

fn connectors(server: &str, r: Reply) -> anyhow::Result<Vec<ConnectorInfo>> {
    match r {
        Reply::Connectors(c) => Ok(c),
        other => bail!("unexpected answer from {server}: {other:?}"),
    }
}

pub fn start(server: &str, spec: ConnectSpec) -> anyhow::Result<String> {
    done(server, call(server, &Request::ConnectStart(spec))?)
}

pub fn stop(server: &str, name: &str) -> anyhow::Result<String> {
    done(server, call(server, &Request::ConnectStop { name: name.to_string() })?)
}

pub fn list(server: &str) -> anyhow::Result<Vec<ConnectorInfo>> {
    connectors(server, call(server, &Request::ConnectList)?)
}

pub fn describe(server: &str, name: &str) -> anyhow::Result<ConnectorInfo> {
    match connectors(server, call(server, &Request::ConnectDescribe { name: name.to_string() })?)?.pop() {
        Some(c) => Ok(c),
        None => bail!("no connector named {name}"),
    }
}
