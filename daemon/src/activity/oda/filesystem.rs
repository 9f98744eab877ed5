//! The embedded ODA: a directory of JSON documents.
//!
//! ```text
//! <dir>/.lock                       serialises writers (flock), also across processes
//! <dir>/sbds/<sbd_id>/<version>.json  one file per `metadata.version`; the highest wins,
//!                                     loading the same version again replaces it
//! <dir>/sbis/<sbi_id>.json
//! ```
//!
//! Every write goes to a temporary file in the target's own directory, is fsynced and then
//! renamed over the target, and the directory is fsynced: a crash leaves either the old
//! document or the new one, never a torn one. Temporary names start with a dot and are
//! never mistaken for documents.
//!
//! New ids are `sbi-oet-<yyyymmdd>-<nnnnn>` (and `sbd-oet-...` for SBDs loaded without
//! one): the counter is one more than the highest found among the documents of that UTC
//! day, read while holding the lock that the write itself is made under. The documents are
//! the only record, so there is no separate counter that could disagree with them after a
//! crash, and the ids stay unique across daemon restarts and between processes sharing the
//! directory. (Deleting the newest document of a day by hand lets its id be given again.)

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value as Json};

use super::archive::{rfc3339, DocKind, NewSbi, Oda, OdaError};
use crate::activity::sbd::{parse_json, Sbd};

/// The filesystem ODA rooted at one directory, created on demand.
#[derive(Debug, Clone)]
pub struct FilesystemOda {
    dir: PathBuf,
}

impl FilesystemOda {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FilesystemOda { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sbds(&self) -> PathBuf {
        self.dir.join("sbds")
    }

    fn sbis(&self) -> PathBuf {
        self.dir.join("sbis")
    }

    /// Runs blocking file work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FilesystemOda) -> Result<T, OdaError> + Send + 'static,
    ) -> Result<T, OdaError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|err| OdaError::io(&self.dir, io::Error::other(err)))?
    }

    fn get_sbd_now(&self, sbd_id: &str) -> Result<Sbd, OdaError> {
        check_id(DocKind::Sbd, sbd_id)?;
        let dir = self.sbds().join(sbd_id);
        let not_found = || OdaError::NotFound {
            kind: DocKind::Sbd,
            id: sbd_id.to_owned(),
            detail: String::new(),
        };
        let newest = match newest_version(&dir) {
            Ok(newest) => newest,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(err) => return Err(OdaError::io(dir, err)),
        };
        let path = dir.join(format!("{}.json", newest.ok_or_else(not_found)?));
        let text = fs::read_to_string(&path).map_err(|err| OdaError::io(&path, err))?;
        Sbd::parse(&text).map_err(|err| {
            OdaError::Malformed(format!("stored SBD {} is unusable: {err}", path.display()))
        })
    }

    fn put_sbd_now(&self, text: &str) -> Result<Sbd, OdaError> {
        let mut raw = parse_json(text).map_err(|err| OdaError::Malformed(err.to_string()))?;
        let _lock = self.lock()?;
        if let Some(doc) = raw.as_object_mut() {
            if matches!(doc.get("sbd_id"), None | Some(Json::Null)) {
                let id = next_id(&self.sbds(), "sbd", SystemTime::now())?;
                doc.insert("sbd_id".to_owned(), json!(id));
            }
        }
        let mut sbd = Sbd::from_json(raw).map_err(|err| OdaError::Malformed(err.to_string()))?;
        check_id(DocKind::Sbd, &sbd.sbd_id)?;
        // As the ODA does, a document of an SBD it has is stored as a new version: what
        // was stored before is never replaced.
        let stored = match newest_version(&self.sbds().join(&sbd.sbd_id)) {
            Ok(newest) => newest,
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(OdaError::io(self.sbds().join(&sbd.sbd_id), err)),
        };
        if let Some(newest) = stored.filter(|newest| *newest >= sbd.version) {
            sbd.set_version(newest + 1);
        }
        let path = self
            .sbds()
            .join(&sbd.sbd_id)
            .join(format!("{}.json", sbd.version));
        write_atomic(&path, sbd.to_json_string().as_bytes())?;
        Ok(sbd)
    }

    fn create_sbi_now(&self, mut doc: Json) -> Result<String, OdaError> {
        let _lock = self.lock()?;
        let now = SystemTime::now();
        let id = next_id(&self.sbis(), "sbi", now)?;
        doc["sbi_id"] = json!(id);
        doc["metadata"] = json!({
            "version": 1,
            "created_by": "oetd",
            "created_on": rfc3339(now),
        });
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|err| OdaError::Malformed(format!("cannot record the SBI: {err}")))?;
        write_atomic(&self.sbis().join(format!("{id}.json")), text.as_bytes())?;
        Ok(id)
    }

    fn get_sbi_now(&self, sbi_id: &str) -> Result<Json, OdaError> {
        check_id(DocKind::Sbi, sbi_id)?;
        let path = self.sbis().join(format!("{sbi_id}.json"));
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(OdaError::NotFound {
                    kind: DocKind::Sbi,
                    id: sbi_id.to_owned(),
                    detail: String::new(),
                })
            }
            Err(err) => return Err(OdaError::io(path, err)),
        };
        serde_json::from_str(&text).map_err(|err| {
            OdaError::Malformed(format!("stored SBI {} is not JSON: {err}", path.display()))
        })
    }

    /// Takes the writers' lock, creating the ODA directory if needed. Blocks until free.
    fn lock(&self) -> Result<Flock<File>, OdaError> {
        fs::create_dir_all(&self.dir).map_err(|err| OdaError::io(&self.dir, err))?;
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|err| OdaError::io(&path, err))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| OdaError::io(&path, io::Error::from(errno)))
    }
}

