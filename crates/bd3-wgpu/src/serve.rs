//! `bd3-wgpu serve`: a small static file server on 127.0.0.1 for the demo page. It exposes exactly
//! `/` and `/index.html` (the repository's `index.html`), `/web/…` (the page's scripts, with the wasm
//! package in `web/pkg`) and a model folder at `/models/default/…` (plus any `--extra-model NAME=DIR`
//! at `/models/NAME/…`) — nothing else under `--root`. GET and HEAD only.
//!
//! What it guarantees against a hostile client or web page (tests/serve_security.rs checks each):
//! - no path leaves its folder: `..`, hidden names (`.git`, dotfiles) and symlinks whose target lies
//!   outside the served folder are refused; special files (FIFOs, devices) are never opened;
//! - the `Host` header must name the loopback address and port it bound (a DNS-rebinding page gets 421);
//! - a request head is at most `MAX_HEAD` bytes (request line `MAX_REQUEST_LINE`, `MAX_HEADERS`
//!   headers) and must arrive within `HEAD_DEADLINE` in total; writes time out after `WRITE_TIMEOUT`;
//! - at most `MAX_CONNECTIONS` connections are open (one thread each). When full, a new connection
//!   evicts the oldest one still sending its request head, so a flood of idle or half-sent
//!   connections cannot lock out a real client, exhaust threads or file descriptors; `accept` errors
//!   (EMFILE …) back off instead of spinning; a failed thread spawn drops that connection only.
//!
//! Why not an HTTP server crate: the well-kept small ones fall short of the flood guarantees above —
//! `tiny_http` 0.12 spawns one unbounded pool thread per connection (`thread::spawn`, which panics
//! when spawning fails), sets no read timeout and logs-and-retries `accept` errors without backing
//! off; the async servers (hyper, axum) bring a runtime for three routes. The request head is parsed
//! by `httparse` (hyper's parser); only the bounded I/O around it is written here.

use crate::model_source::{bundled_model, BUNDLED_MODEL};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest request line (method, target, version) accepted: 414 beyond.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The longest request head (request line and headers) accepted: 431 beyond.
const MAX_HEAD: usize = 16 * 1024;
/// The most header fields accepted: 431 beyond.
const MAX_HEADERS: usize = 64;
/// The whole request head must arrive within this time of the connection being accepted (a client
/// that trickles bytes cannot hold its thread longer).
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// A response write that makes no progress for this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections (each holds one thread and two descriptors).
const MAX_CONNECTIONS: usize = 64;

/// The served folders, canonical (symlinks resolved once, at start).
struct Mounts {
    root: PathBuf,
    web: PathBuf,
    /// Model folder name ("default", then the --extra-model names) → canonical folder.
    models: BTreeMap<String, PathBuf>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0: any free port, printed at start)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The folder holding index.html and web/ (the repository root)
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// The model folder served as /models/default/ [default: the bundled model]
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Another model folder, served as /models/NAME/ (repeatable)
    #[arg(long, value_name = "NAME=DIR", value_parser = parse_extra_model)]
    extra_model: Vec<(String, PathBuf)>,
}

