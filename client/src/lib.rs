//! keel's client library (being written).
