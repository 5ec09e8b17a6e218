//! The Intel VT-d remapping unit: a model over guest memory with a trait to send MSIs.
//!
//! Nothing is implemented yet; the unit arrives with its own issue. The crate exists so that the
//! workspace has its final shape.

#![cfg_attr(test, allow(clippy::indexing_slicing))]
#![forbid(unsafe_code)]
