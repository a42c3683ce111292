//! The controller's metadata: the records of the metadata log
//! ([`records`]), the image they build ([`image`]), and the decisions the
//! active controller proposes ([`decide`]). The Raft core that replicates
//! the log is [`crate::raft`]; the controller machine that joins them is
//! the next step (see the book's "The controller quorum").

pub mod decide;
pub mod image;
pub mod records;

pub use image::{ImageError, MetadataImage, PartitionImage};
pub use records::{BrokerId, MetadataRecord};