/// `NAME=DIR` with NAME a short name of letters, digits, `-` or `_` (not `default`).
fn parse_extra_model(v: &str) -> std::result::Result<(String, PathBuf), String> {
    let (name, dir) = v
        .split_once('=')
        .ok_or_else(|| format!("`{v}` is not NAME=DIR"))?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok || name == "default" {
        return Err(format!(
            "`{name}` must be a name of letters, digits, `-` or `_` (not `default`)"
        ));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

pub fn run(a: ServeArgs) -> Result<()> {
    let ServeArgs {
        port,
        root,
        model,
        extra_model: extra,
    } = a;
    if let Some((name, _)) = extra
        .iter()
        .enumerate()
        .find_map(|(i, (n, _))| extra[..i].iter().find(|(m, _)| m == n))
    {
        bail!("--extra-model: the name `{name}` is given twice");
    }
    if !root.join("index.html").is_file() {
        bail!(
            "{}: no index.html here (run from the repository root or pass --root)",
            root.display()
        );
    }
    if !root.join("web/pkg/bd3_web.js").is_file() {
        bail!(
            "{}: the wasm package is missing: build it first (scripts/serve.sh does)",
            root.join("web/pkg").display()
        );
    }
    let model = match model {
        Some(m) => m,
        None if root.join(BUNDLED_MODEL).is_dir() => root.join(BUNDLED_MODEL),
        None => bundled_model()?,
    };
    if !model.join("config.json").is_file() {
        bail!("{}: not a model folder (no config.json)", model.display());
    }
    let canon = |p: &Path| p.canonicalize().with_context(|| p.display().to_string());
    let mut models = BTreeMap::from([("default".to_string(), canon(&model)?)]);
    for (name, dir) in &extra {
        if !dir.is_dir() {
            bail!("{}: --extra-model: not a folder", dir.display());
        }
        models.insert(name.clone(), canon(dir)?);
    }
    let mounts = Arc::new(Mounts {
        root: canon(&root)?,
        web: canon(&root.join("web"))?,
        models,
    });

    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let addr = listener
        .local_addr()
        .context("the listening socket has no address")?;
    let hosts = Arc::new(allowed_hosts(addr.port()));
    // Written, not println!-ed: a closed stdout (the launcher went away) must not end the server.
    let mut line = format!(
        "serving http://{addr}/ (page: {}, default model: {}",
        root.display(),
        model.display()
    );
    for (name, dir) in &extra {
        line.push_str(&format!("; {} as /models/{name}/", dir.display()));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line})").and_then(|_| out.flush());
    drop(out);

    let conns = Arc::new(Connections::default());
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE): evicting the oldest idle connection frees one
                // (each eviction uses up a flood connection, so this cannot loop forever). Otherwise
                // wait a little, so that a persistent error cannot make this loop spin.
                if !(out_of_descriptors(&e) && conns.evict_oldest_idle()) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        if !conns.admit(id, &stream) {
            continue; // full of connections that are all sending responses: this one is closed
        }
        let (mounts, hosts, conns2) = (mounts.clone(), hosts.clone(), conns.clone());
        let spawned = std::thread::Builder::new()
            .name("serve-conn".into())
            .spawn(move || {
                let _slot = SlotGuard { conns: &conns2, id };
                let _ = handle(stream, id, &conns2, &mounts, &hosts);
            });
        if spawned.is_err() {
            // The closure (and the stream with it) is dropped: only this connection is lost.
            conns.remove(id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// EMFILE or ENFILE (Linux, macOS), WSAEMFILE (Windows).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24 | 10024))
}

/// The `Host` values a request may carry: the loopback address it bound, by number or as localhost.
fn allowed_hosts(port: u16) -> Vec<String> {
    let mut h = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if port == 80 {
        h.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
    }
    h
}

/// The open connections. A connection still receiving its request head keeps a second handle on
/// its socket here, so that it can be shut down (evicted) from the accept loop.
#[derive(Default)]
struct Connections {
    open: Mutex<BTreeMap<u64, Option<TcpStream>>>,
    closed: Condvar,
}

impl Connections {
    /// Registers a new connection. When full, or out of descriptors for the second handle, the
    /// oldest idle connection is evicted to make room; false: no room within a second (closed).
    fn admit(&self, id: u64, stream: &TcpStream) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if open.len() < MAX_CONNECTIONS {
                match stream.try_clone() {
                    Ok(handle) => {
                        open.insert(id, Some(handle));
                        return true;
                    }
                    Err(e) if !out_of_descriptors(&e) => return false,
                    Err(_) => {}
                }
            }
            evict_oldest(&mut open);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Woken when a connection ends (its descriptor is closed by then).
            open = self
                .closed
                .wait_timeout(open, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn evict_oldest_idle(&self) -> bool {
        evict_oldest(&mut self.open.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The request head has arrived: the connection is no longer evictable.
    fn head_received(&self, id: u64) {
        if let Some(slot) = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            *slot = None;
        }
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.closed.notify_all();
    }
}

/// Shut down the oldest connection still sending its head (ids grow with accept order); its thread
/// sees end-of-stream at once and leaves.
fn evict_oldest(open: &mut BTreeMap<u64, Option<TcpStream>>) -> bool {
    match open.values_mut().find_map(Option::take) {
        Some(s) => {
            let _ = s.shutdown(Shutdown::Both);
            true
        }
        None => false,
    }
}

/// Unregisters a connection when its thread ends, however it ends.
struct SlotGuard<'a> {
    conns: &'a Connections,
    id: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.conns.remove(self.id);
    }
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("md") | Some("txt") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Why a request head was not read.
enum HeadError {
    /// The client closed, the connection was evicted, or the socket failed: nothing to answer.
    Gone,
    TimedOut,
    LineTooLong,
    TooLarge,
    Malformed,
}

/// Reads one request head (up to the blank line), within `HEAD_DEADLINE` and `MAX_HEAD` bytes.
/// Returns the bytes of the head.
fn read_head(stream: &mut TcpStream) -> std::result::Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Gone)?;
        let room = (MAX_HEAD + 1 - buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::TimedOut)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Gone),
        };
        buf.extend_from_slice(&chunk[..n]);
        let line_end = buf.iter().position(|&b| b == b'\n');
        if line_end.unwrap_or(buf.len()) > MAX_REQUEST_LINE {
            return Err(HeadError::LineTooLong);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// An error response, then a lingering close: what the client sent beyond what was read (the rest
/// of an oversized head) is drained for a moment, so that closing does not reset the connection
/// before the client has read the answer.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    extra: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let sent = respond_now(stream, status, extra, body, head_only);
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    sent
}

