//! The one integration test binary: plan snapshots, manifest errors, the CLI,
//! hostile input, and the kernel tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod bypass;
mod changes;
mod cli;
mod entries;
mod errors;
mod hostile;
mod kernel;
mod live;
mod pipeline;
mod plans;
mod review;
mod selection;
mod trust;
