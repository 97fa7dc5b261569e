//! End-to-end tests live in `tests/e2e/`, one integration-test binary built from
//! modules. This library is empty.
#![forbid(unsafe_code)]
