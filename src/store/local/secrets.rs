//! Secrets in the embedded store: versioned, encrypted at rest with `LOCAL_STORE_KEY`
//! (AES-GCM, the name and version as associated data).

use super::*;

fn secret_aad(name: &str, version: &str) -> Vec<u8> {
    format!("tcbridge-secret\0{name}\0{version}").into_bytes()
}

#[async_trait]
impl SecretStore for LocalStore {
    async fn set(&self, name: &str, value: &SecretString) -> StoreResult<String> {
        validate_secret_name(name)?;
        let name = name.to_owned();
        let value = value.clone();
        self.run(move |conn, cipher| {
            let version = hex::encode(rand::random::<[u8; 16]>());
            let sealed = cipher.seal(value.expose().as_bytes(), &secret_aad(&name, &version))?;
            conn.execute(
                "INSERT INTO secrets (name, version, created, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![name, version, Utc::now().to_rfc3339(), sealed],
            )
            .map_err(db_error)?;
            Ok(version)
        })
        .await
    }

    async fn get(&self, name: &str, version: Option<&str>) -> StoreResult<Option<SecretVersion>> {
        validate_secret_name(name)?;
        let (name, version) = (name.to_owned(), version.map(str::to_owned));
        self.read(move |conn, cipher| {
            let row: Option<(String, String, Vec<u8>)> = conn
                .query_row(
                    "SELECT version, created, sealed FROM secrets
                     WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY seq DESC LIMIT 1",
                    params![name, version],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(db_error)?;
            let Some((version, created, sealed)) = row else {
                return Ok(None);
            };
            let plain = cipher.open(&sealed, &secret_aad(&name, &version))?;
            let text =
                std::str::from_utf8(&plain).map_err(|_| StoreError::Backend("a stored secret is not UTF-8".into()))?;
            Ok(Some(SecretVersion { value: SecretString::new(text), version, created: parse_time(&created) }))
        })
        .await
    }

    async fn versions(&self, name: &str) -> StoreResult<Vec<String>> {
        validate_secret_name(name)?;
        let name = name.to_owned();
        self.read(move |conn, _| {
            let mut stmt =
                conn.prepare_cached("SELECT version FROM secrets WHERE name = ?1 ORDER BY seq").map_err(db_error)?;
            let rows = stmt.query_map(params![name], |row| row.get(0)).map_err(db_error)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(db_error)
        })
        .await
    }

    async fn delete(&self, name: &str) -> StoreResult<()> {
        validate_secret_name(name)?;
        let name = name.to_owned();
        self.run(move |conn, _| {
            let deleted = conn.execute("DELETE FROM secrets WHERE name = ?1", params![name]).map_err(db_error)?;
            if deleted == 0 {
                return Err(StoreError::NotFound { what: format!("secret {name}") });
            }
            Ok(())
        })
        .await
    }
}
