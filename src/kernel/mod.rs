//! The kernel side: look (inspect, observe), decide (purely), act (the one
//! executor), and remember (the record). Everything that starts a bpftool or
//! clang process does it through `cmd`.

pub(crate) mod apply;
pub(crate) mod audit;
pub(crate) mod build;
pub(crate) mod cmd;
pub(crate) mod decide;
pub(crate) mod doctor;
pub(crate) mod events;
pub(crate) mod exec;
pub mod inspect;
pub(crate) mod observe;
pub(crate) mod preflight;
pub mod record;
pub(crate) mod recovery;
pub(crate) mod saved;
pub(crate) mod status;
pub(crate) mod sys;
pub(crate) mod trust;
