//! `bd3-wgpu serve` against hostile requests over loopback: it serves exactly `index.html`, `web/`
//! and the model folders; no traversal, hidden file or symlink reaches anything else; a foreign
//! `Host` is refused; oversized or slow request heads are cut off; and a flood of idle or half-sent
//! connections neither locks out a real client nor exhausts threads and descriptors nor spins.
//! Every server runs on 127.0.0.1 on an ephemeral port over a temporary copy of a served tree, and
//! is killed at the end; every loop is bounded in count and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "TOP-SECRET-7f3a";

/// A served tree in a temporary folder: index.html, web/ (with a stand-in wasm package), a model
/// folder, and beside them files that must never be served (a `.git`, a secret, a folder outside).
struct Tree {
    dir: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let dir = std::env::temp_dir().join(format!("bd3-serve-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let w = |p: &str, body: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        };
        w("root/index.html", "<!doctype html><title>page</title>");
        w("root/web/app.js", "// app");
        w("root/web/pkg/bd3_web.js", "// glue");
        w("root/web/pkg/bd3_web_bg.wasm", "\0asm\x01\0\0\0");
        w("root/web/.hidden", SECRET);
        w("root/.git/config", &format!("[remote] {SECRET}"));
        w("root/secret.txt", SECRET);
        w("root/target/web/broken/config.json", SECRET);
        let config = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-a/config.json"
        ))
        .unwrap();
        w("root/models/m/config.json", &config);
        w("root/models/m/model.safetensors", "weights");
        w("root/models/m/.git/config", SECRET);
        w("root/models/m/sub/inner.json", "{}");
        w("extra/config.json", &config);
        w("outside/secret.txt", SECRET);
        Tree { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(tree: &Tree) -> Server {
        Self::start_with(tree, None)
    }

    /// The server, optionally under `ulimit -n` (a shell sets it, then execs the binary).
    fn start_with(tree: &Tree, fd_limit: Option<u32>) -> Server {
        let bin = env!("CARGO_BIN_EXE_bd3-wgpu");
        let args = [
            "serve".to_string(),
            "--port".into(),
            "0".into(),
            "--root".into(),
            tree.root().display().to_string(),
            "--model".into(),
            tree.root().join("models/m").display().to_string(),
            "--extra-model".into(),
            format!("extra={}", tree.dir.join("extra").display()),
        ];
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin)
                    .args(&args);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.args(&args);
                c
            }
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("serving http://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first line from serve: {line:?}")
            });
        Server { child, port }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    }

    /// Sends raw bytes, returns (status, head, body). Status 0: the server closed without answering.
    fn raw(&self, request: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = self.connect();
        // A server that refuses early may reset the rest of a long request: the answer still counts.
        let _ = s.write_all(request);
        read_response(&mut s)
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host()).as_bytes())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no answer within the read timeout")
            }
            Err(_) => break, // reset: keep what arrived
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, buf[split..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

fn assert_refused(server: &Server, what: &str, (status, head, body): (u16, String, Vec<u8>)) {
    assert!(
        status != 200 && status != 0,
        "{what}: status {status}\n{head}"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(SECRET) && !head.contains(SECRET),
        "{what} leaked the secret"
    );
    let _ = server;
}

#[test]
fn serves_the_page_web_folder_and_models_with_etags_and_types() {
    let tree = Tree::new("ok");
    let server = Server::start(&tree);
    let (status, head, body) = server.get("/");
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(body, b"<!doctype html><title>page</title>");
    assert_eq!(server.get("/index.html").2, body);
    let (status, head, body) = server.get("/web/pkg/bd3_web_bg.wasm");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/wasm"));
    assert_eq!(body.len(), 8);
    let etag = header(&head, "etag").expect("an ETag").to_string();
    // HEAD: the same headers (ETag and length included), no body.
    let (status, hhead, hbody) = server.raw(
        format!(
            "HEAD /web/pkg/bd3_web_bg.wasm HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.host()
        )
        .as_bytes(),
    );
    assert_eq!(status, 200);
    assert_eq!(header(&hhead, "etag"), Some(etag.as_str()));
    assert_eq!(header(&hhead, "content-length"), Some("8"));
    assert!(hbody.is_empty());
    let (status, head, _) = server.get("/web/app.js");
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    let (status, head, body) = server.get("/models/default/config.json");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert_eq!(
        body,
        std::fs::read(tree.root().join("models/m/config.json")).unwrap()
    );
    assert_eq!(server.get("/models/default/sub/inner.json").0, 200);
    assert_eq!(
        server.get("/models/default/model.safetensors?v=2").2,
        b"weights"
    );
    assert_eq!(server.get("/models/extra/config.json").0, 200);
    // Touching a file changes its ETag (the page's weight cache relies on it).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        tree.root().join("web/pkg/bd3_web_bg.wasm"),
        "\0asm\x01\0\0\0-new",
    )
    .unwrap();
    let (_, head, _) = server.get("/web/pkg/bd3_web_bg.wasm");
    assert_ne!(header(&head, "etag"), Some(etag.as_str()));
    // Only GET and HEAD.
    let (status, head, _) = server.raw(
        format!(
            "POST /index.html HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            server.host()
        )
        .as_bytes(),
    );
    assert_eq!(status, 405, "{head}");
}

