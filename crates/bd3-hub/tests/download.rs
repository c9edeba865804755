//! Downloads against a local mock of the hub (tests/support/mock_hub.rs): the
//! cache layout shared with `huggingface_hub`, reuse, offline use, resume,
//! missing files and the GPT-2 tokenizer fallback.

#[path = "../../../tests/support/mock_hub.rs"]
mod mock_hub;

use std::fs;
use std::path::{Path, PathBuf};

use bd3_hub::{looks_like_repo_id, Hub, HubError, RepoId, TokenizerFile, FALLBACK_TOKENIZER_REPO};
use mock_hub::MockHub;

const REPO: &str = "acme/tiny-bd3lm";
const CONFIG: &[u8] = br#"{"hidden_size": 8}"#;
const TOKENIZER: &[u8] = br#"{"model": {"type": "BPE"}}"#;
const GPT2_TOKENIZER: &[u8] = br#"{"model": {"type": "BPE", "gpt2": true}}"#;

/// Weights whose bytes differ at every offset within a 251-byte period, so a
/// resume that splices at the wrong offset shows.
fn weights(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    served: PathBuf,
    cache: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let served = tmp.path().join("served");
        let cache = tmp.path().join("hf-home").join("hub");
        fs::create_dir_all(&served).unwrap();
        Fixture {
            _tmp: tmp,
            served,
            cache,
        }
    }

    fn put(&self, repo: &str, file: &str, bytes: &[u8]) {
        let dir = self.served.join(repo);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(file), bytes).unwrap();
    }

    fn hub(&self, server: &MockHub, offline: bool) -> Hub {
        Hub::with(&server.url(), &self.cache, offline).unwrap()
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }
}

fn repo() -> RepoId {
    RepoId::parse(REPO).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The snapshot entry must be a relative symlink to `../../blobs/{etag}`
/// holding `bytes`, as `huggingface_hub` lays it out.
fn assert_cached(repo_dir: &Path, commit: &str, file: &str, bytes: &[u8]) {
    let pointer = repo_dir.join("snapshots").join(commit).join(file);
    let etag = MockHub::etag(file, bytes);
    let meta = fs::symlink_metadata(&pointer).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "{} is not a symlink",
        pointer.display()
    );
    assert_eq!(
        fs::read_link(&pointer).unwrap(),
        Path::new("../../blobs").join(&etag)
    );
    assert_eq!(fs::read(repo_dir.join("blobs").join(&etag)).unwrap(), bytes);
    assert_eq!(fs::read(&pointer).unwrap(), bytes);
}

fn full_repo(fx: &Fixture, weights: &[u8]) {
    fx.put(REPO, "config.json", CONFIG);
    fx.put(REPO, "model.safetensors", weights);
    fx.put(REPO, "tokenizer.json", TOKENIZER);
}

#[test]
fn fresh_download_writes_the_huggingface_cache_layout() {
    let fx = Fixture::new();
    let w = weights(3000);
    full_repo(&fx, &w);
    let server = MockHub::start(&fx.served);
    let files = fx.hub(&server, false).model(&repo(), "main").unwrap();

    let commit = MockHub::commit(REPO);
    let repo_dir = fx.repo_dir(REPO);
    assert_eq!(files.commit, commit);
    assert_eq!(files.dir, repo_dir.join("snapshots").join(&commit));
    assert_eq!(
        fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        commit
    );
    assert_eq!(files.weights, files.dir.join("model.safetensors"));
    assert_eq!(files.config, Some(files.dir.join("config.json")));
    assert_eq!(
        files.tokenizer,
        TokenizerFile::Repo(files.dir.join("tokenizer.json"))
    );
    assert_cached(&repo_dir, &commit, "config.json", CONFIG);
    assert_cached(&repo_dir, &commit, "model.safetensors", &w);
    assert_cached(&repo_dir, &commit, "tokenizer.json", TOKENIZER);

    // The weights' blob is named by the LFS content hash (X-Linked-Etag), not
    // the pointer's ETag, and nothing partial is left.
    let mut expected = vec![
        MockHub::etag("config.json", CONFIG),
        MockHub::etag("model.safetensors", &w),
        MockHub::etag("tokenizer.json", TOKENIZER),
    ];
    expected.sort();
    assert_eq!(files_in(&repo_dir.join("blobs")), expected);
    assert_eq!(files_in(&repo_dir.join("snapshots")), vec![commit.clone()]);

    // The weights came from the CDN location, once; no token was sent.
    assert_eq!(server.count("GET", "/cdn/"), 1);
    assert!(server.requests().iter().all(|r| r.authorization.is_none()));
    // The first file resolved the revision; the others were asked at that commit.
    assert_eq!(
        server.count("HEAD", &format!("/{REPO}/resolve/{commit}/")),
        2
    );
}

