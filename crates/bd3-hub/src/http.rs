//! The two requests of a hub download, as `huggingface_hub` makes them
//! (file_download.py: `get_hf_file_metadata`, `http_get`):
//!
//! 1. `HEAD {endpoint}/{repo}/resolve/{revision}/{file}` without following
//!    redirects, except relative ones (a renamed repo). The etag is
//!    `X-Linked-Etag` (the LFS content's sha256) or else `ETag`, the commit
//!    `X-Repo-Commit`, the size `X-Linked-Size` or else `Content-Length`. For an
//!    LFS file the reply is a redirect to the CDN, whose `Location` is where the
//!    bytes are fetched, without the token.
//! 2. `GET` of that location (following redirects), with `Range: bytes=N-` when
//!    `blobs/{etag}.incomplete` already holds N bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ureq::http::Response;
use ureq::Body;

use crate::cache::{is_safe_commit, is_safe_etag, RepoCache};
use crate::error::{io_err, HubError, Result};
use crate::progress::Reporter;
use crate::Hub;

/// Relative redirects followed by the HEAD request (renamed repos) before it is
/// taken for a loop.
const MAX_RELATIVE_REDIRECTS: usize = 5;

/// Where and what to download, from the HEAD reply.
pub(crate) struct Metadata {
    pub(crate) commit: String,
    pub(crate) etag: String,
    /// Known for every hub file; `None` only for servers that send no size.
    pub(crate) size: Option<u64>,
    /// Where the bytes are: the CDN for LFS files, else the resolve URL.
    pub(crate) location: String,
    /// The location is another host: the token must not be sent there.
    pub(crate) redirected: bool,
}

pub(crate) enum Head {
    Found(Metadata),
    /// The repo and revision exist but the file does not (`EntryNotFound`).
    Missing {
        commit: Option<String>,
    },
}

/// A failed request: network failures may fall back on the cache, others may not.
pub(crate) enum Fail {
    Network {
        url: String,
        source: Box<ureq::Error>,
    },
    Fatal(HubError),
}

impl From<HubError> for Fail {
    fn from(e: HubError) -> Fail {
        Fail::Fatal(e)
    }
}

