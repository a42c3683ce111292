//! The controller's metadata: the records of the metadata log
//! ([`records`]), the image they build ([`image`]), and the decisions the
//! active controller proposes ([`decide`]), and the controller machine that
//! runs them over the Raft core ([`machine`], [`crate::raft`]).

pub mod decide;
pub mod image;
pub mod machine;
pub mod records;

pub use image::{ImageError, MetadataImage, PartitionImage, SnapshotError};
pub use machine::{Controller, ControllerConfig, ControllerEffect, ControllerInput, ControllerReply, ControllerRequest};
pub use records::{BrokerId, MetadataRecord};
