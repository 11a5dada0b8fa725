//! The OpenFaaS-compatible admin API under `/system`.

pub mod artefacts;
pub mod async_calls;
pub mod audit;
pub mod backup;
pub mod cost;
pub mod functions;
pub mod logs;
pub mod residency;
pub mod secrets;
pub mod stats;
pub mod system;
pub mod tokens;
pub mod usage;

#[cfg(test)]
mod tests;
