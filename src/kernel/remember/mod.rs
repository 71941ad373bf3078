//! Remembering: the record of each deployment and its journal, the audit
//! log, saved plans, the build cache, and the trust rules every file root
//! reads or writes is held to.

pub(crate) mod audit;
pub(crate) mod build;
pub mod record;
pub(crate) mod saved;
pub(crate) mod syslog;
pub(crate) mod trust;
