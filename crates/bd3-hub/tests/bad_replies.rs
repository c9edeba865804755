//! Malformed or hostile server replies end in a one-line error, never a panic,
//! a path outside the cache, or a complete-looking blob.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use bd3_hub::{Hub, HubError, RepoId};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A loopback server answering every request with `reply(method, path, port)`,
/// raw bytes written as is. It runs until the test process ends.
fn serve(reply: impl Fn(&str, &str, u16) -> Vec<u8> + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reply = Arc::new(reply);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let reply = Arc::clone(&reply);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if header.trim().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let _ = conn.write_all(&reply(&method, &path, port));
                let _ = conn.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8], head: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

fn plain_headers(commit: &str, etag: &str, len: usize) -> Vec<(&'static str, String)> {
    vec![
        ("X-Repo-Commit", commit.to_string()),
        ("ETag", etag.to_string()),
        ("Content-Length", len.to_string()),
    ]
}

/// Run a model load against `url` in a fresh cache; return the error and the cache root.
fn load_err(url: &str) -> (HubError, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::with(url, tmp.path(), false).unwrap();
    let err = hub
        .model(&RepoId::parse("acme/evil").unwrap(), "main")
        .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
    (err, tmp)
}

/// Every file under `root`, relative; the cache must stay inside its folder.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            out.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
    out
}

#[test]
fn a_path_like_commit_is_refused() {
    let url = serve(|m, _, _| {
        response(
            "200 OK",
            &plain_headers("../../../escape", "\"abc\"", 3),
            b"abc",
            m == "HEAD",
        )
    });
    let (err, tmp) = load_err(&url);
    assert!(matches!(err, HubError::BadReply { .. }), "{err:?}");
    assert!(tree(tmp.path()).iter().all(|p| !p.contains("escape")));
    assert!(!tmp.path().parent().unwrap().join("escape").exists());
}

#[test]
fn a_path_like_or_missing_etag_is_refused() {
    for etag in ["\"../../x\"", "\"a/b\"", "\"\""] {
        let url = serve(move |m, _, _| {
            response(
                "200 OK",
                &plain_headers(COMMIT, etag, 3),
                b"abc",
                m == "HEAD",
            )
        });
        let (err, _tmp) = load_err(&url);
        assert!(matches!(err, HubError::BadReply { .. }), "{etag}: {err:?}");
    }
    let url = serve(|m, _, _| {
        let headers = [
            ("X-Repo-Commit", COMMIT.to_string()),
            ("Content-Length", "3".to_string()),
        ];
        response("200 OK", &headers, b"abc", m == "HEAD")
    });
    let (err, _tmp) = load_err(&url);
    assert!(err.to_string().contains("ETag"), "{err}");
}

#[test]
fn a_missing_commit_or_a_bad_size_is_refused() {
    let url = serve(|m, _, _| {
        let headers = [
            ("ETag", "\"abc\"".to_string()),
            ("Content-Length", "3".to_string()),
        ];
        response("200 OK", &headers, b"abc", m == "HEAD")
    });
    let (err, _tmp) = load_err(&url);
    assert!(err.to_string().contains("X-Repo-Commit"), "{err}");

    let url = serve(|m, _, _| {
        let mut headers = plain_headers(COMMIT, "\"abc\"", 3);
        headers.push(("X-Linked-Size", "lots".to_string()));
        response("200 OK", &headers, b"abc", m == "HEAD")
    });
    let (err, _tmp) = load_err(&url);
    assert!(matches!(err, HubError::BadReply { .. }), "{err:?}");
}

