//! Issue 20: what one request from anywhere can cost a standalone server is bounded. A 16 MiB
//! anonymous form post to the callback once grew the server from 15 MB to 690 MB; a client that
//! sends its head slowly, or keeps a connection idle, held it for ever.
//!
//! The memory figures here are peak resident sizes read from /proc (`VmHWM`), not timings: the
//! bound is a regression guard (the README has the measured figures, from
//! `cargo bench --bench request_memory`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::harness::{client, Server};

const MIB: u64 = 1024 * 1024;

/// The process's peak resident size, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// `a&a&a&…`: the most pairs a body of `size` bytes can hold.
fn pairs_body(size: usize) -> Vec<u8> {
    b"a&".iter().copied().cycle().take(size).collect()
}

async fn post_callback(server: &Server, body: Vec<u8>, chunked: bool) -> Option<u16> {
    let request = client()
        .post(server.url("/api/callback"))
        .header("content-type", "application/x-www-form-urlencoded")
        .timeout(Duration::from_secs(60));
    let request = if chunked {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        request.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
    } else {
        request.body(body)
    };
    // The server answers 413 without reading the rest; the client may then fail to write it.
    request.send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn a_16_mib_anonymous_callback_post_costs_a_bounded_amount_of_memory() {
    let server = Server::standalone(&[]);
    let before = peak_rss(server.pid());
    let sends = (0..3).map(|i| post_callback(&server, pairs_body(16 * MIB as usize), i == 2));
    for status in futures::future::join_all(sends).await {
        assert!(matches!(status, None | Some(413)), "{status:?}");
    }
    let after = peak_rss(server.pid());
    assert!(after < before + 16 * MIB, "peak RSS grew from {} to {} MiB", before / MIB, after / MIB);
    // And a sign-in response of the ordinary size is still read.
    let ordinary = post_callback(&server, b"state=unknown&code=abc".to_vec(), false).await;
    assert_eq!(ordinary, Some(400), "read, and refused for its unknown state");
}

#[tokio::test]
async fn a_slow_or_idle_connection_is_closed_after_the_header_timeout() {
    let server = Server::standalone(&[("STANDALONE_HEADER_TIMEOUT_SECONDS", "1")]);
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(15), "the half-sent head was not cut off");

    // A keep-alive connection that goes quiet after a request is closed too.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    idle.write_all(b"GET /api/nothing HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    let _ = idle.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_one() {
    let server = Server::standalone(&[("STANDALONE_MAX_CONNECTIONS", "2"), ("STANDALONE_HEADER_TIMEOUT_SECONDS", "2")]);
    // Two connections hold both places with half-sent heads...
    let hold: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.write_all(b"GET /api/status HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a third waits until the header timeout frees one, and is then served.
    let started = Instant::now();
    let response = client().get(server.url("/api/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(started.elapsed() >= Duration::from_millis(1000), "served before a place was free");
    drop(hold);
}

/// Found by the outside review: clients that send requests and never read the answers held
/// every connection (hyper has no write deadline), and the server answered no one. A response
/// its client takes none of for the header timeout now ends that connection.
#[tokio::test]
async fn clients_that_never_read_their_answers_cannot_hold_the_server() {
    let server = Server::standalone(&[("STANDALONE_MAX_CONNECTIONS", "4"), ("STANDALONE_HEADER_TIMEOUT_SECONDS", "1")]);
    let port = server.port;
    // Each asks again and again for a long path (its 404 repeats it) and reads nothing.
    let request = format!("GET /api/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(60_000));
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || {
                let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
                for _ in 0..400 {
                    if stream.write_all(request.as_bytes()).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let answered = client()
        .get(server.url("/api/status"))
        .header("x-functions-key", crate::harness::TEST_FUNCTION_KEY)
        .timeout(Duration::from_secs(60))
        .send()
        .await;
    assert!(answered.is_ok(), "status was not answered while the hogs held on: {answered:?}");
    eprintln!("status answered {:?} after the hogs began", started.elapsed());
    for hog in hogs {
        hog.join().unwrap();
    }
    let (_, report) = server.status().await;
    assert!(report["webhook"]["connection_cap_reached"].as_u64().unwrap_or(0) >= 1, "{report:#}");
    assert!(report["summary"]["attention"].to_string().contains("every connection"), "{report:#}");
}
