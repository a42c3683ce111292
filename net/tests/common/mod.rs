pub mod cluster;
pub mod server;
