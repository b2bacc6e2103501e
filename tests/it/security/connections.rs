//! Abuse of connections: slow headers, bodies that never come, idle
//! connections, the connection cap, and graceful shutdown.

use super::*;

/// Reads from `s` until the server closes the connection (EOF or reset);
/// returns what was read, or `None` if it is still open at `deadline`.
async fn read_until_closed(s: &mut tokio::net::TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_sending_half_a_request_line_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let app = spawn(|a| a.header_read_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // Slow headers: half a request line, then nothing.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    let got = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        got.is_some(),
        "a slow-headers connection was still open after 10 s"
    );
    // Nothing at all after connecting: closed too.
    let mut mute = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let got = read_until_closed(&mut mute, Duration::from_secs(10)).await;
    assert!(
        got.is_some(),
        "a silent connection was still open after 10 s"
    );
    // The service still answers.
    assert_eq!(call(&app, Method::GET, "/healthz", None, None).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_never_comes_gets_503_at_the_request_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = spawn(|a| a.request_timeout_secs = 1).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A complete head announcing a body that never arrives.
    let head = format!(
        "POST /v1/campaigns/{id}/claims HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"user_id\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Read until the answer's code shows up (the connection may stay open).
    use tokio::io::AsyncReadExt;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("request_timeout") {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => panic!("no answer within 10 s: {}", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    app.stop().await;
}

#[test]
fn connection_limits_are_checked_at_startup() {
    let mut a = ServeArgs::for_tests("postgres://x/y", "redis://x", "fc", "t");
    assert_eq!(a.validate(), Ok(()));
    a.idle_timeout_secs = a.request_timeout_secs;
    assert_eq!(a.validate(), Err(ConfigError::BadTimeouts));
    a.idle_timeout_secs = 15;
    a.request_timeout_secs = 5;
    assert_eq!(a.validate(), Err(ConfigError::BadTimeouts));
    a.idle_timeout_secs = 16;
    assert_eq!(a.validate(), Ok(()));
    a.header_read_timeout_secs = 0;
    assert_eq!(a.validate(), Err(ConfigError::BadTimeouts));
    a.header_read_timeout_secs = 1;
    a.max_connections = 0;
    assert_eq!(a.validate(), Err(ConfigError::NoConnections));
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_closes_the_rest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn(|a| a.header_read_timeout_secs = 2).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let connect = || tokio::net::TcpStream::connect(addr.clone());
    // Reads until `needle` shows up (deadline 10 s); what was read.
    async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(needle) {
            let mut buf = [0u8; 1024];
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!(
                    "{needle:?} not read ({other:?}): {}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
    // An idle keep-alive connection, and one stuck in its request line.
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut idle, "ok").await;
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    // A claim in flight: its handler is reading the body (100 Continue
    // says so) when the shutdown comes.
    let body = r#"{"user_id":"late"}"#;
    let mut busy = connect().await.unwrap();
    busy.write_all(
        format!(
            "POST /v1/campaigns/{id}/claims HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nexpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    read_until(&mut busy, "100 Continue").await;
    let stopping = tokio::spawn(app.stop());
    // The idle connection is closed at once, the slow one at its header
    // timeout; the claim in flight still gets its answer.
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(10))
            .await
            .is_some(),
        "the idle connection stayed open"
    );
    busy.write_all(body.as_bytes()).await.unwrap();
    let answer = read_until(&mut busy, "granted").await;
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "the slow connection stayed open"
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn beyond_the_connection_cap_a_client_waits_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn(|a| (a.max_connections, a.header_read_timeout_secs) = (1, 1)).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // The one slot: a client that says nothing (closed at its header
    // timeout).
    let first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The next one is accepted by the kernel's backlog, served later.
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut got))
        .await
        .expect("served within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // It was served only once the first had been closed: the first's end
    // of stream was already there (loopback delivers the server's FIN
    // before the second connection could even be accepted).
    let mut buf = [0u8; 16];
    match first.try_read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => {
            panic!("the first connection was still open when the second was served: {other:?}")
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_connection_without_traffic_is_closed_at_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    // The header timeout out of the way: only the idle timeout (the
    // shortest allowed, 16 s) can close these.
    let app = spawn(|a| {
        (
            a.header_read_timeout_secs,
            a.request_timeout_secs,
            a.idle_timeout_secs,
        ) = (3600, 1, 16)
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut kept, Duration::from_secs(40))
        .await
        .expect("the kept-alive connection was closed within 40 s");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(10))
            .await
            .is_some(),
        "the silent connection was still open"
    );
    app.stop().await;
}
