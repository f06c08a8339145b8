//! Azure's naming rules for the names this app makes: blob containers and queues, and Key Vault
//! secrets. A leaf module, so that configuration can check a queue name the way the store will.

/// Azure container and queue names: 3-63 of lowercase letters, digits and single dashes, not
/// starting or ending with a dash.
pub fn is_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Connection ids: 1-64 letters, digits, `-`, `_`, `.`, starting with a letter or digit, so
/// that any id is safe in a table key, a blob path, a lease name and a page.
pub fn is_connection_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// TrueContext submission ids (digits in practice): 1-64 letters, digits, `-` or `_`. They go
/// into API paths, blob paths and table keys, so nothing that could split or escape one of
/// those (`/`, `\\`, `#`, `?`, `%`, a dot segment, a control character) is ever let through.
pub fn is_record_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// The first `chars` hex digits of `bytes` (a digest, say): a prefix taken by characters, so
/// no byte index is ever cut.
pub fn hex_prefix(bytes: &[u8], chars: usize) -> String {
    hex::encode(bytes).chars().take(chars).collect()
}

/// What a bad connection id is told.
pub const CONNECTION_ID_RULE: &str = "1-64 letters, digits, '-', '_' or '.', starting with a letter or digit";

/// Key Vault secret names: 1-127 of `[0-9a-zA-Z-]`.
pub fn is_secret_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The secret-store name for one of a connection's secrets (`kind` is a fixed word such as
/// `refresh-token`). Key Vault names allow only `[0-9a-zA-Z-]`, at most 127, and ignore case,
/// while connection ids are free text: a short lowercase id stays readable
/// (`refresh-token-c-default`); any other id is replaced by a hash of it
/// (`refresh-token-h-<40 hex>`). The `-c-`/`-h-` marker keeps the two forms from colliding.
pub fn connection_secret_name(kind: &str, connection_id: &str) -> String {
    debug_assert!(kind.chars().all(|c| c.is_ascii_lowercase() || c == '-') && kind.len() <= 40);
    let readable = (1..=63).contains(&connection_id.len())
        && connection_id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if readable {
        format!("{kind}-c-{connection_id}")
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(connection_id.as_bytes());
        format!("{kind}-h-{}", hex_prefix(&digest, 40))
    }
}

/// An identifier refused at the edge, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("a connection id is {CONNECTION_ID_RULE}")]
    Connection,
    #[error("a submission id is 1-64 letters, digits, '-' or '_'")]
    Record,
}

/// Declares a checked identifier: parsed where it comes in (a URL, a queue message, a command
/// line, a listed page); a value of it needs no check further on. It reads as the
/// text it holds (`Deref<Target = str>`), and serialises as that text; deserialising checks it.
macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident, $check:path, $error:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        /// As its text (`{:?}` in a message shows `"c1"`, as the string did).
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if $check(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err($error)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

checked_id!(
    /// A connection id ([`is_connection_id`]).
    ConnectionId,
    is_connection_id,
    IdError::Connection
);
checked_id!(
    /// A TrueContext submission id ([`is_record_id`]).
    RecordId,
    is_record_id,
    IdError::Record
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_secret_names_are_valid_distinct_and_readable_when_possible() {
        assert_eq!(connection_secret_name("refresh-token", "default"), "refresh-token-c-default");
        let odd = ["Default", "tenant/contoso", "ünïcödé", "a b", &"x".repeat(200), "", "c-default"];
        let mut names = std::collections::HashSet::new();
        names.insert(connection_secret_name("refresh-token", "default"));
        for id in odd {
            let name = connection_secret_name("refresh-token", id);
            assert!(is_secret_name(&name), "{id:?} gave {name:?}");
            assert!(names.insert(name.to_ascii_lowercase()), "{id:?} collides");
        }
        // Case-insensitive Key Vault: ids differing only in case must not share a secret.
        assert_ne!(
            connection_secret_name("refresh-token", "Prod").to_ascii_lowercase(),
            connection_secret_name("refresh-token", "prod").to_ascii_lowercase()
        );
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn checked_ids_parse_once_and_read_as_their_text() {
        let id = ConnectionId::parse("contoso-1").unwrap();
        assert_eq!(&*id, "contoso-1");
        assert_eq!(format!("{id} {id:?}"), "contoso-1 \"contoso-1\"");
        assert_eq!(serde_json::to_value(&id).unwrap(), "contoso-1");
        assert_eq!(ConnectionId::parse("../x"), Err(IdError::Connection));
        assert!(serde_json::from_value::<ConnectionId>("a/b".into()).is_err());
        assert_eq!(RecordId::parse("123").unwrap(), "123");
        assert_eq!(RecordId::parse("1.2"), Err(IdError::Record));
    }
}