#[test]
fn redirect_loops_end_in_an_error() {
    // HEAD: a relative redirect to itself.
    let url = serve(|m, path, _| {
        let headers = [
            ("Location", path.to_string()),
            ("Content-Length", "0".to_string()),
        ];
        response("302 Found", &headers, b"", m == "HEAD")
    });
    let (err, _tmp) = load_err(&url);
    assert!(err.to_string().contains("redirect"), "{err}");

    // GET: the CDN redirects to itself forever.
    let url = serve(|m, path, port| {
        let cdn = format!("http://127.0.0.1:{port}/cdn/x");
        let mut headers = vec![("Location", cdn), ("Content-Length", "0".to_string())];
        if !path.starts_with("/cdn/") {
            headers.extend([
                ("X-Repo-Commit", COMMIT.to_string()),
                ("X-Linked-Etag", "\"abcd\"".to_string()),
                ("X-Linked-Size", "4".to_string()),
            ]);
        }
        response("302 Found", &headers, b"", m == "HEAD")
    });
    let (err, tmp) = load_err(&url);
    assert!(matches!(err, HubError::Http { .. }), "{err:?}");
    assert!(!tmp.path().join("models--acme--evil/blobs/abcd").exists());
}

#[test]
fn bodies_of_the_wrong_length_leave_no_blob() {
    // Announced 10 bytes by HEAD, the GET announces 20.
    let url = serve(|m, _, _| {
        let len = if m == "HEAD" { 10 } else { 20 };
        response(
            "200 OK",
            &plain_headers(COMMIT, "\"e1\"", len),
            &[7u8; 20],
            m == "HEAD",
        )
    });
    let (err, tmp) = load_err(&url);
    assert!(matches!(err, HubError::BadReply { .. }), "{err:?}");
    assert!(!tmp.path().join("models--acme--evil/blobs/e1").exists());

    // Announced 10, the body stops after 5: kept as .incomplete, no blob.
    let url = serve(|m, _, _| {
        response(
            "200 OK",
            &plain_headers(COMMIT, "\"e2\"", 10),
            &[7u8; 5],
            m == "HEAD",
        )
    });
    let (err, tmp) = load_err(&url);
    assert!(
        matches!(
            err,
            HubError::Truncated { .. } | HubError::Interrupted { .. }
        ),
        "{err:?}"
    );
    let blobs = tmp.path().join("models--acme--evil/blobs");
    assert!(!blobs.join("e2").exists());
    assert_eq!(
        std::fs::read(blobs.join("e2.incomplete")).unwrap(),
        [7u8; 5]
    );

    // Announced 4 by HEAD, the GET body has no length and runs on: discarded.
    let url = serve(|m, _, _| {
        if m == "HEAD" {
            response("200 OK", &plain_headers(COMMIT, "\"e3\"", 4), b"", true)
        } else {
            let headers = [("X-Repo-Commit", COMMIT.to_string())];
            response("200 OK", &headers, &[1u8; 64], false)
        }
    });
    let (err, tmp) = load_err(&url);
    assert!(matches!(err, HubError::Oversized { .. }), "{err:?}");
    let blobs = tmp.path().join("models--acme--evil/blobs");
    assert!(!blobs.join("e3").exists() && !blobs.join("e3.incomplete").exists());
}

#[test]
fn garbage_and_server_errors_are_errors() {
    let url = serve(|_, _, _| b"HELLO THERE\r\n\r\n".to_vec());
    let (err, _tmp) = load_err(&url);
    assert!(matches!(err, HubError::Http { .. }), "{err:?}");

    let url = serve(|m, _, _| {
        response(
            "500 Internal Server Error",
            &[("Content-Length", "0".to_string())],
            b"",
            m == "HEAD",
        )
    });
    let (err, _tmp) = load_err(&url);
    assert!(
        matches!(err, HubError::HttpStatus { status: 500, .. }),
        "{err:?}"
    );

    // A redirect without a Location.
    let url = serve(|m, _, _| {
        response(
            "302 Found",
            &[("Content-Length", "0".to_string())],
            b"",
            m == "HEAD",
        )
    });
    let (err, _tmp) = load_err(&url);
    assert!(err.to_string().contains("Location"), "{err}");
}