/// Connection refused, DNS failure, timeouts: the hub is unreachable, which is
/// when `huggingface_hub` uses the cache (TLS and protocol errors are raised).
fn is_network(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
    )
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    let value = resp.headers().get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// `W/"abc"` or `"abc"` -> `abc` (`huggingface_hub`'s `_normalize_etag`).
pub(crate) fn normalize_etag(raw: &str) -> &str {
    let raw = raw.trim();
    raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"')
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> Option<&str> {
    let rest = url.find("://")? + 3;
    Some(url[rest..].find('/').map_or(url, |i| &url[..rest + i]))
}

fn bad_reply(url: &str, reason: impl Into<String>) -> HubError {
    HubError::BadReply {
        url: url.to_string(),
        reason: reason.into(),
    }
}

impl Hub {
    fn with_auth(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        auth: bool,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        match (&self.token, auth) {
            (Some(token), true) => req.header("Authorization", format!("Bearer {token}")),
            _ => req,
        }
    }

    /// Step 1: the file's metadata (see the module comment).
    pub(crate) fn head(&self, url: &str, repo: &str, revision: &str) -> Result<Head, Fail> {
        let mut current = url.to_string();
        for _ in 0..=MAX_RELATIVE_REDIRECTS {
            let resp = self
                .with_auth(self.meta_agent.head(&current), true)
                .call()
                .map_err(|source| classify(&current, source))?;
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                let location = header(&resp, "Location").ok_or_else(|| {
                    bad_reply(&current, format!("HTTP {status} without Location"))
                })?;
                if location.starts_with('/') {
                    let base = origin(&current)
                        .ok_or_else(|| bad_reply(&current, "not an absolute URL"))?;
                    current = format!("{base}{location}");
                    continue;
                }
                if !(location.starts_with("https://") || location.starts_with("http://")) {
                    return Err(bad_reply(
                        &current,
                        format!("unsupported redirect to `{location}`"),
                    )
                    .into());
                }
                return found(&resp, &current, Some(location))
                    .map(Head::Found)
                    .map_err(Fail::Fatal);
            }
            return match status {
                200..=299 => found(&resp, &current, None)
                    .map(Head::Found)
                    .map_err(Fail::Fatal),
                401 | 403 | 404 => {
                    let code = header(&resp, "X-Error-Code");
                    match code.as_deref() {
                        Some("EntryNotFound") => Ok(Head::Missing {
                            commit: header(&resp, "X-Repo-Commit").filter(|c| is_safe_commit(c)),
                        }),
                        Some("RevisionNotFound") => Err(HubError::RevisionNotFound {
                            repo: repo.to_string(),
                            revision: revision.to_string(),
                            url: current,
                        }
                        .into()),
                        // A plain 404 (mirrors send no error code) is a missing file.
                        None if status == 404 => Ok(Head::Missing {
                            commit: header(&resp, "X-Repo-Commit").filter(|c| is_safe_commit(c)),
                        }),
                        _ => Err(HubError::RepoNotFound {
                            repo: repo.to_string(),
                            status,
                            url: current,
                        }
                        .into()),
                    }
                }
                _ => Err(HubError::HttpStatus {
                    status,
                    url: current,
                }
                .into()),
            };
        }
        Err(bad_reply(url, "too many redirects").into())
    }

    /// Step 2: make `blobs/{etag}` hold the file, resuming a partial download.
    /// The blob appears only complete (renamed from `.incomplete` once its size
    /// is checked); a lock shared with `huggingface_hub` keeps two processes
    /// from writing the same `.incomplete`.
    pub(crate) fn download(
        &self,
        cache: &RepoCache,
        meta: &Metadata,
        file: &str,
    ) -> Result<PathBuf> {
        let blob = cache.blob(&meta.etag);
        let blobs = blob.parent().expect("a blob path has a parent");
        fs::create_dir_all(blobs).map_err(io_err(blobs))?;
        let lock_path = cache.lock(&meta.etag);
        if let Some(locks) = lock_path.parent() {
            fs::create_dir_all(locks).map_err(io_err(locks))?;
        }
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;

        if let Ok(found) = fs::metadata(&blob) {
            if meta.size.is_none_or(|size| found.len() == size) {
                return Ok(blob);
            }
            // A blob of the wrong size was not written by a verified download: replace it.
            fs::remove_file(&blob).map_err(io_err(&blob))?;
        }

        let partial = cache.incomplete(&meta.etag);
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .map_err(io_err(&partial))?;
        let mut have = out.metadata().map_err(io_err(&partial))?.len();
        if meta.size.is_some_and(|size| have > size) {
            have = restart(&mut out, &partial)?;
        }
        if meta.size != Some(have) || have == 0 {
            self.fetch_into(&mut out, &partial, have, meta, file)?;
        }
        out.sync_all().map_err(io_err(&partial))?;
        drop(out);
        fs::rename(&partial, &blob).map_err(io_err(&blob))?;
        Ok(blob)
    }

    fn fetch_into(
        &self,
        out: &mut File,
        partial: &Path,
        mut have: u64,
        meta: &Metadata,
        file: &str,
    ) -> Result<()> {
        let url = &meta.location;
        // At most two tries: the second, from byte 0, when the server rejects the range.
        let resp = loop {
            let mut req = self.with_auth(self.data_agent.get(url), !meta.redirected);
            if have > 0 {
                req = req.header("Range", format!("bytes={have}-"));
            }
            // On failure the partial file stays: the next run resumes it.
            let resp = req.call().map_err(|source| HubError::Http {
                url: url.clone(),
                source: Box::new(source),
            })?;
            match resp.status().as_u16() {
                206 if have > 0 => {
                    let start =
                        header(&resp, "Content-Range").and_then(|r| content_range_start(&r));
                    if start == Some(have) {
                        break resp;
                    }
                    // A range other than the one asked for: start over rather than splice.
                    have = restart(out, partial)?;
                }
                200 => {
                    if have > 0 {
                        // The server ignored Range and sends the whole file.
                        have = restart(out, partial)?;
                    }
                    break resp;
                }
                416 if have > 0 => have = restart(out, partial)?,
                status => {
                    return Err(HubError::HttpStatus {
                        status,
                        url: url.clone(),
                    })
                }
            }
        };
        let announced = header(&resp, "Content-Length")
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad_reply(url, format!("bad Content-Length `{v}`")))
            })
            .transpose()?;
        let total = match (meta.size, announced) {
            (Some(size), Some(n)) if have + n != size => {
                return Err(bad_reply(
                    url,
                    format!("body of {n} bytes from byte {have}, but the file has {size}"),
                ));
            }
            (Some(size), _) => size,
            (None, Some(n)) => have + n,
            (None, None) => return Err(bad_reply(url, "no size in the metadata nor the body")),
        };
        out.seek(SeekFrom::Start(have)).map_err(io_err(partial))?;

        let progress = Reporter::start(self.progress, file, total, have, url);
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    progress.abandon();
                    let _ = out.sync_all();
                    return Err(HubError::Interrupted {
                        url: url.clone(),
                        got: have,
                        source,
                    });
                }
            };
            if have + n as u64 > total {
                progress.abandon();
                let _ = fs::remove_file(partial);
                return Err(HubError::Oversized {
                    url: url.clone(),
                    expected: total,
                });
            }
            out.write_all(&buf[..n]).map_err(io_err(partial))?;
            have += n as u64;
            progress.advance(n as u64);
        }
        if have != total {
            progress.abandon();
            let _ = out.sync_all();
            return Err(HubError::Truncated {
                url: url.clone(),
                path: partial.to_path_buf(),
                got: have,
                expected: total,
            });
        }
        progress.finish();
        Ok(())
    }
}

