//! Event triggers: functions invoked by something other than an HTTP caller. Both follow
//! deploys, redeploys and removals the way the async dispatchers do (they look every
//! quarter second), and both invoke through the router, so a trigger scales its function
//! like any caller, from zero too.
//!
//! - [`topics`]: the `topic` annotation. Each message published on the function's NATS
//!   JetStream subjects invokes it once (POST, the message's data as body, its headers as
//!   request headers); the message is acked after a 2xx and redelivered per the function's
//!   retry policy otherwise.
//! - [`cron`]: the `schedule` annotation. Each tick enqueues an async call with an id made
//!   of the function, the schedule and the tick's time, so that several gateways sharing a
//!   queue run each tick once.
//!
//! The annotations are parsed and validated at deploy by [`skyfri_core::triggers`].

pub mod cron;
pub mod topics;

use tokio::sync::watch;

use crate::state::AppState;

/// Where the topic triggers find NATS.
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// `nats://HOST:PORT`; only dialled once a function with a `topic` is deployed.
    pub nats_url: String,
}

/// Runs both trigger loops until `stop` turns true; returns once the messages being
/// handled are settled (the caller bounds that with its grace period), or, once `hand_back`
/// turns true, handed back to NATS.
pub async fn run(
    state: AppState,
    config: TriggerConfig,
    stop: watch::Receiver<bool>,
    hand_back: watch::Receiver<bool>,
) {
    tokio::join!(
        cron::run(state.clone(), stop.clone()),
        topics::run(state, config.nats_url, stop, hand_back),
    );
}
