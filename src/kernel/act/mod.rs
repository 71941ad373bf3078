//! Acting: the seam to the kernel (live, fake for tests, faults around
//! either), the one executor that runs ops through it, the carry-out that
//! runs an intent's stages and writes the record, and the listeners that
//! hear every step (progress, JSON events; the audit log is remembered).

pub(crate) mod carry;
pub(crate) mod cmd;
pub(crate) mod events;
pub(crate) mod exec;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod seam;
