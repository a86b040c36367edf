//! The Huntress side: the REST client and the per-key rate budget it paces
//! itself by.

pub mod client;
pub mod ratelimit;
