//! `bd3-wgpu serve`: a small static file server on 127.0.0.1 for the demo page — the repository's
//! `index.html`, `web/` (with the wasm package in `web/pkg`), and a model folder at `/models/default/`.
//! GET and HEAD only; paths never leave the served folders.

use bd3_model::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};

pub const USAGE: &str = "serve [--port 8080] [--root DIR (the folder holding index.html)] [--model DIR (served as /models/default/)]";

pub fn run(args: &[String]) -> Result<()> {
    let (mut port, mut root, mut model) = (8080u16, PathBuf::from("."), None);
    let mut it = args.iter();
    while let Some(f) = it.next() {
        match f.as_str() {
            "--port" => port = crate::parse_num(it.next(), f)?,
            "--root" => root = it.next().map(PathBuf::from).ok_or_else(|| Error::Invalid("--root needs a value".into()))?,
            "--model" => model = it.next().map(PathBuf::from),
            other => return Err(Error::Invalid(format!("unknown option `{other}`; usage: bd3-wgpu {USAGE}"))),
        }
    }
    if !root.join("index.html").is_file() {
        return Err(Error::Io { path: root.display().to_string(), message: "no index.html here (run from the repository root or pass --root)".into() });
    }
    if !root.join("web/pkg/bd3_web.js").is_file() {
        return Err(Error::Io { path: root.join("web/pkg").display().to_string(), message: "the wasm package is missing: build it first (scripts/serve.sh does)".into() });
    }
    let model = match model {
        Some(m) => m,
        None if root.join(crate::BUNDLED_MODEL).is_dir() => root.join(crate::BUNDLED_MODEL),
        None => crate::bundled_model()?,
    };
    if !model.join("config.json").is_file() {
        return Err(Error::Io { path: model.display().to_string(), message: "not a model folder (no config.json)".into() });
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| Error::Io { path: format!("127.0.0.1:{port}"), message: e.to_string() })?;
    let addr = listener.local_addr().map_err(|e| Error::Io { path: "socket".into(), message: e.to_string() })?;
    println!("serving http://{addr}/ (page: {}, default model: {})", root.display(), model.display());
    let _ = std::io::stdout().flush();
    for stream in listener.incoming().flatten() {
        let (root, model) = (root.clone(), model.clone());
        std::thread::spawn(move || {
            let _ = handle(stream, &root, &model);
        });
    }
    Ok(())
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// Map a URL path to a file, refusing anything that would climb out of its folder.
fn resolve(url: &str, root: &Path, model: &Path) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next().unwrap_or("/");
    let (base, rest) = match path.strip_prefix("/models/default/") {
        Some(rest) => (model, rest),
        None => (root, path.trim_start_matches('/')),
    };
    let rest = if rest.is_empty() { "index.html" } else { rest };
    let rel = Path::new(rest);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = base.join(rel);
    full.is_file().then_some(full)
}

fn handle(mut stream: TcpStream, root: &Path, model: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, url) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let respond = |stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head: bool| -> std::io::Result<()> {
        write!(stream, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n", body.len())?;
        if !head {
            stream.write_all(body)?;
        }
        stream.flush()
    };
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n", false);
    }
    match resolve(url, root, model) {
        Some(file) => {
            // Streamed from disk: a 680 MB checkpoint is never held in memory.
            let mut f = std::fs::File::open(&file)?;
            let meta = f.metadata()?;
            let len = meta.len();
            // An ETag from size and modification time: the page's weight cache compares it, so a
            // replaced model (same URL, new file) is downloaded again rather than served stale.
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nETag: \"{len:x}-{mtime:x}\"\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
                content_type(&file)
            )?;
            if method == "GET" {
                std::io::copy(&mut f, &mut stream)?;
            }
            stream.flush()
        }
        None => respond(&mut stream, "404 Not Found", "text/plain", format!("not found: {url}\n").as_bytes(), method == "HEAD"),
    }
}
