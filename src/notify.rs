//! Telling systemd how a service is doing (`sd_notify(3)`), for units with `Type=notify`
//! (`contrib/systemd/`). Every function is a no-op when `NOTIFY_SOCKET` is unset, that is when
//! blkmirror is not run by systemd as a notify service, so callers need no condition of their
//! own. A failed send is logged (a warning) and otherwise ignored: the service goes on, and
//! systemd's own timeouts report what it missed.
//!
//! * [`ready`]: once the service does its job (a receiver listens; a sender has started its
//!   loop). Until then systemd reports the unit as "activating" and `systemctl start` waits.
//! * [`stopping`]: as soon as a stop was asked for (SIGTERM/SIGINT), before the wind-down.
//! * [`status`]: a one-line status shown by `systemctl status` (e.g. the last cycle).
//! * [`watchdog_interval`] / [`watchdog_ping`]: with `WatchdogSec=` in the unit, ping at least
//!   every [`watchdog_interval`] (half the deadline, as systemd advises) or systemd kills and
//!   restarts the service; [`spawn_watchdog`] does it from a tokio task.
//!
//! The environment is never unset (that is not thread-safe), so children inherit
//! `NOTIFY_SOCKET`; systemd accepts notifications from the main process only
//! (`NotifyAccess=main`, the default), so a child cannot speak for the service.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the service is up (`READY=1`).
pub fn ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// Tells systemd the service is shutting down (`STOPPING=1`).
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

/// Sets the status line `systemctl status` shows (`STATUS=...`; line breaks become spaces).
pub fn status(text: &str) {
    let line = text.replace(['\n', '\r'], " ");
    send(&[NotifyState::Status(&line)], "STATUS");
}

/// How often to call [`watchdog_ping`]: half of the unit's `WatchdogSec=`, or `None` when
/// systemd watches no watchdog for this process (`WATCHDOG_USEC`/`WATCHDOG_PID` unset or for
/// another process).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Tells systemd the service is alive (`WATCHDOG=1`).
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog], "WATCHDOG=1");
}

/// When systemd watches this process, spawns a task on the current tokio runtime that pings
/// every [`watchdog_interval`] until the runtime ends; else does nothing. Returns the task, if
/// any, so a caller can abort it.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let every = watchdog_interval()?;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            watchdog_ping();
        }
    }))
}

fn send(states: &[NotifyState], what: &str) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd ({what})");
    }
}
