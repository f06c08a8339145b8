//! What a Key Vault call was doing, and what the service said when it refused: the parts of an
//! error message that name the operation, the codes and the role to grant.

use super::*;

/// What a call was doing, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Get,
    List,
    Set,
    Delete,
    GetDeleted,
    Purge,
}

impl Op {
    pub(super) fn verb(self) -> &'static str {
        match self {
            Op::Get => "read",
            Op::List => "list the versions of",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::GetDeleted => "check the deletion of",
            Op::Purge => "purge",
        }
    }
}

/// The service's `{"error":{"code","message","innererror":{"code"}}}`, as far as present.
#[derive(Debug, Default)]
pub(super) struct ServiceError {
    pub(super) status: Option<u16>,
    pub(super) codes: Vec<String>,
    pub(super) message: Option<String>,
}

impl ServiceError {
    pub(super) fn of(err: &azure_core::Error) -> Self {
        let ErrorKind::HttpResponse { status, error_code, raw_response } = err.kind() else {
            return Self::default();
        };
        let mut detail = ServiceError { status: Some(u16::from(*status)), ..Default::default() };
        let parsed = raw_response
            .as_ref()
            .and_then(|r| serde_json::from_slice::<KeyVaultError>(r.body()).ok())
            .and_then(|e| e.error);
        if let Some(error) = parsed {
            detail.message = error.message.clone();
            let mut next = Some(Box::new(error));
            while let Some(e) = next {
                detail.codes.extend(e.code.clone());
                next = e.inner_error;
            }
        }
        if detail.codes.is_empty() {
            detail.codes.extend(error_code.clone());
        }
        detail
    }

    pub(super) fn is(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }

    /// `Forbidden/ForbiddenByRbac: message` on one line.
    pub(super) fn summary(&self) -> String {
        let codes = if self.codes.is_empty() {
            self.status.map(|s| format!("HTTP {s}")).unwrap_or_else(|| "error".into())
        } else {
            self.codes.join("/")
        };
        match &self.message {
            Some(m) => {
                let one_line = m.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>();
                format!("{codes}: {}", one_line.join(" | "))
            }
            None => codes,
        }
    }
}
