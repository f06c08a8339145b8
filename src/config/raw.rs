//! The raw settings: the environment, with `local.settings.json`'s `Values` filling in what it
//! lacks, as text, before anything is parsed.

use super::*;

/// The raw settings: environment first, then `local.settings.json` `Values`.
#[derive(Clone, Default)]
pub struct RawSettings {
    values: BTreeMap<String, String>,
    /// The names whose value came from the local settings file, not the environment.
    from_file: std::collections::BTreeSet<String>,
    /// Problems found while reading the sources themselves (an unreadable settings file).
    pub(super) source_problems: Vec<Problem>,
}

impl fmt::Debug for RawSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: values may be secrets.
        f.debug_struct("RawSettings").field("names", &self.values.keys().collect::<Vec<_>>()).finish()
    }
}

impl RawSettings {
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            values: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            from_file: Default::default(),
            source_problems: vec![],
        }
    }

    /// The process environment, completed by the `Values` of the local settings file if it exists.
    pub fn from_environment(local_settings: Option<&Path>) -> Self {
        let mut raw = Self::from_pairs(std::env::vars());
        let path = local_settings.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("local.settings.json"));
        let explicit = local_settings.is_some();
        match std::fs::read_to_string(&path) {
            Ok(text) => raw.fill_from_local_settings(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(e) => raw.source_problems.push(Problem {
                setting: path.display().to_string(),
                message: format!("cannot read the local settings file: {e}"),
                example: None,
            }),
        }
        raw
    }

    pub(super) fn fill_from_local_settings(&mut self, path: &Path, text: &str) {
        let problem = |message: String| Problem { setting: path.display().to_string(), message, example: None };
        let doc: serde_json::Value = match serde_json::from_str(text) {
            Ok(doc) => doc,
            Err(e) => return self.source_problems.push(problem(format!("not valid JSON: {e}"))),
        };
        if doc.get("IsEncrypted").and_then(|v| v.as_bool()) == Some(true) {
            return self.source_problems.push(problem(
                "IsEncrypted is true; decrypt it with `func settings decrypt` or write the values in plain".into(),
            ));
        }
        let Some(values) = doc.get("Values").and_then(|v| v.as_object()) else {
            return self.source_problems.push(problem("has no \"Values\" object".into()));
        };
        for (name, value) in values {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => {
                    self.source_problems.push(problem(format!("Values.{name} must be a string")));
                    continue;
                }
            };
            if !self.values.contains_key(name) {
                self.values.insert(name.clone(), text);
                self.from_file.insert(name.clone());
            }
        }
    }

    /// Sets `name`, whatever the environment or the file said (the demo's own settings).
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
    }

    /// Sets `name` unless it is already set.
    pub fn set_default(&mut self, name: &str, value: &str) {
        if self.get(name).is_none() {
            self.set(name, value);
        }
    }

    /// Sets `name` unless the environment set it: a value from the local settings file (a
    /// template committed for the Functions tools) does not count as the user's choice.
    pub fn set_unless_environment(&mut self, name: &str, value: &str) {
        if self.get(name).is_none() || self.from_file.contains(name) {
            self.set(name, value);
            self.from_file.remove(name);
        }
    }

    /// The names set (not blank) that start with `prefix`, in order.
    pub fn names_starting_with<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.values.keys().filter(move |k| k.starts_with(prefix) && self.get(k).is_some()).map(String::as_str)
    }

    /// A setting's value; blank counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}
