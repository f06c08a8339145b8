//! The webhook flows of tests/suite/webhook_intake.rs again, on Azure Storage (Azurite): the
//! intake's conditional writes, the queue and the recovery pass behave the same on Table, Blob
//! and Queue storage as on the embedded store.

use std::sync::Arc;

use crate::harness::azurite::Azurite;
use crate::harness::hook::Hook;
use crate::webhook_intake as flows;

#[tokio::test]
async fn formats_on_azurite() {
    let azurite = Azurite::start();
    let hook = Hook::azurite(&azurite, &[("WEBHOOK_ID_FIELD", "submission.id")]);
    flows::each_format_lands_and_a_template_has_its_document_fetched_on(&hook).await;
}

#[tokio::test]
async fn duplicates_and_edits_on_azurite() {
    let azurite = Azurite::start();
    flows::duplicates_are_harmless_and_an_edit_is_processed_again_on(&Hook::azurite(&azurite, &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_on_azurite() {
    let azurite = Azurite::start();
    flows::fifty_concurrent_deliveries_on(Arc::new(Hook::azurite(&azurite, &[]))).await;
}

#[tokio::test]
async fn poison_and_replay_on_azurite() {
    let azurite = Azurite::start();
    let hook = Hook::azurite(&azurite, &[("QUEUE_MAX_DEQUEUE_COUNT", "3")]);
    flows::failing_processing_is_retried_poisoned_alerted_once_then_replayed_and_landed_on(&hook).await;
}

#[tokio::test]
async fn recovery_on_azurite() {
    let azurite = Azurite::start();
    let hook = Hook::azurite(&azurite, &[("WEBHOOK_RECOVERY_SECONDS", "1")]);
    flows::a_push_stranded_before_its_message_is_queued_by_the_recovery_pass_on(&hook).await;
}

#[tokio::test]
async fn push_and_pull_on_azurite() {
    let azurite = Azurite::start();
    flows::push_and_pull_meet_in_one_record_on(&Hook::azurite(&azurite, &[])).await;
}

#[tokio::test]
async fn bad_bodies_on_azurite() {
    let azurite = Azurite::start();
    let hook = Hook::azurite(&azurite, &[("WEBHOOK_MAX_BODY_BYTES", "2048")]);
    flows::bad_bodies_are_refused_with_their_reason_and_store_nothing_on(&hook).await;
}