#[test]
fn nothing_outside_the_served_folders_is_reachable() {
    let tree = Tree::new("paths");
    let server = Server::start(&tree);
    let paths = [
        "/.git/config",
        "/secret.txt",
        "/target/web/broken/config.json",
        "/models/m/config.json",
        "/models/default/.git/config",
        "/models/default/../../secret.txt",
        "/models/default/..%2f..%2fsecret.txt",
        "/models/nope/config.json",
        "/models/default/",
        "/models/",
        "/web/",
        "/web/.hidden",
        "/web/%2ehidden",
        "/web/../secret.txt",
        "/web/%2e%2e/secret.txt",
        "/web/%2E%2E%2Fsecret.txt",
        "/web/..%5csecret.txt",
        "/web/..\\secret.txt",
        "/web//etc/passwd",
        "/web/./app.js/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/./secret.txt",
        "//secret.txt",
        "/web/%00app.js",
        "/web/app.js%",
        "/web/%zzapp.js",
        "/index.html/../secret.txt",
        "/etc/passwd",
        "/../../../../etc/passwd",
        "*",
    ];
    for p in paths {
        let (status, head, body) = server.get(p);
        assert_refused(&server, p, (status, head.clone(), body));
        assert!(status == 404 || status == 400, "{p}: {head}");
    }
    // Absolute-form targets name another origin or smuggle a path: refused too.
    let abs = format!(
        "GET http://{}/.git/config HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.host(),
        server.host()
    );
    assert_refused(&server, "absolute-form", server.raw(abs.as_bytes()));
}

#[cfg(unix)]
#[test]
fn symlinks_and_special_files_never_leak() {
    use std::os::unix::fs::symlink;
    let tree = Tree::new("links");
    let (root, outside) = (tree.root(), tree.dir.join("outside"));
    symlink(outside.join("secret.txt"), root.join("web/leak.txt")).unwrap();
    symlink(&outside, root.join("web/leakdir")).unwrap();
    symlink(outside.join("secret.txt"), root.join("models/m/leak.json")).unwrap();
    symlink(&outside, root.join("models/m/leakdir")).unwrap();
    symlink(root.join("secret.txt"), root.join("web/up.txt")).unwrap();
    symlink("../../.git/config", root.join("models/m/git.txt")).unwrap();
    // A link that stays inside its folder is an ordinary file of it.
    symlink("config.json", root.join("models/m/alias.json")).unwrap();
    // A FIFO must be refused, not opened (opening one blocks).
    assert!(Command::new("mkfifo")
        .arg(root.join("web/fifo.js"))
        .status()
        .unwrap()
        .success());
    let server = Server::start(&tree);
    for p in [
        "/web/leak.txt",
        "/web/leakdir/secret.txt",
        "/models/default/leak.json",
        "/models/default/leakdir/secret.txt",
        "/web/up.txt",
        "/models/default/git.txt",
    ] {
        let r = server.get(p);
        assert_eq!(r.0, 404, "{p}: {}", r.1);
        assert_refused(&server, p, r);
    }
    let started = Instant::now();
    assert_eq!(server.get("/web/fifo.js").0, 404);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.get("/models/default/alias.json").0, 200);
}

#[test]
fn requests_for_another_host_are_refused() {
    let tree = Tree::new("host");
    let server = Server::start(&tree);
    let port = server.port;
    let with_host =
        |h: &str| server.raw(format!("GET /index.html HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes());
    for bad in [
        "attacker.example",
        &format!("attacker.example:{port}"),
        &format!("127.0.0.1:{}", port.wrapping_add(1)),
        "127.0.0.1",
        "localhost",
        &format!("127.0.0.2:{port}"),
        &format!("[::1]:{port}"),
        &format!("127.0.0.1:{port}.attacker.example"),
        "",
    ] {
        let (status, head, _) = with_host(bad);
        assert_eq!(status, 421, "Host: {bad}\n{head}");
    }
    for good in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
    ] {
        assert_eq!(with_host(&good).0, 200, "Host: {good}");
    }
    // No Host (HTTP/1.0 style), or two of them.
    assert_eq!(server.raw(b"GET /index.html HTTP/1.0\r\n\r\n").0, 421);
    let two = format!(
        "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: attacker.example\r\n\r\n"
    );
    assert_eq!(server.raw(two.as_bytes()).0, 421);
}

#[test]
fn oversized_and_malformed_request_heads_are_refused() {
    let tree = Tree::new("sizes");
    let server = Server::start(&tree);
    let host = server.host();
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(server.raw(long_line.as_bytes()).0, 414);
    // A request line without an end.
    assert_eq!(server.raw("G".repeat(20 * 1024).as_bytes()).0, 414);
    let big_headers = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\n{}\r\n",
        format!("X-Pad: {}\r\n", "b".repeat(1000)).repeat(40)
    );
    assert_eq!(server.raw(big_headers.as_bytes()).0, 431);
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect::<String>()
    );
    assert_eq!(server.raw(many_headers.as_bytes()).0, 431);
    assert_eq!(
        server
            .raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
            .0,
        400
    );
    assert_eq!(
        server.raw(b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n").0,
        400
    );
    // The server still answers afterwards.
    assert_eq!(server.get("/").0, 200);
}