#[test]
fn cached_model_is_reused_online_offline_and_with_the_server_down() {
    let fx = Fixture::new();
    full_repo(&fx, &weights(2000));
    let mut server = MockHub::start(&fx.served);
    let first = fx.hub(&server, false).model(&repo(), "main").unwrap();
    let gets = server.count("GET", "/");
    assert_eq!(gets, 3);

    // Online rerun: metadata only, no body is downloaded again.
    let again = fx.hub(&server, false).model(&repo(), "main").unwrap();
    assert_eq!(again, first);
    assert_eq!(server.count("GET", "/"), gets);

    // Offline: not a single request.
    let before = server.requests().len();
    let offline = fx.hub(&server, true).model(&repo(), "main").unwrap();
    assert_eq!(offline, first);
    assert_eq!(server.requests().len(), before);

    // Server down: connection refused, the cached revision is used.
    let url = server.url();
    server.stop();
    let hub = Hub::with(&url, &fx.cache, false).unwrap();
    assert_eq!(hub.model(&repo(), "main").unwrap(), first);

    // ... but a repo that was never downloaded is a clear error naming it.
    let other = RepoId::parse("acme/never-downloaded").unwrap();
    let err = hub.model(&other, "main").unwrap_err();
    assert!(matches!(err, HubError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("acme/never-downloaded"), "{err}");
    let err = Hub::with(&url, &fx.cache, true)
        .unwrap()
        .model(&other, "main")
        .unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("acme/never-downloaded") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let fx = Fixture::new();
    let w = weights(5000);
    full_repo(&fx, &w);
    let server = MockHub::start(&fx.served);
    server.cut_next_body("model.safetensors", 1234);
    let err = fx.hub(&server, false).model(&repo(), "main").unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Interrupted { .. } | HubError::Truncated { .. }
        ),
        "{err:?}"
    );

    // Never a half file where a complete one is expected.
    let repo_dir = fx.repo_dir(REPO);
    let etag = MockHub::etag("model.safetensors", &w);
    let blob = repo_dir.join("blobs").join(&etag);
    let partial = repo_dir.join("blobs").join(format!("{etag}.incomplete"));
    let pointer = repo_dir
        .join("snapshots")
        .join(MockHub::commit(REPO))
        .join("model.safetensors");
    assert!(!blob.exists());
    assert!(fs::symlink_metadata(&pointer).is_err());
    assert_eq!(fs::read(&partial).unwrap(), &w[..1234]);

    let files = fx.hub(&server, false).model(&repo(), "main").unwrap();
    let cdn_gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn_gets.len(), 2);
    assert_eq!(cdn_gets[0].range, None);
    assert_eq!(cdn_gets[1].range.as_deref(), Some("bytes=1234-"));
    assert_eq!(fs::read(&files.weights).unwrap(), w);
    assert!(!partial.exists());
}

#[test]
fn a_server_that_ignores_range_restarts_the_download() {
    let fx = Fixture::new();
    let w = weights(4000);
    full_repo(&fx, &w);
    let server = MockHub::start(&fx.served);
    server.cut_next_body("model.safetensors", 999);
    fx.hub(&server, false).model(&repo(), "main").unwrap_err();

    server.ignore_range(true);
    let files = fx.hub(&server, false).model(&repo(), "main").unwrap();
    let last = server
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.starts_with("/cdn/"))
        .unwrap();
    assert_eq!(last.range.as_deref(), Some("bytes=999-"));
    assert_eq!(fs::read(&files.weights).unwrap(), w);
}

#[test]
fn a_partial_file_longer_than_the_blob_is_discarded() {
    let fx = Fixture::new();
    let w = weights(600);
    full_repo(&fx, &w);
    let repo_dir = fx.repo_dir(REPO);
    let etag = MockHub::etag("model.safetensors", &w);
    fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    fs::write(
        repo_dir.join("blobs").join(format!("{etag}.incomplete")),
        vec![0xAA; 900],
    )
    .unwrap();
    let server = MockHub::start(&fx.served);
    let files = fx.hub(&server, false).model(&repo(), "main").unwrap();
    assert_eq!(fs::read(&files.weights).unwrap(), w);
}

#[test]
fn a_repo_without_config_json_loads_with_config_none() {
    let fx = Fixture::new();
    fx.put(REPO, "model.safetensors", &weights(100));
    fx.put(REPO, "tokenizer.json", TOKENIZER);
    let mut server = MockHub::start(&fx.served);
    let files = fx.hub(&server, false).model(&repo(), "main").unwrap();
    assert_eq!(files.config, None);
    assert!(!files.dir.join("config.json").exists());

    // The absence is remembered, so offline and server-down runs agree.
    let offline = fx.hub(&server, true).model(&repo(), "main").unwrap();
    assert_eq!(offline, files);
    server.stop();
    let down = Hub::with(&server.url(), &fx.cache, false).unwrap();
    assert_eq!(down.model(&repo(), "main").unwrap(), files);
}