#[async_trait::async_trait]
impl Oda for FilesystemOda {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn get_sbd(&self, sbd_id: &str) -> Result<Sbd, OdaError> {
        let sbd_id = sbd_id.to_owned();
        self.blocking(move |oda| oda.get_sbd_now(&sbd_id)).await
    }

    async fn put_sbd(&self, json: &str) -> Result<Sbd, OdaError> {
        let json = json.to_owned();
        self.blocking(move |oda| oda.put_sbd_now(&json)).await
    }

    async fn create_sbi(&self, sbi: &NewSbi) -> Result<String, OdaError> {
        let doc = sbi.to_json()?;
        self.blocking(move |oda| oda.create_sbi_now(doc)).await
    }

    async fn get_sbi(&self, sbi_id: &str) -> Result<Json, OdaError> {
        let sbi_id = sbi_id.to_owned();
        self.blocking(move |oda| oda.get_sbi_now(&sbi_id)).await
    }
}

/// The highest version stored in an SBD's directory, if any.
fn newest_version(dir: &Path) -> io::Result<Option<u64>> {
    let mut newest = None;
    for entry in fs::read_dir(dir)? {
        let version = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.strip_suffix(".json"))
            .filter(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u64>().ok());
        newest = newest.max(version);
    }
    Ok(newest)
}

