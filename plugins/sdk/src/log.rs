//! Logging through the host's `log` import.
//!
//! Natively (tests, benchmarks) lines go to stderr instead, because there is
//! no host to import from.

use crate::__private::preset::kaito::plugin::log::{Level, emit};

fn send(level: Level, message: &str) {
    if cfg!(target_arch = "wasm32") {
        emit(level, message);
    } else {
        eprintln!("[plugin {level:?}] {message}");
    }
}

/// Log at debug level.
pub fn debug(message: &str) {
    send(Level::Debug, message)
}

/// Log at info level.
pub fn info(message: &str) {
    send(Level::Info, message)
}

/// Log at warn level.
pub fn warn(message: &str) {
    send(Level::Warn, message)
}