/// Empty the partial file; returns the new resume offset (0).
fn restart(out: &mut File, partial: &Path) -> Result<u64> {
    out.set_len(0).map_err(io_err(partial))?;
    Ok(0)
}

/// `bytes START-END/TOTAL` -> START.
fn content_range_start(value: &str) -> Option<u64> {
    let spec = value.trim().strip_prefix("bytes")?.trim_start();
    let (start, _) = spec.split_once('-')?;
    start.trim().parse().ok()
}

fn classify(url: &str, source: ureq::Error) -> Fail {
    if is_network(&source) {
        Fail::Network {
            url: url.to_string(),
            source: Box::new(source),
        }
    } else {
        Fail::Fatal(HubError::Http {
            url: url.to_string(),
            source: Box::new(source),
        })
    }
}

/// Metadata from a HEAD reply; `location` is the CDN address of a redirected (LFS) file.
fn found(resp: &Response<Body>, url: &str, location: Option<String>) -> Result<Metadata> {
    let commit = header(resp, "X-Repo-Commit")
        .ok_or_else(|| bad_reply(url, "no X-Repo-Commit header: is this a Hugging Face hub?"))?;
    if !is_safe_commit(&commit) {
        return Err(bad_reply(
            url,
            format!("malformed X-Repo-Commit `{commit}`"),
        ));
    }
    let raw = header(resp, "X-Linked-Etag")
        .or_else(|| header(resp, "ETag"))
        .ok_or_else(|| bad_reply(url, "no ETag header"))?;
    let etag = normalize_etag(&raw).to_string();
    if !is_safe_etag(&etag) {
        return Err(bad_reply(url, format!("malformed ETag `{raw}`")));
    }
    let parse = |v: String| {
        v.parse::<u64>()
            .map_err(|_| bad_reply(url, format!("bad size `{v}`")))
    };
    // A redirect's own Content-Length is that of its short body, not the file's.
    let size = match header(resp, "X-Linked-Size") {
        Some(v) => Some(parse(v)?),
        None if location.is_none() => header(resp, "Content-Length").map(parse).transpose()?,
        None => None,
    };
    Ok(Metadata {
        commit,
        etag,
        size,
        redirected: location.is_some(),
        location: location.unwrap_or_else(|| url.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalized_like_huggingface_hub() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
    }

    #[test]
    fn origin_of_urls() {
        assert_eq!(
            origin("http://127.0.0.1:80/a/b"),
            Some("http://127.0.0.1:80")
        );
        assert_eq!(
            origin("https://huggingface.co"),
            Some("https://huggingface.co")
        );
        assert_eq!(origin("no-scheme/a"), None);
    }

    #[test]
    fn content_range_start_parses() {
        assert_eq!(content_range_start("bytes 10-99/100"), Some(10));
        assert_eq!(content_range_start("bytes */100"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }
}
