//! Encryption at rest for the embedded store's secrets: AES-256-GCM.
//!
//! The key comes from `LOCAL_STORE_KEY` (base64 of 32 bytes) or is generated once into
//! `<store>/store.key` with mode 0600. Each ciphertext is bound to its secret name and version
//! through the associated data, so a row copied into another slot fails to decrypt.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use zeroize::Zeroizing;

use super::{StoreError, StoreResult};
use crate::secret::SecretString;

const NONCE_LEN: usize = 12;
pub const KEY_FILE: &str = "store.key";

pub struct SecretCipher {
    cipher: Aes256Gcm,
}

impl SecretCipher {
    /// The key from the setting when given, else the one in the key file, created on first use.
    pub fn load(dir: &Path, configured: Option<&SecretString>) -> StoreResult<Self> {
        let key = match configured {
            Some(key) => decode_key(key.expose())
                .ok_or_else(|| StoreError::invalid("LOCAL_STORE_KEY", "must be the base64 of exactly 32 bytes"))?,
            None => load_or_create_key_file(&dir.join(KEY_FILE))?,
        };
        let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|_| StoreError::invalid("store key", "bad length"))?;
        Ok(Self { cipher })
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> StoreResult<Vec<u8>> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = nonce_bytes.to_vec();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce_bytes), Payload { msg: plaintext, aad })
            .map_err(|_| StoreError::Backend("encryption failed".into()))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> StoreResult<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Backend("stored secret is truncated".into()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad }).map(Zeroizing::new).map_err(
            |_| {
                StoreError::Backend(
                    "a stored secret cannot be decrypted: the store key is not the one it was written with \
                     (check LOCAL_STORE_KEY or the store.key file)"
                        .into(),
                )
            },
        )
    }
}

fn decode_key(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?);
    (bytes.len() == 32).then_some(bytes)
}

/// Reads the key file, or creates it without ever overwriting one that another process made
/// at the same moment: write a private temporary file, then hard-link it into place, which
/// fails if the name exists.
fn load_or_create_key_file(path: &Path) -> StoreResult<Zeroizing<Vec<u8>>> {
    if let Some(key) = read_key_file(path)? {
        return Ok(key);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let key: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&key[..]));
    let temp = dir.join(format!(".store.key.{}", hex::encode(rand::random::<[u8; 8]>())));
    write_private_file(&temp, encoded.as_bytes()).map_err(|e| io_error("create the store key file", &e))?;
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(Zeroizing::new(key.to_vec())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key_file(path)?.ok_or_else(|| StoreError::Backend("the store key file vanished".into()))
        }
        Err(e) => Err(io_error("create the store key file", &e)),
    }
}

fn read_key_file(path: &Path) -> StoreResult<Option<Zeroizing<Vec<u8>>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            decode_key(&text).map(Some).ok_or_else(|| {
                StoreError::Backend(format!(
                    "{} is not the base64 of 32 bytes; restore it or remove it",
                    path.display()
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read the store key file", &e)),
    }
}

/// Creates a file readable and writable by its owner only.
pub fn write_private_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

fn io_error(action: &str, e: &std::io::Error) -> StoreError {
    StoreError::Backend(format!("could not {action}: {e}"))
}
