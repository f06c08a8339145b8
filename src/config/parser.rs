//! The parser every section reads its settings through: typed reads (URLs, choices, numbers,
//! flags, lists, secrets) that collect problems instead of stopping at the first.

use super::*;

/// Collects problems while parsing, so all of them are reported together.
pub(super) struct Parser<'a> {
    pub(super) raw: &'a RawSettings,
    pub(super) problems: Vec<Problem>,
    /// Every secret value read, so the log scrubber can be told of each one.
    pub(super) secrets: Vec<SecretString>,
    /// The names read (tests only).
    #[cfg(test)]
    pub(super) read: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl<'a> Parser<'a> {
    pub(super) fn new(raw: &'a RawSettings) -> Self {
        Parser {
            raw,
            problems: raw.source_problems.clone(),
            secrets: Vec::new(),
            #[cfg(test)]
            read: Default::default(),
        }
    }

    pub(super) fn problem(&mut self, setting: &str, message: impl Into<String>, example: &str) {
        self.problems.push(Problem {
            setting: setting.to_owned(),
            message: message.into(),
            example: (!example.is_empty()).then(|| example.to_owned()),
        });
    }

    /// The raw value of a setting from the table (`settings.tsv`); every read goes through
    /// here, so a name missing from the table fails the tests, and the names read are kept for
    /// the test that the table lists nothing the parser does not read.
    pub(super) fn get(&self, name: &str) -> Option<&'a str> {
        debug_assert!(table::is_known(name), "{name} is read but not listed in src/config/settings.tsv");
        #[cfg(test)]
        self.read.borrow_mut().insert(name.to_owned());
        self.raw.get(name)
    }

    pub(super) fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    /// A secret setting; only the names the table marks secret are read this way.
    pub(super) fn secret(&mut self, name: &str) -> Option<SecretString> {
        debug_assert!(table::is_secret(name), "{name} is not marked secret in src/config/settings.tsv");
        let value = self.get(name).map(SecretString::new)?;
        self.secrets.push(value.clone());
        Some(value)
    }

    /// Every setting of a family the table names `PREFIX*`, read as secrets, by name.
    pub(super) fn secret_family(&mut self, prefix: &str) -> BTreeMap<String, SecretString> {
        let names: Vec<String> = self.raw.names_starting_with(prefix).map(str::to_owned).collect();
        #[cfg(test)]
        self.read.borrow_mut().insert(format!("{prefix}*"));
        names.into_iter().filter_map(|name| self.secret(&name).map(|value| (name, value))).collect()
    }

    pub(super) fn list(&self, name: &str, separators: &[char]) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(separators).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// An absolute `https` URL (or `http` to a loopback host, for local servers and tests).
    pub(super) fn url(&mut self, name: &str, example: &str) -> Option<Url> {
        let text = self.get(name)?;
        match Url::parse(text) {
            Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url)) => {
                if url.username() != "" || url.password().is_some() {
                    self.problem(name, "must not carry a user name or password", example);
                    return None;
                }
                Some(url)
            }
            Ok(url) if url.scheme() == "http" => {
                self.problem(name, "must use https (plain http is allowed only for localhost)", example);
                None
            }
            Ok(_) | Err(_) => {
                self.problem(name, format!("{text:?} is not an absolute https URL"), example);
                None
            }
        }
    }

    pub(super) fn choice<T: Copy>(&mut self, name: &str, default: T, options: &[(&str, T)]) -> T {
        let Some(text) = self.get(name) else { return default };
        if let Some((_, value)) = options.iter().find(|(key, _)| key.eq_ignore_ascii_case(text)) {
            return *value;
        }
        let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
        self.problem(
            name,
            format!("{text:?} is not one of {}", names.join(", ")),
            names.first().copied().unwrap_or(""),
        );
        default
    }

    pub(super) fn number<T: FromStr + Copy + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> T {
        let Some(text) = self.get(name) else { return default };
        match text.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.problem(
                    name,
                    format!("{text:?} must be a whole number from {min} to {max}"),
                    &default.to_string(),
                );
                default
            }
        }
    }

    pub(super) fn flag(&mut self, name: &str) -> bool {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") | Some("0") | Some("no") => false,
            Some("true") | Some("1") | Some("yes") => true,
            Some(other) => {
                let other = other.to_owned();
                self.problem(name, format!("{other:?} must be true or false"), "true");
                false
            }
        }
    }
}

pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
