//! The keel node, its CLI and its benchmarks, as a library: the `keel`
//! binary (`main.rs`) parses the command line and calls into it, and the
//! fuzz targets (`fuzz/`) drive its decoders and request handling directly.
//!
//! Each command lives in its own module: `node` in [`server`] (configured by
//! [`config`]), `dev` in [`dev`], the client commands in [`cli`], and the
//! benchmarks in [`bench`]. [`launch`] lays out and starts local clusters
//! for `keel dev`, `keel bench scale`, the integration tests and keel-chaos.

pub mod bench;
pub mod cli;
pub mod config;
pub mod dev;
pub mod launch;
pub mod server;
