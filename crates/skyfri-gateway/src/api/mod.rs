//! The OpenFaaS-compatible admin API under `/system`.

pub mod artefacts;
pub mod async_calls;
pub mod functions;
pub mod logs;
pub mod secrets;
pub mod system;
pub mod usage;
