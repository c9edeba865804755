//! A local stand-in for the Hugging Face hub, for download tests over loopback.
//!
//! It serves a folder laid out as `ROOT/OWNER/NAME/FILE` at
//! `/{owner}/{name}/resolve/{main|COMMIT}/{file}` the way the real hub answers
//! `huggingface_hub`: every reply carries `X-Repo-Commit`; plain files get an
//! `ETag` and a `Content-Length`; `*.safetensors` files are "LFS" files, answered
//! with a `302` to an absolute `/cdn/{etag}` address plus `X-Linked-Etag` and
//! `X-Linked-Size` (the `Content-Length` of that reply is the redirect body's, as
//! on the real hub). `Range: bytes=N-` is honoured with `206 Partial Content`;
//! a missing file is a `404` with `X-Error-Code: EntryNotFound`, a missing repo a
//! `404` with `X-Error-Code: RepoNotFound`.
//!
//! Test hooks: cut the next body of a file after N bytes (an interrupted
//! download), ignore `Range` (a server that restarts from byte 0), stop the
//! server (connections are then refused), and a log of every request.
//!
//! Plain `std` only, so any test crate of the workspace can include it with
//! `#[path = "…/tests/support/mock_hub.rs"] mod mock_hub;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    root: PathBuf,
    base: String,
    log: Mutex<Vec<Request>>,
    /// (file name, bytes): the next body served for that file stops after that many bytes.
    cut: Mutex<Option<(String, usize)>>,
    ignore_range: AtomicBool,
    /// CDN etag -> file on disk, filled when a redirect is issued.
    cdn: Mutex<HashMap<String, PathBuf>>,
}

/// A running mock hub; stopped on drop.
pub struct MockHub {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// 64-bit FNV-1a, seeded: enough to give each content a stable, distinct hex name.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn hex_digest(bytes: &[u8], len: usize) -> String {
    let mut out = String::new();
    let mut seed = 0u64;
    while out.len() < len {
        out.push_str(&format!("{:016x}", fnv(seed, bytes)));
        seed += 1;
    }
    out.truncate(len);
    out
}

impl MockHub {
    /// The commit hash the mock reports for a repo (`owner/name`).
    pub fn commit(repo: &str) -> String {
        hex_digest(format!("commit:{repo}").as_bytes(), 40)
    }

    /// The blob name a client must store a file under: the git-style `ETag` of a
    /// plain file, the `X-Linked-Etag` (64 hex, like a sha256) of a `*.safetensors` file.
    pub fn etag(file_name: &str, content: &[u8]) -> String {
        if is_lfs(file_name) {
            hex_digest(content, 64)
        } else {
            hex_digest(content, 40)
        }
    }

    /// Serve `root` on a free loopback port.
    pub fn start(root: &Path) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            root: root.to_path_buf(),
            base: format!("http://{addr}"),
            ..State::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || {
                        let _ = serve(&state, conn);
                    });
                }
                // `listener` drops here: later connections are refused.
            })
        };
        MockHub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, to use as the hub endpoint.
    pub fn url(&self) -> String {
        self.state.base.clone()
    }

    /// The next body served for `file_name` (through `resolve/` or the CDN)
    /// announces its full length but stops after `after` bytes, and the
    /// connection is closed: an interrupted download.
    pub fn cut_next_body(&self, file_name: &str, after: usize) {
        *self.state.cut.lock().unwrap() = Some((file_name.to_string(), after));
    }

    /// Answer ranged requests with the whole file and `200`, as servers without
    /// range support do.
    pub fn ignore_range(&self, yes: bool) {
        self.state.ignore_range.store(yes, Ordering::SeqCst);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many `method` requests had a path starting with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .count()
    }

    /// Stop accepting; later connections are refused.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept so that the loop sees the flag.
            let _ = TcpStream::connect(self.addr);
            let _ = thread.join();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_lfs(file_name: &str) -> bool {
    file_name.ends_with(".safetensors")
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Length announced in `Content-Length`; differs from `body.len()` only for HEAD.
    length: usize,
    /// The file served, for the cut hook.
    file: Option<String>,
}

