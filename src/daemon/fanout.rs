//! The loop around fan-out cycles (`send SOURCE DEST1 DEST2 ...`): one session per
//! destination, opened concurrently and kept across cycles; each cycle freezes and reads the
//! source once for every destination whose session is open ([`run_fanout_cycle`]). A
//! destination that cannot be reached or fails is retried at later cycles with its own
//! backoff while the others go on; it then catches up with its own difference. `--once` ends
//! with an error naming every destination that did not commit; `--until-quiet` ends after a
//! cycle in which every destination committed and none found a change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sender::fanout::{run_fanout_cycle, FanoutCycle, FanoutDest};
use crate::sender::{CycleConfig, CycleContext, CycleReport, SendError};

use super::link::{Link, LinkConfig};
use super::{backoff, stopped_all, DaemonError, Ended, Engines, Mode, Pause, Signals};

/// Everything the fan-out loop needs.
pub struct FanoutConfig {
    /// What each cycle does; its `dest` is the group's key (see [`group_key`]).
    pub cycle: CycleConfig,
    /// How to reach each destination.
    pub links: Vec<LinkConfig>,
    /// When to stop.
    pub mode: Mode,
    /// Pause between cycles when looping.
    pub interval: Duration,
    /// Hashing and compression threads.
    pub threads: usize,
    /// Ends the run at the next cycle boundary when requested.
    pub boundary: Arc<super::Boundary>,
}

/// The key of a group of destinations (the kept snapshot and the audit record are the
/// group's): the destinations' canonical texts, sorted.
pub fn group_key(dests: &[String]) -> String {
    let mut sorted = dests.to_vec();
    sorted.sort();
    format!("fan-out:{}", sorted.join(" "))
}

