//! Empty: this crate exists only to host `tests/conformance.rs`.
