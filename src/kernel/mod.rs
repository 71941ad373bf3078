//! The kernel side: look (inspect, observe), decide (decide, intent,
//! recovery: purely), act (the one executor through the seam, carried out
//! by `carry`), and remember (the record). Everything that starts a bpftool
//! or clang process does it through `cmd`, behind the seam.

pub(crate) mod apply;
pub(crate) mod audit;
pub(crate) mod build;
pub(crate) mod carry;
pub(crate) mod cmd;
pub(crate) mod decide;
pub(crate) mod destroy;
pub(crate) mod doctor;
pub(crate) mod events;
pub(crate) mod exec;
#[cfg(test)]
pub(crate) mod fake;
pub mod inspect;
pub(crate) mod intent;
pub(crate) mod observe;
pub(crate) mod preflight;
pub mod record;
pub(crate) mod recovery;
pub(crate) mod saved;
pub(crate) mod seam;
pub(crate) mod status;
pub(crate) mod sys;
pub(crate) mod trust;
#[cfg(test)]
mod twins;
