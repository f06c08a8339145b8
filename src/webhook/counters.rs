//! The webhook's and the processing's counters, and the restarts of this process's supervised
//! tasks (the timer, the queue worker, housekeeping), for status: counted in memory on the hot path
//! (atomics, no store write per request) and written to the `runs` table (partition
//! `webhook-counters`, one row per process) at most every [`FLUSH_EVERY`], so status can add up
//! every instance's. A process killed outright loses at most its last interval's counts; the
//! data itself is never at stake, only these figures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, Stores, Table, TypedTable};

const PARTITION: &str = "webhook-counters";
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Sources of refused pushes remembered per process (the most refused are kept).
const MAX_SOURCES: usize = 50;

/// The figures, as stored and as status shows them (summed over processes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// Refused pushes by reason (`wrong_credentials`, `body_too_large`, `not_json`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Refused authentications by the caller's address, so a caller that keeps failing shows.
    pub auth_failures_by_source: BTreeMap<String, u64>,
    pub processed: u64,
    pub retried: u64,
    pub poisoned: u64,
    /// Pushes the landing refused for good, kept in quarantine.
    #[serde(default)]
    pub quarantined: u64,
    /// Pushes without their document for which TrueContext had none (404), and the latest.
    #[serde(default)]
    pub gone: u64,
    #[serde(default)]
    pub last_gone_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// Restarts of supervised tasks, by task (a task that ended or panicked was started again).
    #[serde(default)]
    pub task_restarts: BTreeMap<String, u64>,
    /// The latest restart of any instance: when, which task, why.
    #[serde(default)]
    pub last_restart: Option<Restart>,
    /// Times a standalone server had every connection it may hold in use (or one address had
    /// all of its share), and the latest.
    #[serde(default)]
    pub connection_cap_reached: u64,
    #[serde(default)]
    pub last_connection_cap_at: Option<DateTime<Utc>>,
    /// The latest push refused after its caller was verified (a body or connection the
    /// destination gets wrong): when and why.
    #[serde(default)]
    pub last_verified_refusal: Option<Restart>,
    /// Submissions landed (new or changed) per UTC hour (`2026-12-08T14`), by road, over the
    /// last day: the status page's chart.
    #[serde(default)]
    pub landed_by_hour: BTreeMap<String, HourLandings>,
    /// The latest few landed, newest first.
    #[serde(default)]
    pub latest_landed: Vec<LandedNote>,
}

/// Landings in one UTC hour, by the road they came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourLandings {
    pub pushed: u64,
    pub synced: u64,
}

/// One landed submission, for the status page's latest list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandedNote {
    pub at: DateTime<Utc>,
    pub connection: String,
    pub id: String,
    /// `push` or `sync`.
    pub road: String,
}

/// Landed submissions each process keeps for the latest list.
pub const LATEST_KEPT: usize = 10;

/// The hour bucket of `at`.
pub fn hour_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H").to_string()
}

/// One restart of a supervised task (or, for `last_verified_refusal`, one refused push: `task`
/// is the refusal's code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub at: DateTime<Utc>,
    pub task: String,
    pub reason: String,
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.received += other.received;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.processed += other.processed;
        self.retried += other.retried;
        self.poisoned += other.poisoned;
        self.quarantined += other.quarantined;
        self.gone += other.gone;
        self.last_gone_at = self.last_gone_at.max(other.last_gone_at);
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.auth_failures_by_source {
            *self.auth_failures_by_source.entry(k.clone()).or_default() += v;
        }
        self.updated_at = self.updated_at.max(other.updated_at);
        for (k, v) in &other.task_restarts {
            *self.task_restarts.entry(k.clone()).or_default() += v;
        }
        if other.last_restart.as_ref().map(|r| r.at) > self.last_restart.as_ref().map(|r| r.at) {
            self.last_restart = other.last_restart.clone();
        }
        self.connection_cap_reached += other.connection_cap_reached;
        self.last_connection_cap_at = self.last_connection_cap_at.max(other.last_connection_cap_at);
        for (hour, landed) in &other.landed_by_hour {
            let mine = self.landed_by_hour.entry(hour.clone()).or_default();
            mine.pushed += landed.pushed;
            mine.synced += landed.synced;
        }
        self.latest_landed.extend(other.latest_landed.iter().cloned());
        self.latest_landed.sort_by_key(|note| std::cmp::Reverse(note.at));
        self.latest_landed.truncate(LATEST_KEPT);
        if other.last_verified_refusal.as_ref().map(|r| r.at) > self.last_verified_refusal.as_ref().map(|r| r.at) {
            self.last_verified_refusal = other.last_verified_refusal.clone();
        }
    }
}

