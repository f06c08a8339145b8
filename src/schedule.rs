//! Timer schedules as the Functions host reads them: a six-field NCRONTAB expression
//! (`sec min hour day month day-of-week`, UTC) or a `hh:mm:ss` interval.
//!
//! Parsing uses `croner` with seconds required and day-of-month AND day-of-week, which is
//! how NCRONTAB (the library the host uses) combines them, unlike Vixie cron's OR.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron { expression: String, cron: Box<Cron> },
    Interval(Duration),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ScheduleError(String);

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Some(interval) = parse_interval(text) {
            return interval;
        }
        let fields = text.split_whitespace().count();
        if fields != 6 {
            return Err(ScheduleError(format!(
                "expected six fields (second minute hour day month day-of-week) or hh:mm:ss, found {fields} field(s)"
            )));
        }
        // croner takes a list with an empty item (`,` or `1,,2`) as a field that matches
        // nothing, and then searches for an occurrence without end (found by the `schedule`
        // fuzz target): refuse it here, naming the field.
        const NAMES: [&str; 6] = ["second", "minute", "hour", "day", "month", "day-of-week"];
        if let Some((i, _)) = text.split_whitespace().enumerate().find(|(_, f)| f.split(',').any(str::is_empty)) {
            return Err(ScheduleError(format!("the {} field has an empty list item", NAMES.get(i).unwrap_or(&"?"))));
        }
        // croner also reads Quartz's `#`, `L`, `W` and `?`, which NCRONTAB (and so the host)
        // does not have, and searches without end for an impossible one (`0 2 * 9 * 1#5`, the
        // fifth Monday that is a 9th; found by the fuzz target): only NCRONTAB's forms pass.
        for (i, field) in text.split_whitespace().enumerate() {
            if let Some(atom) = field.split([',', '-', '/']).find(|atom| !is_ncrontab_atom(atom)) {
                return Err(ScheduleError(format!(
                    "the {} field has {:?}, which NCRONTAB does not read (numbers, *, ranges, steps, lists and names only)",
                    NAMES.get(i).unwrap_or(&"?"),
                    atom.chars().take(16).collect::<String>()
                )));
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .dom_and_dow(true)
            // `5/15` is NCRONTAB's "from 5, every 15" (as croner 2 read it); croner 4 takes
            // only `5-59/15` unless told. A bare `/15` is refused above.
            .sloppy_ranges(true)
            .build()
            .parse(text)
            .map_err(|e| ScheduleError(format!("not a valid NCRONTAB expression: {e}")))?;
        // `0 0 0 30 2 *` parses and never occurs: the timer would never fire and say nothing.
        // The fields have no year, so one that occurs at all occurs within a 400-year cycle of
        // any date; croner searches up to its year limit and answers that there is none.
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        if cron.find_next_occurrence(&epoch, false).is_err() {
            return Err(ScheduleError("the schedule never occurs: no date has that day, month and day-of-week".into()));
        }
        Ok(Schedule::Cron { expression: text.to_owned(), cron: Box::new(cron) })
    }
}

/// One value of a field as NCRONTAB reads it: `*`, a number, or a month or day name.
fn is_ncrontab_atom(atom: &str) -> bool {
    const NAMES: [&str; 19] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "sun", "mon", "tue", "wed",
        "thu", "fri", "sat",
    ];
    atom == "*"
        || (!atom.is_empty() && atom.len() <= 4 && atom.bytes().all(|b| b.is_ascii_digit()))
        || NAMES.contains(&atom.to_ascii_lowercase().as_str())
}

/// `TimeSpan.MaxValue.Days` in .NET.
const TIMESPAN_MAX_DAYS: u64 = 10_675_199;

/// `hh:mm:ss` (or `d.hh:mm:ss`), the TimeSpan form of a timer schedule.
fn parse_interval(text: &str) -> Option<Result<Schedule, ScheduleError>> {
    if !text.contains(':') || text.contains(' ') {
        return None;
    }
    let (days, rest) = match text.split_once('.') {
        Some((d, rest)) => (d.parse::<u64>().ok()?, rest),
        None => (0, text),
    };
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = parts[..] else { return None };
    if h > 23 || m > 59 || s > 59 {
        return Some(Err(ScheduleError(format!("{text:?} is not a valid hh:mm:ss interval"))));
    }
    // The host reads this form as a .NET TimeSpan, whose days stop at 10,675,199; a larger
    // count also overflowed our seconds (found by the `schedule` fuzz target).
    if days > TIMESPAN_MAX_DAYS {
        return Some(Err(ScheduleError(format!(
            "{days} days is more than a timer interval can hold ({TIMESPAN_MAX_DAYS})"
        ))));
    }
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    if secs == 0 {
        return Some(Err(ScheduleError("an interval of zero would run continuously".into())));
    }
    Some(Ok(Schedule::Interval(Duration::from_secs(secs))))
}

