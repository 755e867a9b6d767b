//! Locking a mutex whose holder panicked: the data is still usable (every
//! critical section here leaves it consistent), so the gateway goes on
//! instead of spreading the panic to every session.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering it from a panicked holder.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
