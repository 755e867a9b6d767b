//! The one way the SDK takes a mutex.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also after a panic elsewhere poisoned it: every critical
/// section here leaves its data consistent at each step, so the data is
/// still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
