//! Blobs in the embedded store: rows of the database, named as Azure names blobs.

use super::*;

fn validate_blob_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(StoreError::invalid(
            "blob name",
            format!("{name:?} must be 1-1024 characters, no control characters"),
        ));
    }
    Ok(())
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn put(
        &self,
        container: &str,
        name: &str,
        content: &[u8],
        content_type: &str,
        only_if_absent: bool,
    ) -> StoreResult<ETag> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        let (container, name, content, content_type) =
            (container.to_owned(), name.to_owned(), content.to_vec(), content_type.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            if only_if_absent {
                let exists: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM blobs WHERE container = ?1 AND name = ?2)",
                        params![container, name],
                        |row| row.get(0),
                    )
                    .map_err(db_error)?;
                if exists {
                    return Err(StoreError::AlreadyExists { what: format!("blob {container}/{name}") });
                }
            }
            let etag = new_etag();
            tx.execute(
                "INSERT OR REPLACE INTO blobs (container, name, content, content_type, etag, modified)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![container, name, content, content_type, etag.0, Utc::now().to_rfc3339()],
            )
            .map_err(db_error)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn get(&self, container: &str, name: &str) -> StoreResult<Option<Blob>> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        let (container, name) = (container.to_owned(), name.to_owned());
        self.read(move |conn, _| {
            conn.query_row(
                "SELECT content, content_type, etag FROM blobs WHERE container = ?1 AND name = ?2",
                params![container, name],
                |row| Ok(Blob { content: row.get(0)?, content_type: row.get(1)?, etag: ETag(row.get(2)?) }),
            )
            .optional()
            .map_err(db_error)
        })
        .await
    }

    async fn delete(&self, container: &str, name: &str) -> StoreResult<()> {
        validate_container_name("container", container)?;
        validate_blob_name(name)?;
        let (container, name) = (container.to_owned(), name.to_owned());
        self.run(move |conn, _| {
            let deleted = conn
                .execute("DELETE FROM blobs WHERE container = ?1 AND name = ?2", params![container, name])
                .map_err(db_error)?;
            if deleted == 0 {
                return Err(StoreError::NotFound { what: format!("blob {container}/{name}") });
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, container: &str, prefix: &str) -> StoreResult<Vec<String>> {
        validate_container_name("container", container)?;
        let (container, prefix) = (container.to_owned(), prefix.to_owned());
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name FROM blobs WHERE container = ?1 AND substr(name, 1, ?3) = ?2 ORDER BY name",
                )
                .map_err(db_error)?;
            let names = stmt
                .query_map(params![container, prefix, prefix.chars().count() as i64], |row| row.get(0))
                .map_err(db_error)?;
            names.collect::<Result<Vec<String>, _>>().map_err(db_error)
        })
        .await
    }
}
