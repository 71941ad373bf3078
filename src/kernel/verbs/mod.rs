//! The verbs end to end: check, lock, look, decide, carry out. One file
//! per verb (adopt lives with destroy: they share the tag probe).

pub(crate) mod apply;
pub(crate) mod destroy;
pub(crate) mod doctor;
pub mod metrics;
pub(crate) mod preflight;
pub(crate) mod status;
#[cfg(test)]
mod twins;