/// Ids become file names: only a plain, visible name is accepted.
fn check_id(kind: DocKind, id: &str) -> Result<(), OdaError> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > 128 {
        Some("it is longer than 128 characters")
    } else if id.starts_with('.') {
        Some("it starts with a dot")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("only letters, digits, '-', '_' and '.' may be used")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(OdaError::InvalidId {
            kind,
            id: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The next free `<prefix>-oet-<yyyymmdd>-<nnnnn>` among the entries of `parent`.
/// Must be called with the writers' lock held, and the document written before releasing it.
fn next_id(parent: &Path, prefix: &str, now: SystemTime) -> Result<String, OdaError> {
    let date: String = rfc3339(now)[..10].chars().filter(|c| *c != '-').collect();
    let stem = format!("{prefix}-oet-{date}-");
    let highest = match fs::read_dir(parent) {
        Ok(entries) => {
            let mut highest = 0;
            for entry in entries {
                let entry = entry.map_err(|err| OdaError::io(parent, err))?;
                let name = entry.file_name();
                let counter = name
                    .to_str()
                    .map(|name| name.strip_suffix(".json").unwrap_or(name))
                    .and_then(|name| name.strip_prefix(&stem))
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<u64>().ok());
                highest = highest.max(counter.unwrap_or(0));
            }
            highest
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
        Err(err) => return Err(OdaError::io(parent, err)),
    };
    Ok(format!("{stem}{:05}", highest + 1))
}

/// Replaces `path` with `bytes` so that readers see the old or the new content, never part.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OdaError> {
    let dir = path
        .parent()
        .ok_or_else(|| OdaError::io(path, io::Error::other("has no parent directory")))?;
    fs::create_dir_all(dir).map_err(|err| OdaError::io(dir, err))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|err| OdaError::io(dir, err))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|err| OdaError::io(tmp.path(), err))?;
    // On failure the temporary file is removed when `tmp` is dropped.
    tmp.persist(path)
        .map_err(|err| OdaError::io(path, err.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| OdaError::io(dir, err))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::activity::oda::{put_sbd_file, ActivityCall};

    fn fixtures() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sbd");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert!(files.len() >= 3, "fixtures missing in {}", dir.display());
        files
    }

    fn sample_sbi(sbd: &Sbd) -> NewSbi {
        NewSbi::for_activity(
            sbd,
            ActivityCall {
                activity_name: "allocate".into(),
                function_args: BTreeMap::new(),
                runtime_args: BTreeMap::new(),
                executed_at: SystemTime::now(),
            },
        )
    }

    /// Every file under `dir`, relative to it.
    fn all_files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).expect("readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).expect("under dir");
                    out.push(rel.display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn every_fixture_round_trips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let oda = FilesystemOda::new(tmp.path().join("oda"));
        for file in fixtures() {
            let stored = put_sbd_file(&oda, &file).await.expect("put");
            let fetched = oda.get_sbd(&stored.sbd_id).await.expect("get");
            assert_eq!(fetched, stored, "{}", file.display());
            let original: Json =
                serde_json::from_str(&fs::read_to_string(&file).expect("read")).expect("JSON");
            // Only an id the ODA assigned may differ from the file.
            let mut expected = original.clone();
            expected["sbd_id"] = json!(stored.sbd_id);
            assert_eq!(fetched.raw(), &expected, "{}", file.display());
            if original.get("sbd_id").is_none() {
                assert!(stored.sbd_id.starts_with("sbd-oet-"), "{}", stored.sbd_id);
            }
        }
        // The two fixtures without an id got different ones.
        let ids: BTreeSet<String> = fs::read_dir(tmp.path().join("oda/sbds"))
            .expect("sbds")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
    }

    #[tokio::test]
    async fn the_newest_version_is_returned() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let oda = FilesystemOda::new(tmp.path());
        let doc = |version: u64, script: &str| {
            json!({
                "sbd_id": "sbd-t-1",
                "telescope": "ska_mid",
                "metadata": {"version": version},
                "activities": {"observe": {"kind": "filesystem", "path": script}},
            })
            .to_string()
        };
        oda.put_sbd(&doc(1, "file:///v1.py")).await.expect("v1");
        oda.put_sbd(&doc(2, "file:///v2.py")).await.expect("v2");
        let got = oda.get_sbd("sbd-t-1").await.expect("get");
        assert_eq!(got.version, 2);
        assert_eq!(got.activities["observe"].script.path(), "file:///v2.py");
        // Versions compare as numbers, not as text.
        oda.put_sbd(&doc(10, "file:///v10.py")).await.expect("v10");
        assert_eq!(oda.get_sbd("sbd-t-1").await.expect("get").version, 10);
        // A document whose version is already stored becomes a new version, as in the
        // ODA: what was stored before is never replaced.
        let again = oda
            .put_sbd(&doc(3, "file:///v3.py"))
            .await
            .expect("v3 again");
        assert_eq!(again.version, 11);
        let got = oda.get_sbd("sbd-t-1").await.expect("get");
        assert_eq!(got.version, 11);
        assert_eq!(got.raw()["metadata"]["version"], 11);
        assert_eq!(got.activities["observe"].script.path(), "file:///v3.py");
        let kept = fs::read_to_string(tmp.path().join("sbds/sbd-t-1/10.json")).expect("v10");
        assert!(kept.contains("file:///v10.py"), "{kept}");
    }

    #[tokio::test]
    async fn sbi_ids_are_unique_across_restarts_and_concurrent_creates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sbd = Sbd::parse(
            &fs::read_to_string(fixtures().into_iter().last().expect("one")).expect("read"),
        )
        .expect("parses");
        let first = FilesystemOda::new(tmp.path());
        let before = first.create_sbi(&sample_sbi(&sbd)).await.expect("create");
        drop(first);

        // Two instances on the same directory, as after a restart or with two processes.
        let a = FilesystemOda::new(tmp.path());
        let b = FilesystemOda::new(tmp.path());
        let sbi = sample_sbi(&sbd);
        let creates = (0..16).map(|i| {
            let oda = if i % 2 == 0 { a.clone() } else { b.clone() };
            let sbi = sbi.clone();
            tokio::spawn(async move { oda.create_sbi(&sbi).await })
        });
        let mut ids = BTreeSet::from([before.clone()]);
        for create in creates {
            let id = create.await.expect("task").expect("create");
            assert!(ids.insert(id.clone()), "{id} given twice");
        }
        assert_eq!(ids.len(), 17);
        assert!(
            before.starts_with("sbi-oet-") && before.ends_with("-00001"),
            "{before}"
        );

        let stored = a.get_sbi(&before).await.expect("get");
        assert_eq!(stored["sbi_id"], json!(before));
        assert_eq!(stored["sbd_ref"], json!(sbd.sbd_id));
        assert_eq!(stored["sbd_version"], json!(1));
        assert_eq!(stored["telescope"], json!("ska_mid"));
        assert_eq!(stored["activities"][0]["activity_ref"], json!("allocate"));
    }

    #[tokio::test]
    async fn writes_leave_no_temporary_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let oda = FilesystemOda::new(tmp.path());
        let mut sbd = None;
        for file in fixtures() {
            sbd = Some(put_sbd_file(&oda, &file).await.expect("put"));
        }
        let sbd = sbd.expect("one");
        let sbi_id = oda.create_sbi(&sample_sbi(&sbd)).await.expect("sbi");
        let files = all_files(tmp.path());
        assert_eq!(files.len(), 5, "{files:?}");
        let stray: Vec<_> = files
            .iter()
            .filter(|f| *f != ".lock" && !f.ends_with(".json"))
            .collect();
        assert!(stray.is_empty(), "stray files: {stray:?}");
        assert!(files.contains(&format!("sbis/{sbi_id}.json")), "{files:?}");
        assert!(
            files.contains(&format!("sbds/{}/1.json", sbd.sbd_id)),
            "{files:?}"
        );
    }

    #[tokio::test]
    async fn bad_ids_are_refused_before_touching_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let oda = FilesystemOda::new(tmp.path().join("oda"));
        for id in ["", "..", ".hidden", "a/b", "../../etc/passwd", "a b", "ünï"] {
            let err = oda.get_sbd(id).await.expect_err(id);
            assert!(matches!(err, OdaError::InvalidId { .. }), "{id:?}: {err}");
            let err = oda.get_sbi(id).await.expect_err(id);
            assert!(matches!(err, OdaError::InvalidId { .. }), "{id:?}: {err}");
        }
        let err = oda
            .put_sbd(&json!({"sbd_id": "../escape"}).to_string())
            .await
            .expect_err("escape");
        assert!(
            err.to_string().contains("'../escape' is not allowed"),
            "{err}"
        );
        assert!(!tmp.path().join("escape").exists());
    }

    #[tokio::test]
    async fn unknown_documents_are_not_found() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let oda = FilesystemOda::new(tmp.path().join("never-created"));
        let err = oda.get_sbd("sbd-nope").await.expect_err("none");
        assert_eq!(err.to_string(), "the ODA has no SBD 'sbd-nope'");
        let err = oda.get_sbi("sbi-nope").await.expect_err("none");
        assert_eq!(err.to_string(), "the ODA has no SBI 'sbi-nope'");
        assert!(
            !tmp.path().join("never-created").exists(),
            "reads create nothing"
        );
    }

    #[tokio::test]
    async fn malformed_files_are_refused_with_their_position() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let oda = FilesystemOda::new(tmp.path().join("oda"));
        let file = tmp.path().join("broken.json");
        fs::write(
            &file,
            "{\n  \"sbd_id\": \"sbd-1\",\n  \"telescope\": ska_mid\n}\n",
        )
        .expect("write");
        let err = put_sbd_file(&oda, &file).await.expect_err("malformed");
        let message = err.to_string();
        assert!(message.contains("broken.json"), "{message}");
        assert!(message.contains("line 3, column 16"), "{message}");
        let err = put_sbd_file(&oda, &tmp.path().join("absent.json"))
            .await
            .expect_err("absent");
        assert!(matches!(err, OdaError::Io { .. }), "{err}");
        assert!(
            !tmp.path().join("oda/sbds").exists(),
            "nothing half-created"
        );
    }
}