/// One destination and its session.
struct Slot {
    config: LinkConfig,
    name: String,
    link: Option<Link>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Runs fan-out cycles until the mode says stop or a signal comes; `on_report` sees every
/// destination's committed cycle.
pub async fn run(
    mut config: FanoutConfig,
    engines: Engines,
    mut on_report: impl FnMut(&CycleReport),
) -> Result<Ended, DaemonError> {
    let mut signals = Signals::new();
    let super::Started {
        ctx,
        identity,
        _watchdog,
    } = super::start(&config.cycle, config.threads, engines).await?;
    let stop = ctx.stop.clone();
    let mut slots: Vec<Slot> = config
        .links
        .iter()
        .map(|link| Slot {
            name: link.dest.to_string(),
            config: link.clone(),
            link: None,
            failures: 0,
            retry_at: None,
        })
        .collect();
    loop {
        let Some(end) = one_cycle(&config, &ctx, &mut slots, &mut signals, &mut on_report).await
        else {
            return Ok(stopped_all(slots.into_iter().filter_map(|s| s.link)).await);
        };
        for (dest, why) in &end.failed {
            if let Some(slot) = slots.iter().find(|slot| &slot.name == dest) {
                let retry_in = match config.mode {
                    Mode::Once => None,
                    _ => slot
                        .retry_at
                        .map(|at| at.saturating_duration_since(Instant::now())),
                };
                super::note_failure(&config.cycle, &identity, dest, why, retry_in);
            }
        }
        // A re-hash is asked for once per run.
        config.cycle.rehash_target = false;
        let wait = match config.mode {
            Mode::Once if end.failed.is_empty() => break,
            Mode::Once => {
                close_all(slots).await;
                return Err(DaemonError::Destinations(summary(
                    &end.failed,
                    config.links.len(),
                )));
            }
            Mode::UntilQuiet if end.failed.is_empty() && !end.changed => break,
            Mode::UntilQuiet | Mode::Forever => {
                let next_retry = slots.iter().filter_map(|s| s.retry_at).min();
                let pause = match config.mode {
                    Mode::Forever => config.interval,
                    _ => Duration::ZERO,
                };
                match next_retry {
                    Some(at) if slots.iter().all(|s| s.link.is_none()) => {
                        at.saturating_duration_since(Instant::now()).max(pause)
                    }
                    _ => pause,
                }
            }
        };
        for slot in &slots {
            let at = slot.retry_at.map_or(wait, |at| {
                at.saturating_duration_since(Instant::now()).max(wait)
            });
            super::note_next_cycle(&config.cycle, &identity, &slot.name, Some(at));
        }
        match super::pause(wait, &config.boundary, &mut signals, &stop).await {
            Pause::Elapsed => {}
            Pause::Boundary => break,
            Pause::Signal => return Ok(stopped_all(slots.into_iter().filter_map(|s| s.link)).await),
        }
    }
    close_all(slots).await;
    Ok(Ended::Done)
}

/// Closes every open session (a close that fails is logged: the cycles are already done).
async fn close_all(slots: Vec<Slot>) {
    for slot in slots {
        if let Some(link) = slot.link {
            if let Err(e) = link.close().await {
                tracing::warn!(dest = %slot.name, error = %e, "closing the session failed");
            }
        }
    }
}

/// One line for `--once`: how many destinations failed and why, each named.
fn summary(failed: &[(String, String)], total: usize) -> String {
    let each: Vec<String> = failed
        .iter()
        .map(|(dest, why)| format!("{dest}: {why}"))
        .collect();
    format!(
        "{} of {total} destinations did not commit: {}",
        failed.len(),
        each.join("; ")
    )
}

/// Opens the sessions that are due, runs one cycle over the open ones, reports, and returns
/// the destinations that did not commit (with why); `None` when a signal came.
async fn one_cycle(
    config: &FanoutConfig,
    ctx: &CycleContext,
    slots: &mut [Slot],
    signals: &mut Signals,
    on_report: &mut impl FnMut(&CycleReport),
) -> Option<CycleEnd> {
    let mut failed = Vec::new();
    open_due(slots, &ctx.stop, signals, &mut failed).await?;
    let open: Vec<usize> = (0..slots.len())
        .filter(|&i| slots[i].link.is_some())
        .collect();
    let dests: Vec<FanoutDest> = open
        .iter()
        .map(|&i| FanoutDest {
            name: slots[i].name.clone(),
            endpoint: slots[i].link.as_ref().expect("open").endpoint.clone(),
        })
        .collect();
    let all_quiet = std::cell::Cell::new(true);
    if dests.is_empty() {
        // No cycle, so none reads the space figures: the kept snapshot still fills.
        super::space_between_cycles(ctx, &config.cycle.source).await;
    } else {
        let (cycle, cycle_ctx) = (config.cycle.clone(), ctx.clone());
        let span = tracing::info_span!("cycle", source = %config.cycle.source.display());
        let cycle_thread = move || {
            let _entered = span.enter();
            run_fanout_cycle(&dests, &cycle, &cycle_ctx)
        };
        let result = super::on_cycle_thread(cycle_thread, signals, &ctx.stop).await?;
        match result {
            Ok(FanoutCycle { outcomes, snapshot }) => {
                for outcome in outcomes {
                    let slot = &mut slots[open[outcome.index]];
                    match outcome.result {
                        Ok(report) => {
                            slot.failures = 0;
                            slot.retry_at = None;
                            all_quiet.set(all_quiet.get() && report.blocks_changed == 0);
                            super::log_committed(&report);
                            on_report(&report);
                            super::post_commit(&config.cycle, &report).await;
                        }
                        Err(e) => failed.push((slot.name.clone(), fail(slot, e, config).await)),
                    }
                }
                if let Err(e) = snapshot {
                    tracing::error!(error = %e, "cannot keep or release the cycle's snapshot");
                    failed.push(("snapshot".into(), e.to_string()));
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(error = %why, "cycle failed before any destination");
                for &i in &open {
                    failed.push((slots[i].name.clone(), why.clone()));
                }
            }
        }
    }
    Some(CycleEnd {
        failed,
        changed: !all_quiet.get(),
    })
}

/// How a cycle ended for the loop.
struct CycleEnd {
    /// Destinations that did not commit, and why.
    failed: Vec<(String, String)>,
    /// Some destination was sent a change.
    changed: bool,
}

/// Opens, concurrently, the sessions of destinations without one whose retry time has come.
/// A failure is recorded in `failed` and the destination retried later. `None` on a signal.
async fn open_due(
    slots: &mut [Slot],
    stop: &Arc<AtomicBool>,
    signals: &mut Signals,
    failed: &mut Vec<(String, String)>,
) -> Option<()> {
    let now = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    for (i, slot) in slots.iter().enumerate() {
        if slot.link.is_none() && slot.retry_at.is_none_or(|at| at <= now) {
            let (config, stop) = (slot.config.clone(), stop.clone());
            opening.spawn(async move { (i, Link::open(&config, stop).await) });
        }
    }
    loop {
        let next = tokio::select! {
            next = opening.join_next() => next,
            _ = signals.recv() => {
                stop.store(true, Ordering::Relaxed);
                return None;
            }
        };
        let Some(joined) = next else { return Some(()) };
        let (i, opened) = joined.expect("link opening panicked");
        let slot = &mut slots[i];
        match opened {
            Ok(link) => slot.link = Some(link),
            Err(e) => {
                slot.failures += 1;
                let wait = backoff(Duration::from_secs(1), slot.failures);
                slot.retry_at = Some(Instant::now() + wait);
                failed.push((slot.name.clone(), e.to_string()));
            }
        }
    }
}

/// A destination's failed cycle: tells the receiver the first cause when it is ours, drops
/// the session, and schedules a retry. Returns the error's text.
async fn fail(slot: &mut Slot, error: SendError, config: &FanoutConfig) -> String {
    let mut why = error.to_string();
    if let Some(mut link) = slot.link.take() {
        if error.is_ours() {
            link.endpoint
                .refuse(&format!("the sender gave up: {error}"));
            let _ = link.close().await;
        } else if let Some(peer) = link.peer_error().await {
            why = peer.to_string();
        }
    }
    slot.failures += 1;
    let wait = backoff(config.interval, slot.failures);
    slot.retry_at = Some(Instant::now() + wait);
    why
}
