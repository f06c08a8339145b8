//! The in-process queue listener: redelivery after failure, backoff, the poison threshold.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use truecontext_bridge::handlers::{InvocationError, QueueInput};
use truecontext_bridge::standalone::QueueWorker;
use truecontext_bridge::store::{local, QueueStore};

fn worker(max: u32, fail_first: u32, seen: Arc<Mutex<Vec<u32>>>) -> QueueWorker {
    let calls = Arc::new(AtomicU32::new(0));
    QueueWorker {
        queue: "work".into(),
        max_dequeue_count: max,
        visibility_timeout: Duration::from_secs(30),
        retry_delay: Duration::ZERO,
        idle_poll: Duration::from_millis(10),
        handler: Arc::new(move |input: QueueInput| {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            seen.lock().unwrap().push(input.dequeue_count);
            Box::pin(async move {
                if call <= fail_first {
                    Err(InvocationError::Unavailable(format!("failure {call}")))
                } else {
                    Ok(())
                }
            })
        }),
    }
}

async fn drain(worker: &QueueWorker, queues: &dyn QueueStore, rounds: usize) {
    for _ in 0..rounds {
        worker.poll_once(queues).await.unwrap();
    }
}

#[tokio::test]
async fn a_message_that_fails_once_is_redelivered_and_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = worker(5, 1, seen.clone());
    stores.queues.enqueue("work", "hello", Duration::ZERO).await.unwrap();
    drain(&worker, stores.queues.as_ref(), 3).await;
    assert_eq!(*seen.lock().unwrap(), vec![1, 2], "delivered twice, with rising dequeue counts");
    assert_eq!(stores.queues.len("work").await.unwrap(), 0);
    assert_eq!(stores.queues.len("work-poison").await.unwrap(), 0);
}

#[tokio::test]
async fn a_message_that_always_fails_stops_at_the_poison_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = worker(4, u32::MAX, seen.clone());
    stores.queues.enqueue("work", "doomed", Duration::ZERO).await.unwrap();
    drain(&worker, stores.queues.as_ref(), 10).await;
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4], "exactly max_dequeue_count deliveries");
    assert_eq!(stores.queues.len("work").await.unwrap(), 0);
    let poisoned = stores.queues.dequeue("work-poison", 5, Duration::from_secs(5)).await.unwrap();
    assert_eq!(poisoned.len(), 1);
    assert_eq!(poisoned[0].body, "doomed");
}

#[tokio::test]
async fn a_failed_message_waits_out_its_retry_delay() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut worker = worker(5, u32::MAX, seen.clone());
    worker.retry_delay = Duration::from_secs(3600);
    stores.queues.enqueue("work", "later", Duration::ZERO).await.unwrap();
    drain(&worker, stores.queues.as_ref(), 3).await;
    assert_eq!(*seen.lock().unwrap(), vec![1], "hidden for the retry delay after the first failure");
    assert_eq!(stores.queues.len("work").await.unwrap(), 1, "still queued, not lost");
}

#[tokio::test]
async fn run_stops_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let worker = worker(5, 0, Arc::new(Mutex::new(Vec::new())));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(stores.queues.clone(), stop.clone()));
    stores.queues.enqueue("work", "one", Duration::ZERO).await.unwrap();
    for _ in 0..200 {
        if stores.queues.len("work").await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stores.queues.len("work").await.unwrap(), 0, "the running worker took the message");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("worker stops").unwrap();
}

/// Issue 20: a handler that panics failed the whole worker task, and every later message sat
/// in the queue while status looked healthy. Now the panic is that message's failure.
#[tokio::test]
async fn a_handler_that_panics_fails_its_message_alone() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = handled.clone();
    let worker = QueueWorker {
        queue: "work".into(),
        max_dequeue_count: 3,
        visibility_timeout: Duration::from_secs(30),
        retry_delay: Duration::ZERO,
        idle_poll: Duration::from_millis(10),
        handler: Arc::new(move |input: QueueInput| {
            seen.lock().unwrap().push(input.body.clone());
            Box::pin(async move {
                if input.body == "bomb" {
                    panic!("a bug in the handler");
                }
                Ok(())
            })
        }),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(stores.queues.clone(), stop.clone()));
    stores.queues.enqueue("work", "bomb", Duration::ZERO).await.unwrap();
    for _ in 0..300 {
        if stores.queues.len("work-poison").await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stores.queues.len("work-poison").await.unwrap(), 1, "retried, then poisoned");
    stores.queues.enqueue("work", "after", Duration::ZERO).await.unwrap();
    for _ in 0..300 {
        if stores.queues.len("work").await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stores.queues.len("work").await.unwrap(), 0, "the same worker handled the next message");
    assert_eq!(handled.lock().unwrap().iter().filter(|b| *b == "bomb").count(), 3);
    assert!(!task.is_finished());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("worker stops").unwrap();
}

/// Found by the outside review: a slow message held up the whole batch it came with, and every
/// message behind it, until it finished. Each message now has its own place.
#[tokio::test]
async fn a_slow_message_holds_up_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let stores = local::open(dir.path(), None).unwrap();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let done = finished.clone();
    let worker = QueueWorker {
        queue: "work".into(),
        max_dequeue_count: 3,
        visibility_timeout: Duration::from_secs(60),
        retry_delay: Duration::ZERO,
        idle_poll: Duration::from_millis(10),
        handler: Arc::new(move |input: QueueInput| {
            let done = done.clone();
            Box::pin(async move {
                if input.body == "slow" {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                done.lock().unwrap().push(input.body);
                Ok(())
            })
        }),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    stores.queues.enqueue("work", "slow", Duration::ZERO).await.unwrap();
    let task = tokio::spawn(worker.run(stores.queues.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stores.queues.enqueue("work", "fast", Duration::ZERO).await.unwrap();
    for _ in 0..600 {
        if finished.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*finished.lock().unwrap(), ["fast", "slow"], "the fast one did not wait for the slow one");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("worker stops").unwrap();
}
