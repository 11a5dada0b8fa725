//! The dashboard at `/ui`, served by the gateway itself: embedded static pages
//! ([`assets`]), logins and sessions ([`session`]), and the session-authorised API the
//! pages call ([`api`]). No CDN, nothing fetched from elsewhere: it works offline.

pub mod api;
pub mod assets;
pub mod session;
