//! The kernel side, in four rooms and the verbs that use them:
//!
//! - `look`: what the kernel holds (bpf(2) reads, `bpftool -j`), as one
//!   observation per decision.
//! - `decide`: pure decisions from the plan, the record and a look: what
//!   apply, destroy and adopt do (`decide`), as staged, numbered intents
//!   (`intent`), and how a killed run ends (`recovery`).
//! - `act`: the seam to the kernel (live, fake, faults), the one executor,
//!   the one carry-out that writes the record, and the listeners.
//! - `remember`: the record and its journal, the audit log, saved plans,
//!   the build cache, and the trust rules for all of them.
//! - `verbs`: apply, destroy, adopt, build, status and doctor end to end.
//!
//! Everything that starts a bpftool or clang process does it through
//! `act::cmd`, behind the seam.

pub(crate) mod act;
pub(crate) mod decide;
pub(crate) mod look;
pub(crate) mod remember;
pub(crate) mod verbs;

pub use look::inspect;
pub use remember::record;
