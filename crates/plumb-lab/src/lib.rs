//! Origins that plumb's demo and tests put behind plumb.
//!
//! [`origin`] is a small, well-behaved HTTP/1.1 server that says which origin answered.
//! Misbehaving origins (stall, reset, black hole) belong here too as tests need them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod origin;
