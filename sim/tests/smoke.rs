#![cfg(madsim)]
//! The production server answers a client inside the simulator.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use madsim::runtime::Handle;
use millrace_net::client::Client;
use millrace_net::config::ServeConfig;
use millrace_net::server::Server;
use millrace_sim::disk::SimDisk;

#[madsim::test]
async fn a_client_creates_a_topic_on_a_simulated_broker() {
    let handle = Handle::current();
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let disk = SimDisk::new(1);
    handle
        .create_node()
        .name("broker")
        .ip(ip)
        .init(move || {
            let disk = disk.clone();
            async move {
                let config = ServeConfig { listen: SocketAddr::new(ip, 9092), ..ServeConfig::default() };
                let server = Server::bind_with(config, disk, 1).await.unwrap();
                server.run(std::future::pending()).await.unwrap();
            }
        })
        .build();
    let client = handle.create_node().name("client").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))).build();
    client
        .spawn(async move {
            madsim::time::sleep(Duration::from_millis(100)).await;
            let mut c = Client::connect("10.0.0.1:9092").await.unwrap();
            assert!(c.metadata(None, false).await.unwrap().is_empty());
            c.create_topic("t", 2, &[]).await.unwrap();
            let topics = c.metadata(None, false).await.unwrap();
            assert_eq!(topics[0].partitions, vec![0, 1]);
        })
        .await
        .unwrap();
}
