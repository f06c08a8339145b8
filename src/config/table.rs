//! The one table of settings (`settings.tsv`): every name the binary reads, the section that
//! parses it, and whether its value is secret. The secret list, the parser's check that it
//! reads only listed names, and `scripts/check-infra.py` (which settings the Bicep must set or
//! say why not) all come from it; a test proves the parser reads exactly these names.

use std::sync::LazyLock;

const TABLE: &str = include_str!("settings.tsv");

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingEntry {
    pub name: &'static str,
    /// `oauth`, `truecontext`, `store`, `webhook`, `service` (`src/config/<section>.rs`), `env`
    /// (read from the environment where it is needed: `RUST_LOG`), or `host` (set by the
    /// Functions host or the platform).
    pub section: &'static str,
    pub secret: bool,
}

static ENTRIES: LazyLock<Vec<SettingEntry>> = LazyLock::new(|| {
    TABLE
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with("name\t"))
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let (name, section, secret) = (columns.next()?, columns.next()?, columns.next()?);
            Some(SettingEntry { name, section, secret: secret == "yes" })
        })
        .collect()
});

static SECRET_NAMES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| ENTRIES.iter().filter(|e| e.secret).map(|e| e.name).collect());

/// Every setting, in the table's order (by section).
pub fn entries() -> &'static [SettingEntry] {
    &ENTRIES
}

/// The settings whose values are secret: the only ones read as secrets, never printed, and
/// registered with the log scrubber.
pub fn secret_names() -> &'static [&'static str] {
    &SECRET_NAMES
}

/// Whether `name` is a row's name, or of a family a row names with a trailing `*`
/// (`TRUECONTEXT_KEY_SECRET_*`: one setting per API-key connection).
fn names(row: &str, name: &str) -> bool {
    match row.strip_suffix('*') {
        Some(prefix) => name.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty()),
        None => row == name,
    }
}

pub fn is_known(name: &str) -> bool {
    ENTRIES.iter().any(|e| names(e.name, name))
}

pub fn is_secret(name: &str) -> bool {
    SECRET_NAMES.iter().any(|row| names(row, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_whole_and_named_once() {
        let rows = TABLE.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count() - 1;
        assert_eq!(entries().len(), rows, "a row without its three columns");
        let mut names: Vec<_> = entries().iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), entries().len(), "a setting listed twice");
        for e in entries() {
            assert!(
                ["oauth", "truecontext", "store", "webhook", "service", "env", "host"].contains(&e.section),
                "{}: unknown section {}",
                e.name,
                e.section
            );
        }
        assert!(is_secret("OAUTH_CLIENT_SECRET") && !is_secret("OAUTH_CLIENT_ID"));
        assert!(is_secret("TRUECONTEXT_KEY_SECRET_ACME") && !is_known("TRUECONTEXT_KEY_SECRET_"));
    }
}
