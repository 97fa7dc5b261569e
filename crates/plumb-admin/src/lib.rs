//! The admin API (DESIGN.md §4): JSON over HTTP/1.1 on a loopback address by default.
//!
//! It reaches the data plane only through [`plumb_core::Server`]'s public handle; core
//! knows nothing of it. Every change it makes is a small typed operation on a pool
//! (register, drain, deregister), never a swap of the whole config. Every error is a
//! JSON `{"error": ..., "detail": ...}` with a 4xx/5xx status, and a rejected request
//! changes nothing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod json;
pub mod reload;
mod server;

pub use server::{serve, Admin};
