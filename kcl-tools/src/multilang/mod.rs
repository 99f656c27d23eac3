//! `kcl-multilang`'s library: the Java KCL's MultiLangDaemon protocol on top of this runtime,
//! so that record processors written for the Java daemon (kclpy for Python, `aws-kcl` for
//! Node.js, the Ruby and .NET clients) run unchanged, without a JVM.
//!
//! - [`properties`]: the Java `Properties` parser and the daemon's settings.
//! - [`protocol`]: the messages, JSON in and out; pure.
//! - [`child`]: the [`RecordProcessor`](kcl_core::RecordProcessor) that runs one child process
//!   per shard lease and speaks the protocol with it.

pub mod child;
pub mod properties;
pub mod protocol;
