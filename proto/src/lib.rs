//! keel's wire types, generated from `proto/*.proto` at build time.
//!
//! Only these types cross the network; the node converts them to its domain
//! types in `From` impls (one file per family, in `keel-node`'s `wire`
//! module). Domain types never derive prost.

pub mod codec;

/// The client API: produce, fetch, lookups, topics, consumer groups,
/// cluster membership. Its service uses [`codec::KeelCodec`].
pub mod client {
    tonic::include_proto!("keel.client.v1");
}

/// The peer API: openraft's RPCs and the fsynced-index reports that make
/// the durable index.
pub mod raft {
    tonic::include_proto!("keel.raft.v1");
}