fn respond_now(
    stream: &mut TcpStream,
    status: &str,
    extra: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

fn handle(
    mut stream: TcpStream,
    id: u64,
    conns: &Connections,
    mounts: &Mounts,
    hosts: &[String],
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = read_head(&mut stream);
    conns.head_received(id);
    let head = match head {
        Ok(h) => h,
        Err(HeadError::Gone) => return Ok(()),
        Err(HeadError::TimedOut) => {
            return respond(
                &mut stream,
                "408 Request Timeout",
                "",
                "the request head did not arrive in time\n",
                false,
            )
        }
        Err(HeadError::LineTooLong) => {
            return respond(
                &mut stream,
                "414 URI Too Long",
                "",
                "request line too long\n",
                false,
            )
        }
        Err(HeadError::TooLarge) => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                "request head too large\n",
                false,
            )
        }
        Err(HeadError::Malformed) => {
            return respond(
                &mut stream,
                "400 Bad Request",
                "",
                "malformed request\n",
                false,
            )
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
        return respond(
            &mut stream,
            "400 Bad Request",
            "",
            "malformed request\n",
            false,
        );
    }
    let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    let head_only = method == "HEAD";

    // DNS rebinding: a page on attacker.example that resolves to 127.0.0.1 sends its own Host.
    let mut host = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host_ok = match (host.next(), host.next()) {
        (Some(h), None) => std::str::from_utf8(h.value)
            .is_ok_and(|v| hosts.iter().any(|a| a.eq_ignore_ascii_case(v.trim()))),
        _ => false,
    };
    if !host_ok {
        return respond(
            &mut stream,
            "421 Misdirected Request",
            "",
            "this server answers only requests addressed to its loopback address\n",
            head_only,
        );
    }
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "GET or HEAD only\n",
            false,
        );
    }
    let file = match resolve(target, mounts) {
        Ok(f) => f,
        Err(Refused::BadRequest) => {
            return respond(
                &mut stream,
                "400 Bad Request",
                "",
                "malformed request target\n",
                head_only,
            )
        }
        Err(Refused::NotFound) => {
            return respond(&mut stream, "404 Not Found", "", "not found\n", head_only)
        }
    };
    // Streamed from disk: a 680 MB checkpoint is never held in memory. Out of descriptors (a flood
    // holds them), an idle connection is evicted to make room.
    let mut opened = std::fs::File::open(&file);
    for _ in 0..3 {
        match &opened {
            Err(e) if out_of_descriptors(e) => {
                conns.evict_oldest_idle();
                std::thread::sleep(Duration::from_millis(20));
                opened = std::fs::File::open(&file);
            }
            _ => break,
        }
    }
    let mut f = match opened {
        Ok(f) => f,
        Err(e) if out_of_descriptors(&e) => {
            return respond(
                &mut stream,
                "503 Service Unavailable",
                "",
                "busy\n",
                head_only,
            )
        }
        Err(_) => return respond(&mut stream, "404 Not Found", "", "not found\n", head_only),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        return respond(&mut stream, "404 Not Found", "", "not found\n", head_only);
    }
    let len = meta.len();
    // An ETag from size and modification time: the page's weight cache compares it, so a
    // replaced model (same URL, new file) is downloaded again rather than served stale.
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nETag: \"{len:x}-{mtime:x}\"\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        content_type(&file)
    )?;
    if !head_only {
        std::io::copy(&mut (&mut f).take(len), &mut stream)?;
    }
    stream.flush()
}

enum Refused {
    BadRequest,
    NotFound,
}

/// `%XX` escapes of a URL path decoded; None for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Map a request target to a served file: `/` and `/index.html`, `/web/…`, `/models/NAME/…`.
/// Every segment must be a plain, non-hidden name, and the file — symlinks resolved — must lie in
/// the canonical folder it is served from and be a regular file.
fn resolve(target: &str, m: &Mounts) -> std::result::Result<PathBuf, Refused> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(Refused::BadRequest); // absolute-form or `*`: not for a file server
    }
    let path = percent_decode(path).ok_or(Refused::BadRequest)?;
    if path.contains(['\0', '\\']) {
        return Err(Refused::NotFound);
    }
    let (base, rest) = if path == "/" || path == "/index.html" {
        (&m.root, "index.html")
    } else if let Some(rest) = path.strip_prefix("/web/") {
        (&m.web, rest)
    } else if let Some((name, rest)) = path
        .strip_prefix("/models/")
        .and_then(|p| p.split_once('/'))
    {
        (m.models.get(name).ok_or(Refused::NotFound)?, rest)
    } else {
        return Err(Refused::NotFound);
    };
    if rest
        .split('/')
        .any(|seg| seg.is_empty() || seg.starts_with('.'))
    {
        return Err(Refused::NotFound);
    }
    let rel = Path::new(rest);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Refused::NotFound);
    }
    let full = base
        .join(rel)
        .canonicalize()
        .map_err(|_| Refused::NotFound)?;
    if !full.starts_with(base) || !full.metadata().is_ok_and(|md| md.is_file()) {
        return Err(Refused::NotFound);
    }
    Ok(full)
}