impl Schedule {
    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => cron.find_next_occurrence(&after, false).ok(),
            Schedule::Interval(every) => after.checked_add_signed(chrono::TimeDelta::from_std(*every).ok()?),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Schedule::Cron { expression, .. } => expression.clone(),
            Schedule::Interval(every) => format!("every {}s", every.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).unwrap()
    }

    #[test]
    fn six_field_ncrontab() {
        let every_five_minutes: Schedule = "0 */5 * * * *".parse().unwrap();
        assert_eq!(every_five_minutes.next_after(at(10, 2, 30)), Some(at(10, 5, 0)));
        assert_eq!(every_five_minutes.next_after(at(10, 5, 0)), Some(at(10, 10, 0)));
        let every_second: Schedule = "* * * * * *".parse().unwrap();
        assert_eq!(every_second.next_after(at(1, 1, 1)), Some(at(1, 1, 2)));
    }

    #[test]
    fn sunday_is_zero_and_day_fields_combine_with_and() {
        // 2026-11-23 is a Monday. "day 1 and Sunday": NCRONTAB needs both, so the next match is
        // a 1st that falls on a Sunday (2027-08-01), not the next 1st or the next Sunday.
        let s: Schedule = "0 0 0 1 * 0".parse().unwrap();
        assert_eq!(s.next_after(at(0, 0, 0)), Some(Utc.with_ymd_and_hms(2027, 8, 1, 0, 0, 0).unwrap()));
    }

    #[test]
    fn an_empty_list_item_is_refused_not_searched_forever() {
        for text in [",  52 9 * *  4", "0 1,,2 * * * *", "0 0 0 * * 1,"] {
            let err = text.parse::<Schedule>().unwrap_err();
            assert!(err.to_string().contains("empty list item"), "{text:?}: {err}");
        }
        assert!("0 1,2 * * * *".parse::<Schedule>().is_ok());
    }

    #[test]
    fn quartz_forms_are_refused_and_names_steps_and_ranges_pass() {
        for text in ["0 2 * 9 * 1#5", "0 0 0 L * *", "0 0 0 15W * *", "0 0 0 ? * MON"] {
            let err = text.parse::<Schedule>().unwrap_err();
            assert!(err.to_string().contains("NCRONTAB does not read"), "{text:?}: {err}");
        }
        for text in ["0 */5 * * * *", "0 0 9-17 * * MON-FRI", "0 0 0 1 jan,Jul *", "5-30/5 * * * * *"] {
            assert!(text.parse::<Schedule>().is_ok(), "{text:?}");
        }
    }

    /// Found by the review of the croner 4 move: NCRONTAB's `5/15` (from 5, every 15), which
    /// croner 2 read as `5-59/15`, was refused by croner 4's strict parser, so a deployment with
    /// such a `SYNC_SCHEDULE` would not have started.
    #[test]
    fn a_step_from_a_start_reads_as_ncrontab_does() {
        let schedule: Schedule = "0 5/15 * * * *".parse().unwrap();
        let start = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").unwrap().with_timezone(&Utc);
        let first = schedule.next_after(start).unwrap();
        assert_eq!(first.to_rfc3339(), "2026-12-07T10:05:00+00:00");
        assert_eq!(schedule.next_after(first).unwrap().to_rfc3339(), "2026-12-07T10:20:00+00:00");
        assert!("0 /15 * * * *".parse::<Schedule>().is_err(), "a bare step is still refused");
    }

    #[test]
    fn a_schedule_that_never_occurs_is_refused_and_a_rare_one_passes() {
        for text in ["0 0 0 31 2 *", "0 0 0 30 2 *", "0 0 0 31 4,6 *"] {
            let err = text.parse::<Schedule>().unwrap_err();
            assert!(err.to_string().contains("never occurs"), "{text:?}: {err}");
        }
        // 29 February that is a Monday: every 28 years or so.
        let rare: Schedule = "0 0 0 29 2 1".parse().unwrap();
        assert_eq!(rare.next_after(at(0, 0, 0)), Some(Utc.with_ymd_and_hms(2044, 2, 29, 0, 0, 0).unwrap()));
    }

    #[test]
    fn timespan_interval() {
        let s: Schedule = "00:05:00".parse().unwrap();
        assert_eq!(s.next_after(at(10, 0, 0)), Some(at(10, 5, 0)));
        assert!("00:00:00".parse::<Schedule>().is_err());
        assert!("25:00:00".parse::<Schedule>().is_err());
        let week: Schedule = "7.00:00:00".parse().unwrap();
        assert_eq!(week.next_after(at(10, 0, 0)), Some(at(10, 0, 0) + chrono::TimeDelta::days(7)));
        // More days than a TimeSpan holds: refused, not an overflow.
        let err = "1066666666666666.6:0:0".parse::<Schedule>().unwrap_err();
        assert!(err.0.contains("days"), "{err}");
    }

    #[test]
    fn five_field_unix_cron_is_refused_with_a_reason() {
        let err = "*/5 * * * *".parse::<Schedule>().unwrap_err();
        assert!(err.0.contains("six fields"), "{err}");
        assert!("0 */5 * * * * *".parse::<Schedule>().is_err());
        assert!("0 61 * * * *".parse::<Schedule>().is_err());
    }
}
