//! Queues in the embedded store: rows with a visibility time and a pop receipt, as Azure Queue
//! storage hands messages out.

use super::*;

fn new_receipt() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[async_trait]
impl QueueStore for LocalStore {
    async fn enqueue(&self, queue: &str, body: &str, delay: Duration) -> StoreResult<String> {
        validate_container_name("queue name", queue)?;
        if body.len() > MAX_QUEUE_MESSAGE_BYTES {
            return Err(StoreError::invalid(
                "queue message",
                format!("{} bytes is over the {} KiB limit", body.len(), MAX_QUEUE_MESSAGE_BYTES / 1024),
            ));
        }
        let (queue, body) = (queue.to_owned(), body.to_owned());
        self.run(move |conn, _| {
            let id = uuid_like();
            let now = now_ms();
            conn.execute(
                "INSERT INTO messages (queue, id, body, inserted_ms, visible_ms, dequeue_count, pop_receipt)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                params![queue, id, body, now, now + duration_ms(delay), new_receipt()],
            )
            .map_err(db_error)?;
            Ok(id)
        })
        .await
    }

    async fn dequeue(&self, queue: &str, max: usize, visibility: Duration) -> StoreResult<Vec<QueueMessage>> {
        validate_container_name("queue name", queue)?;
        let queue = queue.to_owned();
        let max = max.clamp(1, 32); // Azure's per-call maximum.
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            let now = now_ms();
            let picked: Vec<(i64, String, String, i64, u32)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, id, body, inserted_ms, dequeue_count FROM messages
                         WHERE queue = ?1 AND visible_ms <= ?2 ORDER BY seq LIMIT ?3",
                    )
                    .map_err(db_error)?;
                let rows = stmt
                    .query_map(params![queue, now, max as i64], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
                    })
                    .map_err(db_error)?;
                rows.collect::<Result<_, _>>().map_err(db_error)?
            };
            let mut messages = Vec::with_capacity(picked.len());
            for (seq, id, body, inserted_ms, count) in picked {
                let receipt = new_receipt();
                tx.execute(
                    "UPDATE messages SET visible_ms = ?1, dequeue_count = dequeue_count + 1, pop_receipt = ?2
                     WHERE seq = ?3",
                    params![now + duration_ms(visibility), receipt, seq],
                )
                .map_err(db_error)?;
                messages.push(QueueMessage {
                    id,
                    pop_receipt: receipt,
                    dequeue_count: count + 1,
                    inserted_at: ms_to_time(inserted_ms),
                    body,
                });
            }
            tx.commit().map_err(db_error)?;
            Ok(messages)
        })
        .await
    }

    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> StoreResult<()> {
        validate_container_name("queue name", queue)?;
        let (queue, id, receipt) = (queue.to_owned(), id.to_owned(), pop_receipt.to_owned());
        self.run(move |conn, _| {
            let deleted = conn
                .execute(
                    "DELETE FROM messages WHERE queue = ?1 AND id = ?2 AND pop_receipt = ?3",
                    params![queue, id, receipt],
                )
                .map_err(db_error)?;
            if deleted == 0 {
                return Err(StoreError::NotFound { what: format!("message {id} with that pop receipt in {queue}") });
            }
            Ok(())
        })
        .await
    }

    async fn set_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
    ) -> StoreResult<String> {
        validate_container_name("queue name", queue)?;
        let (queue, id, receipt) = (queue.to_owned(), id.to_owned(), pop_receipt.to_owned());
        self.run(move |conn, _| {
            let fresh = new_receipt();
            let updated = conn
                .execute(
                    "UPDATE messages SET visible_ms = ?1, pop_receipt = ?2
                     WHERE queue = ?3 AND id = ?4 AND pop_receipt = ?5",
                    params![now_ms() + duration_ms(visibility), fresh, queue, id, receipt],
                )
                .map_err(db_error)?;
            if updated == 0 {
                return Err(StoreError::NotFound { what: format!("message {id} with that pop receipt in {queue}") });
            }
            Ok(fresh)
        })
        .await
    }

    async fn len(&self, queue: &str) -> StoreResult<usize> {
        validate_container_name("queue name", queue)?;
        let queue = queue.to_owned();
        self.read(move |conn, _| {
            conn.query_row("SELECT COUNT(*) FROM messages WHERE queue = ?1", params![queue], |row| row.get::<_, i64>(0))
                .map(|n| n as usize)
                .map_err(db_error)
        })
        .await
    }
}
