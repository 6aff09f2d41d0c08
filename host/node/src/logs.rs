//! Container logs: stdout and stderr of each run of a container, in the CRI log format
//! (`<RFC 3339 nanos> <stream> <F|P> <text>`), one file per run (`<container>/<restart>.log`),
//! bounded in size by rotation (`.log.1`), so `kubectl logs` can ask for the current run or
//! the previous one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::runtime::{OutputSink, Stream};

/// A log file past this many bytes is rotated.
pub const MAX_LOG_BYTES: u64 = 10 << 20;
/// A line longer than this is written as partial lines (`P`), as the CRI does.
const MAX_LINE: usize = 16 << 10;

/// The log file of one run of a container.
pub fn log_path(dir: &Path, container: &str, restart: u32) -> PathBuf {
    dir.join(container).join(format!("{restart}.log"))
}

/// Writes one run's output.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    inner: Mutex<Inner>,
    max_bytes: u64,
    /// Changes at every write; false once the run has ended.
    signal: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    written: u64,
    /// What each stream has written since its last newline.
    partial: [Vec<u8>; 2],
}

fn timestamp() -> String {
    k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Nanos, true)
}

impl LogWriter {
    /// Starts the log of run `restart`, and removes runs older than the one before it.
    pub fn create(dir: &Path, container: &str, restart: u32) -> std::io::Result<Self> {
        let path = log_path(dir, container, restart);
        std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
        if let Some(old) = restart.checked_sub(2) {
            let old = log_path(dir, container, old);
            let _ = std::fs::remove_file(&old);
            let _ = std::fs::remove_file(old.with_extension("log.1"));
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                file: Some(file),
                written,
                partial: [Vec::new(), Vec::new()],
            }),
            max_bytes: MAX_LOG_BYTES,
            signal: tokio::sync::watch::Sender::new(true),
        })
    }

    /// Told of every write, and of the end of the run (false).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// Ends the run: what is left of unterminated lines is written and followers are told.
    pub fn close(&self) {
        self.flush();
        self.signal.send_replace(false);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn line(&self, inner: &mut Inner, stream: Stream, tag: char, text: &[u8]) {
        let mut record = format!("{} {} {tag} ", timestamp(), stream.name()).into_bytes();
        record.extend_from_slice(text);
        record.push(b'\n');
        if inner.written + record.len() as u64 > self.max_bytes {
            inner.file = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            inner.file = OpenOptions::new()
                .create(true)
                .append(true)
                .truncate(false)
                .open(&self.path)
                .ok();
            inner.written = 0;
        }
        if let Some(file) = &mut inner.file
            && file.write_all(&record).is_ok()
        {
            inner.written += record.len() as u64;
        }
        self.signal.send_replace(true);
    }

    /// Writes what is left of unterminated lines.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (index, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut inner.partial[index]);
            if !rest.is_empty() {
                self.line(&mut inner, stream, 'F', &rest);
            }
        }
    }
}

impl OutputSink for LogWriter {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let index = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.partial[index].extend_from_slice(bytes);
        loop {
            let pending = &inner.partial[index];
            if let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = inner.partial[index].drain(..=end).collect();
                self.line(&mut inner, stream, 'F', &line[..line.len() - 1]);
            } else if pending.len() >= MAX_LINE {
                let line: Vec<u8> = inner.partial[index].drain(..MAX_LINE).collect();
                self.line(&mut inner, stream, 'P', &line);
            } else {
                break;
            }
        }
    }
}

/// One record of a log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub timestamp: String,
    pub stream: String,
    pub partial: bool,
    pub text: String,
}

/// Reads a CRI log line.
pub fn parse_record(line: &str) -> Option<Record> {
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next()?.to_owned();
    let stream = parts.next()?.to_owned();
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("").to_owned();
    Some(Record {
        timestamp,
        stream,
        partial: tag == "P",
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_recorded_per_stream_and_old_runs_removed() {
        let dir = tempfile::tempdir().unwrap();
        for restart in 0..3 {
            let log = LogWriter::create(dir.path(), "app", restart).unwrap();
            log.write(Stream::Stdout, b"hel");
            log.write(Stream::Stderr, b"oops\n");
            log.write(Stream::Stdout, format!("lo {restart}\nrest").as_bytes());
            log.flush();
        }
        assert!(
            !log_path(dir.path(), "app", 0).exists(),
            "only the previous run is kept"
        );
        let text = std::fs::read_to_string(log_path(dir.path(), "app", 2)).unwrap();
        let records: Vec<_> = text.lines().map(|l| parse_record(l).unwrap()).collect();
        let seen: Vec<_> = records
            .iter()
            .map(|r| (r.stream.as_str(), r.text.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("stderr", "oops"),
                ("stdout", "hello 2"),
                ("stdout", "rest")
            ]
        );
        assert!(log_path(dir.path(), "app", 1).exists());
    }

    #[test]
    fn a_full_log_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::create(dir.path(), "app", 0).unwrap();
        log.max_bytes = 200;
        for i in 0..10 {
            log.write(Stream::Stdout, format!("line number {i}\n").as_bytes());
        }
        let current = std::fs::read_to_string(log.path()).unwrap();
        let rotated = std::fs::read_to_string(log.path().with_extension("log.1")).unwrap();
        assert!(current.len() <= 200 && rotated.len() <= 200);
        assert!(current.ends_with("line number 9\n"), "{current}");
    }
}
