//! Callbacks the engine's threads call into the host (a submitted write's completion, an
//! async waiter's wake-up). A host that must wrap them — the Python bindings take the GIL
//! once for a whole batch instead of once per callback — sets the scope once.

/// Wraps every batch of callbacks; set once by the host (the Python bindings).
pub(crate) static COMPLETION_SCOPE: std::sync::OnceLock<fn(&mut dyn FnMut())> = std::sync::OnceLock::new();

/// Runs `batch` inside the host's scope, if it set one.
pub(crate) fn in_scope(batch: &mut dyn FnMut()) {
    match COMPLETION_SCOPE.get() {
        Some(scope) => scope(batch),
        None => batch(),
    }
}