#[test]
fn a_repo_without_tokenizer_json_gets_gpt2_s_from_the_same_endpoint() {
    let fx = Fixture::new();
    fx.put(REPO, "config.json", CONFIG);
    fx.put(REPO, "model.safetensors", &weights(100));
    fx.put(FALLBACK_TOKENIZER_REPO, "tokenizer.json", GPT2_TOKENIZER);
    let server = MockHub::start(&fx.served);
    let files = fx.hub(&server, false).model(&repo(), "main").unwrap();
    let gpt2_dir = fx.repo_dir(FALLBACK_TOKENIZER_REPO);
    let gpt2_commit = MockHub::commit(FALLBACK_TOKENIZER_REPO);
    let TokenizerFile::Fallback { repo: from, path } = &files.tokenizer else {
        panic!("expected the fallback tokenizer, got {:?}", files.tokenizer);
    };
    assert_eq!(from.to_string(), FALLBACK_TOKENIZER_REPO);
    assert_eq!(
        *path,
        gpt2_dir
            .join("snapshots")
            .join(&gpt2_commit)
            .join("tokenizer.json")
    );
    assert_eq!(files.tokenizer.path(), path.as_path());
    assert_cached(&gpt2_dir, &gpt2_commit, "tokenizer.json", GPT2_TOKENIZER);
    assert_eq!(
        fs::read_to_string(gpt2_dir.join("refs/main")).unwrap(),
        gpt2_commit
    );
    assert!(
        server.count(
            "HEAD",
            &format!("/{FALLBACK_TOKENIZER_REPO}/resolve/main/tokenizer.json")
        ) == 1
    );
}

#[test]
fn missing_weights_and_missing_repos_are_clear_errors() {
    let fx = Fixture::new();
    fx.put(REPO, "config.json", CONFIG);
    let server = MockHub::start(&fx.served);
    let err = fx.hub(&server, false).model(&repo(), "main").unwrap_err();
    assert!(matches!(err, HubError::FileNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(REPO) && msg.contains("model.safetensors"),
        "{msg}"
    );

    let err = fx
        .hub(&server, false)
        .model(&RepoId::parse("acme/no-such-repo").unwrap(), "main")
        .unwrap_err();
    assert!(matches!(err, HubError::RepoNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("acme/no-such-repo"));

    let err = fx
        .hub(&server, false)
        .model(&repo(), "no-such-branch")
        .unwrap_err();
    assert!(matches!(err, HubError::RevisionNotFound { .. }), "{err:?}");
    assert!(matches!(
        fx.hub(&server, false).model(&repo(), "../main"),
        Err(HubError::InvalidRevision { .. })
    ));
}

#[test]
fn the_token_goes_to_the_hub_but_not_to_the_cdn() {
    let fx = Fixture::new();
    full_repo(&fx, &weights(100));
    let server = MockHub::start(&fx.served);
    let hub = fx.hub(&server, false).token(Some("hf_secret".to_string()));
    hub.model(&repo(), "main").unwrap();
    for r in server.requests() {
        let expected = (!r.path.starts_with("/cdn/")).then_some("Bearer hf_secret");
        assert_eq!(
            r.authorization.as_deref(),
            expected,
            "{} {}",
            r.method,
            r.path
        );
    }
    assert!(!format!("{hub:?}").contains("hf_secret"));
}

#[test]
fn odd_repo_ids_are_refused() {
    for bad in [
        "",
        "name-only",
        "a/b/c",
        "/name",
        "owner/",
        "../etc",
        "owner/..",
        "owner/a..b",
        "owner/a--b",
        "own er/name",
        "owner/name?x=1",
        "owner/name#x",
        "owner\\name",
        ".hidden/name",
        "owner/name-",
        "owner/名前",
        &format!("owner/{}", "x".repeat(100)),
    ] {
        let err = RepoId::parse(bad).unwrap_err();
        assert!(matches!(err, HubError::InvalidRepoId { .. }), "{bad:?}");
        assert!(!looks_like_repo_id(bad), "{bad:?}");
    }
    assert!(looks_like_repo_id("kuleshov-group/bd3lm-owt-block_size4"));
    assert!(looks_like_repo_id("kuleshov-group/sedd-noeos-owt"));
    // Tests run in the crate folder, where this path exists: it is a local file.
    assert!(Path::new("src/lib.rs").exists());
    assert!(!looks_like_repo_id("src/lib.rs"));
    // Missing local checkpoint files are paths, not repos.
    assert!(!looks_like_repo_id("runs/model.safetensors"));
    assert!(!looks_like_repo_id("runs/config.json"));
}
