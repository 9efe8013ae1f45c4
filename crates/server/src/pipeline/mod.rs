//! The request pipeline, one stage per module, composed in [`crate::app`] as one chain:
//! request id (span, access log, metrics) → panic guard → authenticate → [later: IP lists,
//! rate limit] → authorize (an extractor in each handler's signature) → handler.

pub mod audit;
pub mod authenticate;
pub mod authorize;
pub mod extract;
pub mod request_id;
