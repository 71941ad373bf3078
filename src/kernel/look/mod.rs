//! Looking: what sits behind a pin or an id, what is attached where, what a
//! map holds. Changes nothing.

pub mod inspect;
pub(crate) mod observe;
pub(crate) mod prefetch;
pub(crate) mod sockets;
pub(crate) mod sys;