impl Reply {
    fn new(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            length: body.len(),
            body,
            file: None,
        }
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

fn serve(state: &State, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim().to_string();
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value),
                "authorization" => authorization = Some(value),
                _ => {}
            }
        }
    }
    state.log.lock().unwrap().push(Request {
        method: method.clone(),
        path: target.clone(),
        range: range.clone(),
        authorization,
    });

    let mut reply = route(state, &target, range.as_deref());
    if method == "HEAD" {
        reply.body.clear();
    }
    let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.length
    ));
    conn.write_all(head.as_bytes())?;
    let mut body: &[u8] = &reply.body;
    if let Some(file) = &reply.file {
        let mut cut = state.cut.lock().unwrap();
        if !body.is_empty() && cut.as_ref().is_some_and(|(name, _)| name == file) {
            let (_, after) = cut.take().unwrap();
            body = &body[..after.min(body.len())];
        }
    }
    conn.write_all(body)?;
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}

/// Parse `bytes=N-` (or `bytes=N-M`, the end is ignored: clients here resume to the end).
fn range_start(range: &str) -> Option<usize> {
    let spec = range.strip_prefix("bytes=")?;
    let (start, _) = spec.split_once('-')?;
    start.trim().parse().ok()
}

fn content_reply(state: &State, bytes: Vec<u8>, range: Option<&str>, file: &str) -> Reply {
    let total = bytes.len();
    let start = range
        .filter(|_| !state.ignore_range.load(Ordering::SeqCst))
        .and_then(range_start);
    let mut reply = match start {
        Some(start) if start >= total => {
            Reply::new(416, Vec::new()).header("Content-Range", format!("bytes */{total}"))
        }
        Some(start) => Reply::new(206, bytes[start..].to_vec()).header(
            "Content-Range",
            format!("bytes {start}-{}/{total}", total - 1),
        ),
        None => Reply::new(200, bytes),
    };
    reply.file = Some(file.to_string());
    reply.header("Accept-Ranges", "bytes")
}

fn not_found(code: &str) -> Reply {
    Reply::new(404, b"not found".to_vec()).header("X-Error-Code", code)
}

fn route(state: &State, target: &str, range: Option<&str>) -> Reply {
    if let Some(etag) = target.strip_prefix("/cdn/") {
        let path = state.cdn.lock().unwrap().get(etag).cloned();
        return match path.and_then(|p| std::fs::read(&p).ok().map(|b| (p, b))) {
            Some((path, bytes)) => {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                content_reply(state, bytes, range, &name).header("ETag", format!("\"{etag}\""))
            }
            None => Reply::new(404, Vec::new()),
        };
    }
    // /{owner}/{name}/resolve/{revision}/{file}
    let segments: Vec<&str> = target.trim_start_matches('/').split('/').collect();
    let [owner, name, "resolve", revision, file] = segments[..] else {
        return Reply::new(404, Vec::new());
    };
    let repo = format!("{owner}/{name}");
    let repo_dir = state.root.join(owner).join(name);
    if owner.contains("..") || name.contains("..") || file.contains("..") || !repo_dir.is_dir() {
        return not_found("RepoNotFound");
    }
    let commit = MockHub::commit(&repo);
    if revision != "main" && revision != commit {
        return not_found("RevisionNotFound");
    }
    let path = repo_dir.join(file);
    let Ok(bytes) = std::fs::read(&path) else {
        return not_found("EntryNotFound").header("X-Repo-Commit", commit);
    };
    let etag = MockHub::etag(file, &bytes);
    if is_lfs(file) {
        state.cdn.lock().unwrap().insert(etag.clone(), path);
        let location = format!("{}/cdn/{etag}", state.base);
        let body = format!("Found. Redirecting to {location}").into_bytes();
        // The pointer file's own etag differs from the content's, as on the real hub.
        let pointer_etag = hex_digest(format!("pointer:{etag}").as_bytes(), 40);
        return Reply::new(302, body)
            .header("Location", location)
            .header("X-Repo-Commit", commit)
            .header("ETag", format!("\"{pointer_etag}\""))
            .header("X-Linked-Etag", format!("\"{etag}\""))
            .header("X-Linked-Size", bytes.len().to_string());
    }
    content_reply(state, bytes, range, file)
        .header("X-Repo-Commit", commit)
        .header("ETag", format!("\"{etag}\""))
}
