//! Tables in the embedded store: one SQLite table of entities, conditional writes as Azure
//! Tables does them.

use super::*;

#[async_trait]
impl TableStore for LocalStore {
    async fn get(&self, table: Table, pk: &str, rk: &str) -> StoreResult<Option<Entity>> {
        check_entity(pk, rk, None)?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.read(move |conn, _| {
            let row = conn
                .query_row(
                    "SELECT pk, rk, etag, ts, props FROM entities WHERE tbl = ?1 AND pk = ?2 AND rk = ?3",
                    params![table.name(), pk, rk],
                    row_to_entity,
                )
                .optional()
                .map_err(db_error)?;
            row.map(build_entity).transpose()
        })
        .await
    }

    async fn insert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        check_entity(pk, rk, Some(&props))?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            if current_etag(&tx, table, &pk, &rk)?.is_some() {
                return Err(StoreError::AlreadyExists { what: entity_name(table, &pk, &rk) });
            }
            let etag = write_entity(&tx, table, &pk, &rk, &props)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn update(
        &self,
        table: Table,
        pk: &str,
        rk: &str,
        props: Map<String, Value>,
        condition: IfMatch,
    ) -> StoreResult<ETag> {
        check_entity(pk, rk, Some(&props))?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let current = current_etag(&tx, table, &pk, &rk)?;
            check_condition(current.as_deref(), &condition, || entity_name(table, &pk, &rk))?;
            let etag = write_entity(&tx, table, &pk, &rk, &props)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn upsert(&self, table: Table, pk: &str, rk: &str, props: Map<String, Value>) -> StoreResult<ETag> {
        check_entity(pk, rk, Some(&props))?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let etag = write_entity(&tx, table, &pk, &rk, &props)?;
            tx.commit().map_err(db_error)?;
            Ok(etag)
        })
        .await
    }

    async fn delete(&self, table: Table, pk: &str, rk: &str, condition: IfMatch) -> StoreResult<()> {
        check_entity(pk, rk, None)?;
        let (pk, rk) = (pk.to_owned(), rk.to_owned());
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let current = current_etag(&tx, table, &pk, &rk)?;
            check_condition(current.as_deref(), &condition, || entity_name(table, &pk, &rk))?;
            tx.execute("DELETE FROM entities WHERE tbl = ?1 AND pk = ?2 AND rk = ?3", params![table.name(), pk, rk])
                .map_err(db_error)?;
            tx.commit().map_err(db_error)
        })
        .await
    }

    async fn query(
        &self,
        table: Table,
        pk: &str,
        range: &RowRange,
        limit: usize,
        continuation: Option<&str>,
    ) -> StoreResult<Page> {
        validate_key("partition key", pk)?;
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let after = continuation.map(decode_continuation).transpose()?;
        let (pk, range) = (pk.to_owned(), range.clone());
        self.read(move |conn, _| {
            // Fetch one extra row to learn whether another page follows.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT pk, rk, etag, ts, props FROM entities
                     WHERE tbl = ?1 AND pk = ?2
                       AND (?3 IS NULL OR rk >= ?3) AND (?4 IS NULL OR rk < ?4) AND (?5 IS NULL OR rk > ?5)
                     ORDER BY rk LIMIT ?6",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(params![table.name(), pk, range.start, range.end, after, (limit + 1) as i64], row_to_entity)
                .map_err(db_error)?;
            let mut entities = Vec::with_capacity(limit + 1);
            for row in rows {
                entities.push(build_entity(row.map_err(db_error)?)?);
            }
            Ok(page_of(entities, limit))
        })
        .await
    }
}
