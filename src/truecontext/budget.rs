//! The daily call budget and the 402 stop, shared by every instance through the store.
//!
//! TrueContext allows about 2,500 calls per team per UTC day and answers 402
//! `CallCountExpended` past that. Every call is reserved here *before* it is sent (one CAS on a
//! row per team and UTC day), so instances together never send more than
//! `TRUECONTEXT_DAILY_CALL_BUDGET`; a call that provably never reached TrueContext (the
//! connection was refused) is given back. A 402 stops every instance until 00:00 UTC.

use chrono::{DateTime, Days, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use super::TrueContextError;
use crate::store::{IfMatch, StoreError, Table, TableStore, TypedTable};

/// Tries of one read-modify-write against concurrent callers.
const CAS_TRIES: u32 = 50;
const STOP_ROW: &str = "stop";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DayCount {
    calls: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stop {
    until: DateTime<Utc>,
}

/// Today's count and any stop in force, for status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetState {
    pub calls_today: u64,
    pub budget: u64,
    pub budget_left: u64,
    /// After a 402: no call before this.
    pub stopped_until: Option<DateTime<Utc>>,
}

/// One team's budget on one store (a connection with no team declared is a team of its own).
pub struct Budget<'a> {
    tables: &'a dyn TableStore,
    team: &'a str,
    limit: u64,
}

/// The next 00:00 UTC after `now`, when TrueContext's count resets.
pub fn next_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    (now.date_naive() + Days::new(1)).and_time(NaiveTime::MIN).and_utc()
}

fn day_row(now: DateTime<Utc>) -> String {
    format!("day-{}", now.format("%Y-%m-%d"))
}

impl<'a> Budget<'a> {
    pub fn new(tables: &'a dyn TableStore, team: &'a str, limit: u64) -> Self {
        Self { tables, team, limit }
    }

    fn table(&self) -> TypedTable<'a> {
        TypedTable::new(self.tables, Table::Budgets)
    }

    /// Takes one call from today's budget, or says why none may be made.
    pub async fn reserve(&self, now: DateTime<Utc>) -> Result<(), TrueContextError> {
        if let Some(until) = self.stopped_until(now).await? {
            return Err(TrueContextError::CallCountExpended { until });
        }
        let row = day_row(now);
        for _ in 0..CAS_TRIES {
            let written = match self.table().get::<DayCount>(self.team, &row).await? {
                None => self.table().insert(self.team, &row, &DayCount { calls: 1 }).await,
                Some(day) if day.value.calls >= self.limit => {
                    return Err(TrueContextError::BudgetSpent { budget: self.limit, until: next_midnight(now) })
                }
                Some(day) => {
                    let next = DayCount { calls: day.value.calls + 1 };
                    self.table().update(self.team, &row, &next, IfMatch::ETag(day.etag)).await
                }
            };
            match written {
                Ok(_) => return Ok(()),
                Err(StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Backend("the call budget row is too contended to update".into()).into())
    }

    /// Gives back a call that never reached TrueContext.
    pub async fn refund(&self, now: DateTime<Utc>) -> Result<(), TrueContextError> {
        let row = day_row(now);
        for _ in 0..CAS_TRIES {
            let Some(day) = self.table().get::<DayCount>(self.team, &row).await? else { return Ok(()) };
            let next = DayCount { calls: day.value.calls.saturating_sub(1) };
            match self.table().update(self.team, &row, &next, IfMatch::ETag(day.etag)).await {
                Ok(_) => return Ok(()),
                Err(StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// After a 402: no instance calls for this team before the next 00:00 UTC.
    pub async fn stop_until_midnight(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, TrueContextError> {
        let until = next_midnight(now);
        self.table().upsert(self.team, STOP_ROW, &Stop { until }).await?;
        Ok(until)
    }

    async fn stopped_until(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, TrueContextError> {
        let stop = self.table().get::<Stop>(self.team, STOP_ROW).await?;
        Ok(stop.map(|s| s.value.until).filter(|until| *until > now))
    }

    pub async fn state(&self, now: DateTime<Utc>) -> Result<BudgetState, TrueContextError> {
        let calls_today = self.table().get::<DayCount>(self.team, &day_row(now)).await?.map_or(0, |d| d.value.calls);
        Ok(BudgetState {
            calls_today,
            budget: self.limit,
            budget_left: self.limit.saturating_sub(calls_today),
            stopped_until: self.stopped_until(now).await?,
        })
    }
}