#[test]
fn slow_request_heads_are_cut_off() {
    let tree = Tree::new("slow");
    let server = Server::start(&tree);
    // One connection sends nothing, one sends half a head, one trickles a byte every 200 ms:
    // all are answered (408) or closed within the head deadline (5 s) plus a margin.
    let started = Instant::now();
    let mut idle = server.connect();
    let mut half = server.connect();
    half.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n", server.host()).as_bytes())
        .unwrap();
    let mut trickle = server.connect();
    let mut writer = trickle.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    for s in [&mut idle, &mut half, &mut trickle] {
        let (status, head, _) = read_response(s);
        assert!(status == 408 || status == 0, "{head}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "slow heads held for {:?}",
        started.elapsed()
    );
    feeder.join().unwrap();
    assert_eq!(server.get("/").0, 200);
}

/// Linux: (threads, open descriptors, CPU seconds) of a process.
#[cfg(target_os = "linux")]
fn usage(pid: u32) -> (usize, usize, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    (threads, fds, ticks / 100.0)
}

/// Opens `n` connections, alternately silent and half-sent, and keeps them open.
fn flood(server: &Server, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = server.connect();
            if i % 2 == 1 {
                let _ = s.write_all(
                    format!(
                        "GET /index.html HTTP/1.1\r\nHost: {}\r\nX-Half: ",
                        server.host()
                    )
                    .as_bytes(),
                );
            }
            s
        })
        .collect()
}

/// Under a flood (more connections than the server keeps) a normal request is answered promptly,
/// well before the flood's heads time out.
fn check_flood(server: &mut Server, n: usize, within: Duration) {
    let connections = flood(server, n);
    std::thread::sleep(Duration::from_millis(300));
    #[cfg(target_os = "linux")]
    let (_, _, cpu_before) = usage(server.pid());
    let started = Instant::now();
    let (status, head, _) = server.get("/web/app.js");
    assert_eq!(status, 200, "{head}");
    assert!(
        started.elapsed() < within,
        "a request under a flood took {:?}",
        started.elapsed()
    );
    #[cfg(target_os = "linux")]
    {
        // Held for a second more: bounded threads and descriptors, and no busy loop.
        std::thread::sleep(Duration::from_secs(1));
        let (threads, fds, cpu_after) = usage(server.pid());
        assert!(threads <= 64 + 8, "{threads} threads under a flood of {n}");
        assert!(fds <= 2 * 64 + 16, "{fds} descriptors under a flood of {n}");
        let cpu = cpu_after - cpu_before;
        assert!(
            cpu < 0.5 * started.elapsed().as_secs_f64().max(1.0),
            "{cpu} s of CPU in {:?}: the server spins",
            started.elapsed()
        );
    }
    drop(connections);
    assert_eq!(server.get("/").0, 200);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
}

#[test]
fn a_flood_of_idle_and_half_sent_connections_does_not_lock_out_a_client() {
    let tree = Tree::new("flood");
    let mut server = Server::start(&tree);
    // Well within the 5 s head deadline: the flood's connections are evicted, not waited out.
    check_flood(&mut server, 200, Duration::from_secs(3));
    // Twice: the first flood's connections are gone and the server is as before.
    check_flood(&mut server, 120, Duration::from_secs(3));
}

#[cfg(unix)]
#[test]
fn out_of_descriptors_the_server_neither_dies_nor_spins() {
    let tree = Tree::new("emfile");
    // 40 descriptors: far fewer than the connection cap needs, so `accept` runs into EMFILE.
    let mut server = Server::start_with(&tree, Some(40));
    check_flood(&mut server, 100, Duration::from_secs(4));
}

#[test]
fn bad_serve_arguments_are_one_line_errors() {
    let tree = Tree::new("args");
    let root = tree.root().display().to_string();
    let model = tree.root().join("models/m").display().to_string();
    let base = ["serve", "--port", "0", "--root", &root, "--model", &model];
    let missing = tree.dir.join("missing").display().to_string();
    let cases: [&[&str]; 9] = [
        &["--extra-model", "noequals"],
        &["--extra-model", &format!("default={model}")],
        &["--extra-model", &format!("../x={model}")],
        &[
            "--extra-model",
            &format!("a={model}"),
            "--extra-model",
            &format!("a={model}"),
        ],
        &["--extra-model", &format!("a={missing}")],
        &["--extra-model"],
        &["--model"],
        &["--port", "70000"],
        &["--root", &missing],
    ];
    for extra in cases {
        // Bounded: a case the server wrongly accepts would otherwise serve forever.
        let mut child = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
            .args(base)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{extra:?}: still running after 10 s (accepted)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.starts_with("error: ")
                && err.trim_end().lines().count() == 1
                && !err.contains("panicked"),
            "{extra:?}: {err}"
        );
    }
}