/// This process's counters.
pub struct Counters {
    instance: String,
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub processed: AtomicU64,
    pub retried: AtomicU64,
    pub poisoned: AtomicU64,
    pub quarantined: AtomicU64,
    pub gone: AtomicU64,
    refusals: Mutex<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
    restarts: Mutex<(BTreeMap<String, u64>, Option<Restart>)>,
    caps: Mutex<(u64, Option<DateTime<Utc>>)>,
    last_gone: Mutex<Option<DateTime<Utc>>>,
    verified_refusal: Mutex<Option<Restart>>,
    landings: Mutex<(BTreeMap<String, HourLandings>, std::collections::VecDeque<LandedNote>)>,
    /// What the last write stored (its time left out), so an idle process writes nothing.
    last_written: Mutex<Option<Figures>>,
    last_flush: Mutex<Instant>,
    flushing: AtomicBool,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            instance: format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 4]>())),
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            gone: AtomicU64::new(0),
            refusals: Mutex::default(),
            restarts: Mutex::default(),
            caps: Mutex::default(),
            last_gone: Mutex::default(),
            verified_refusal: Mutex::default(),
            landings: Mutex::default(),
            last_written: Mutex::default(),
            last_flush: Mutex::new(Instant::now()),
            flushing: AtomicBool::new(false),
        }
    }
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A refused push; `source` is set for a failed authentication.
    pub fn rejected(&self, reason: &str, source: Option<&str>) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *refusals.0.entry(reason.to_owned()).or_default() += 1;
        if let Some(source) = source {
            let by_source = &mut refusals.1;
            if by_source.len() < MAX_SOURCES || by_source.contains_key(source) {
                *by_source.entry(source.to_owned()).or_default() += 1;
            } else {
                *by_source.entry("(other sources)".to_owned()).or_default() += 1;
            }
        }
    }

    /// A supervised task of this process was started again after it ended or panicked.
    pub fn restarted(&self, task: &str, reason: &str) {
        let mut restarts = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        *restarts.0.entry(task.to_owned()).or_default() += 1;
        restarts.1 = Some(Restart { at: Utc::now(), task: task.to_owned(), reason: reason.to_owned() });
    }

    /// A standalone server had every connection it may hold in use.
    pub fn connection_cap_reached(&self) {
        let mut caps = self.caps.lock().unwrap_or_else(|p| p.into_inner());
        caps.0 += 1;
        caps.1 = Some(Utc::now());
    }

    /// A push without its document named a submission TrueContext does not have.
    pub fn gone(&self) {
        Self::bump(&self.gone);
        *self.last_gone.lock().unwrap_or_else(|p| p.into_inner()) = Some(Utc::now());
    }

    /// A push was refused after its caller was verified: the destination sends something wrong.
    pub fn refused_verified(&self, code: &str, reason: &str) {
        let refusal = Restart { at: Utc::now(), task: code.to_owned(), reason: reason.chars().take(300).collect() };
        *self.verified_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(refusal);
    }

    /// Submissions landed new or changed by one road: `ids` (at most the latest few are kept,
    /// the count is `count`).
    pub fn landed(&self, road: &str, connection: &str, ids: &[String], count: u64) {
        let now = Utc::now();
        let mut landings = self.landings.lock().unwrap_or_else(|p| p.into_inner());
        let hour = landings.0.entry(hour_key(now)).or_default();
        if road == "push" {
            hour.pushed += count;
        } else {
            hour.synced += count;
        }
        // A day and an hour is all the chart shows.
        let oldest = hour_key(now - chrono::TimeDelta::hours(25));
        landings.0.retain(|key, _| *key >= oldest);
        for id in ids.iter().rev().take(LATEST_KEPT).rev() {
            let note = LandedNote { at: now, connection: connection.to_owned(), id: id.clone(), road: road.to_owned() };
            landings.1.push_front(note);
        }
        landings.1.truncate(LATEST_KEPT);
    }

    fn snapshot(&self) -> Figures {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let restarts = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        // One guard each: a lock taken twice in one expression waits on itself.
        let caps = *self.caps.lock().unwrap_or_else(|p| p.into_inner());
        let verified_refusal = self.verified_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let last_gone_at = *self.last_gone.lock().unwrap_or_else(|p| p.into_inner());
        let (landed_by_hour, latest_landed) = {
            let landings = self.landings.lock().unwrap_or_else(|p| p.into_inner());
            (landings.0.clone(), landings.1.iter().cloned().collect())
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Figures {
            received: load(&self.received),
            accepted: load(&self.accepted),
            duplicates: load(&self.duplicates),
            rejected: refusals.0.clone(),
            auth_failures_by_source: refusals.1.clone(),
            processed: load(&self.processed),
            retried: load(&self.retried),
            poisoned: load(&self.poisoned),
            quarantined: load(&self.quarantined),
            gone: load(&self.gone),
            last_gone_at,
            updated_at: Some(Utc::now()),
            task_restarts: restarts.0.clone(),
            last_restart: restarts.1.clone(),
            connection_cap_reached: caps.0,
            last_connection_cap_at: caps.1,
            last_verified_refusal: verified_refusal,
            landed_by_hour,
            latest_landed,
        }
    }

    /// Writes this process's row when the last write is older than [`FLUSH_EVERY`]; one writer
    /// at a time, in the background, so no request waits for it.
    pub fn flush_soon(self: &std::sync::Arc<Self>, stores: &Stores) {
        {
            let mut last = self.last_flush.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < FLUSH_EVERY || self.flushing.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Instant::now();
        }
        let (counters, stores) = (self.clone(), stores.clone());
        tokio::spawn(async move {
            if let Err(e) = counters.flush(&stores).await {
                tracing::debug!(error = %e, "the webhook counters could not be written");
            }
            counters.flushing.store(false, Ordering::Release);
        });
    }

    /// Writes this process's row now.
    pub async fn flush(&self, stores: &Stores) -> Result<(), StoreError> {
        let snapshot = self.snapshot();
        let table = TypedTable::new(stores.tables.as_ref(), Table::Runs);
        table.upsert(PARTITION, &self.instance, &snapshot).await?;
        *self.last_written.lock().unwrap_or_else(|p| p.into_inner()) = Some(Figures { updated_at: None, ..snapshot });
        Ok(())
    }

    /// Writes this process's row when a figure changed since the last write (the periodic
    /// flush: what happened since the last request, a restart say, reaches status).
    pub async fn flush_if_changed(&self, stores: &Stores) -> Result<(), StoreError> {
        let now = Figures { updated_at: None, ..self.snapshot() };
        if self.last_written.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&now) {
            return Ok(());
        }
        self.flush(stores).await
    }
}

/// Every process's figures added up (this process's as it counts now).
pub async fn totals(stores: &Stores, this: &Counters) -> Result<Figures, StoreError> {
    let mut total = Figures::default();
    for entity in crate::store::query_partition(stores.tables.as_ref(), Table::Runs, PARTITION).await? {
        if entity.row_key == this.instance {
            continue;
        }
        let figures: Figures = crate::store::from_properties(entity.properties)?;
        total.add(&figures);
    }
    total.add(&this.snapshot());
    Ok(total)
}
