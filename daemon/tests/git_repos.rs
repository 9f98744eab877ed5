//! The checkout cache against real repositories made by `git` in temp directories.

use oet_tests::git as support;

use std::path::Path;

use oetd::git::{script_path, Checkout, GitConfig, GitError, RepoCache};
use support::{tree, GitDaemon, TestRepo};
use tempfile::TempDir;

fn cache(state: &Path, config: GitConfig) -> RepoCache {
    RepoCache::new(config, state).expect("cache opens")
}

/// Asserts that `result` is an error matching `pattern` and evaluates to that error.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Ok(_) => panic!(
                "{}: expected {}, got success",
                stringify!($result),
                stringify!($pattern)
            ),
            Err(err @ $pattern) => err,
            Err(err) => panic!(
                "{}: expected {}, got {err:?}",
                stringify!($result),
                stringify!($pattern)
            ),
        }
    };
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("script readable")
}

/// The text of the script `uri` names in `checkout`.
fn read_script(checkout: &Checkout, uri: &str) -> String {
    read(&script_path(checkout, uri).expect("script"))
}

#[tokio::test]
async fn branches_and_commits_check_out_their_own_version() {
    let repo = TestRepo::new();
    let v1 = repo.commit(&[("scripts/hello.py", "VERSION = 1\n")], "v1");
    let v2 = repo.commit(&[("scripts/hello.py", "VERSION = 2\n")], "v2");
    repo.git(&["checkout", "--quiet", "-b", "feature"]);
    let v3 = repo.commit(&[("scripts/hello.py", "VERSION = 3\n")], "v3");
    repo.git(&["checkout", "--quiet", "main"]);

    let state = TempDir::new().expect("state dir");
    let cache = cache(state.path(), GitConfig::default());

    // No branch, no commit: the repository's default branch (its HEAD).
    let head = cache
        .checkout(Some(repo.url()), None, None)
        .await
        .expect("default branch");
    assert_eq!(head.commit(), v2);
    assert_eq!(head.branch(), Some("main"));
    let script = script_path(&head, "git://scripts/hello.py").expect("script in repo");
    assert_eq!(read(&script), "VERSION = 2\n");
    assert!(script.starts_with(state.path()));

    let feature = cache
        .checkout(Some(repo.url()), Some("feature"), None)
        .await
        .expect("feature branch");
    assert_eq!(feature.commit(), v3);
    assert_eq!(
        read_script(&feature, "git://scripts/hello.py"),
        "VERSION = 3\n"
    );

    // The commit wins over the branch.
    let old = cache
        .checkout(Some(repo.url()), Some("feature"), Some(&v1))
        .await
        .expect("older commit");
    assert_eq!(old.commit(), v1);
    assert_eq!(read_script(&old, "git://scripts/hello.py"), "VERSION = 1\n");

    // An abbreviated id of a commit that is no branch tip needs a fetch to resolve, and
    // lands on the same checkout as the full id.
    let short = cache
        .checkout(Some(repo.url()), None, Some(&v1[..8]))
        .await
        .expect("abbreviated commit");
    assert_eq!(short.commit(), v1);
    assert_eq!(short.dir(), old.dir());

    // An abbreviated branch tip resolves from the remote's refs alone.
    let tip = cache
        .checkout(Some(repo.url()), None, Some(&v3[..7].to_uppercase()))
        .await
        .expect("abbreviated tip");
    assert_eq!(tip.dir(), feature.dir());

    // Three distinct commits, each cloned once.
    assert_eq!(cache.stats().checkouts, 3);
    assert_eq!(cache.stats().clones, 3);
}

#[tokio::test]
async fn default_repo_and_branch_come_from_the_configuration() {
    let repo = TestRepo::new();
    repo.commit(&[("a.py", "A = 'main'\n")], "main");
    repo.git(&["checkout", "--quiet", "-b", "ops"]);
    let ops = repo.commit(&[("a.py", "A = 'ops'\n")], "ops");
    repo.git(&["checkout", "--quiet", "main"]);

    let state = TempDir::new().expect("state dir");
    let config = GitConfig {
        default_repo: Some(repo.url().to_owned()),
        default_branch: Some("ops".to_owned()),
        ..GitConfig::default()
    };
    let checkout = cache(state.path(), config)
        .checkout(None, None, None)
        .await
        .expect("configured defaults");
    assert_eq!(checkout.commit(), ops);
    assert_eq!(checkout.branch(), Some("ops"));

    let err = cache(state.path(), GitConfig::default())
        .checkout(None, None, None)
        .await
        .expect_err("no repository anywhere");
    assert_eq!(err, GitError::NoRepo);
}

#[tokio::test]
async fn concurrent_requests_for_one_commit_clone_once() {
    let repo = TestRepo::new();
    let commit = repo.commit(&[("s.py", "pass\n")], "one");
    let state = TempDir::new().expect("state dir");
    let cache = cache(state.path(), GitConfig::default());

    let requests = (0..8).map(|i| {
        let cache = cache.clone();
        let url = repo.url().to_owned();
        let commit = commit.clone();
        async move {
            if i % 2 == 0 {
                cache.checkout(Some(&url), Some("main"), None).await
            } else {
                cache.checkout(Some(&url), None, Some(&commit)).await
            }
        }
    });
    let checkouts: Vec<_> = futures::future::join_all(requests)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("all checkouts succeed");

    assert!(checkouts.iter().all(|c| c.dir() == checkouts[0].dir()));
    let stats = cache.stats();
    assert_eq!(stats.clones, 1, "{stats:?}");
    assert_eq!((stats.checkouts, stats.pinned), (1, 1));

    // A later request reuses the checkout without cloning.
    cache
        .checkout(Some(repo.url()), None, None)
        .await
        .expect("reuse");
    assert_eq!(cache.stats().clones, 1);
}

#[tokio::test]
async fn bad_requests_give_clear_errors() {
    let repo = TestRepo::new();
    repo.commit(&[("s.py", "pass\n")], "one");
    let state = TempDir::new().expect("state dir");
    let cache = cache(state.path(), GitConfig::default());
    let url = Some(repo.url());

    let err = assert_err!(
        cache.checkout(url, Some("nope"), None).await,
        GitError::UnknownBranch { .. }
    );
    assert!(
        err.to_string().contains("branch 'nope' does not exist"),
        "{err}"
    );

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let err = assert_err!(
        cache.checkout(url, None, Some(missing)).await,
        GitError::UnknownCommit { .. }
    );
    assert!(err.to_string().contains(missing), "{err}");

    assert_err!(
        cache.checkout(url, None, Some("fedcba98")).await,
        GitError::UnknownCommit { .. }
    );

    assert_err!(
        cache.checkout(url, None, Some("main~1")).await,
        GitError::InvalidCommit { .. }
    );

    let gone = repo.path().join("no-such-repo");
    assert_err!(
        cache.checkout(gone.to_str(), None, None).await,
        GitError::Unreachable { .. }
    );

    let not_a_repo = TempDir::new().expect("plain dir");
    assert_err!(
        cache.checkout(not_a_repo.path().to_str(), None, None).await,
        GitError::Unreachable { .. }
    );

    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let http = format!("http://127.0.0.1:{port}/scripts.git");
    let err = assert_err!(
        cache.checkout(Some(&http), None, None).await,
        GitError::Unreachable { .. }
    );
    assert!(err.to_string().contains(&http), "{err}");

    assert_err!(
        cache.checkout(Some("relative/repo"), None, None).await,
        GitError::RelativePath { .. }
    );

    // Failed requests leave no checkout behind and nothing pinned.
    assert_eq!(cache.stats().checkouts, 0);
    let leftovers = std::fs::read_dir(state.path().join("git/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn repositories_outside_the_allowed_patterns_are_refused() {
    let repo = TestRepo::new();
    repo.commit(&[("s.py", "pass\n")], "one");
    let state = TempDir::new().expect("state dir");
    let config = GitConfig {
        allowed_repos: vec!["https://gitlab.example.invalid/ska/*".to_owned()],
        ..GitConfig::default()
    };
    let err = assert_err!(
        cache(state.path(), config)
            .checkout(Some(repo.url()), None, None)
            .await,
        GitError::NotAllowed { .. }
    );
    let text = err.to_string();
    assert!(
        text.contains(repo.url()) && text.contains("git.allowed_repos"),
        "{text}"
    );

    let parent = repo
        .path()
        .parent()
        .expect("parent")
        .to_str()
        .expect("utf-8");
    let config = GitConfig {
        allowed_repos: vec![format!("{parent}/*")],
        ..GitConfig::default()
    };
    cache(state.path(), config)
        .checkout(Some(repo.url()), None, None)
        .await
        .expect("allowed by pattern");
}

#[tokio::test]
async fn script_paths_stay_inside_the_checkout() {
    let repo = TestRepo::new();
    repo.commit(&[("ok.py", "pass\n"), ("sub/inner.py", "pass\n")], "files");
    std::os::unix::fs::symlink("/etc/passwd", repo.path().join("escape.py")).expect("symlink");
    std::os::unix::fs::symlink("../..", repo.path().join("up")).expect("symlink");
    std::os::unix::fs::symlink("sub/inner.py", repo.path().join("alias.py")).expect("symlink");
    repo.git(&["add", "escape.py", "up", "alias.py"]);
    repo.git(&["commit", "--quiet", "-m", "links"]);

    let root = TempDir::new().expect("test root");
    let state = root.path().join("state");
    let before = tree(root.path(), &state);
    let source_before = tree(repo.path(), &repo.path().join(".git"));

    let cache = cache(&state, GitConfig::default());
    let checkout = cache
        .checkout(Some(repo.url()), None, None)
        .await
        .expect("checkout");

    let resolve = |uri: &str| script_path(&checkout, uri);
    let escapes = assert_err!(
        resolve("git://../../etc/passwd"),
        GitError::ScriptEscapes { .. }
    );
    assert_err!(
        resolve("git://sub/../../x.py"),
        GitError::ScriptEscapes { .. }
    );
    assert_err!(
        resolve("git:///etc/passwd"),
        GitError::AbsoluteScriptPath { .. }
    );
    assert_err!(resolve("git://escape.py"), GitError::ScriptEscapes { .. });
    assert_err!(
        resolve("git://up/etc/passwd"),
        GitError::ScriptEscapes { .. }
    );
    let missing = assert_err!(resolve("git://missing.py"), GitError::ScriptNotFound { .. });
    assert_err!(
        resolve("git://.git/config"),
        GitError::ScriptNotFound { .. }
    );
    assert_err!(resolve("git://sub"), GitError::ScriptNotAFile { .. });
    assert_err!(resolve("file:///etc/passwd"), GitError::NotGitUri { .. });
    let text = escapes.to_string();
    assert!(text.contains("leaves the repository"), "{text}");
    let text = missing.to_string();
    assert!(
        text.contains("missing.py") && text.contains(checkout.commit()),
        "{text}"
    );

    // A symlink that stays inside is fine, and resolves inside the checkout.
    let alias = script_path(&checkout, "git://alias.py").expect("inner symlink");
    assert!(alias.starts_with(checkout.dir().canonicalize().expect("canonical")));
    assert!(script_path(&checkout, "git://./sub/inner.py").is_ok());

    // Only the cache was written to.
    assert_eq!(tree(root.path(), &state), before);
    assert_eq!(tree(repo.path(), &repo.path().join(".git")), source_before);
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}

#[tokio::test]
async fn eviction_spares_pinned_checkouts() {
    let repo = TestRepo::new();
    let a = repo.commit(&[("s.py", "A = 1\n")], "a");
    let b = repo.commit(&[("s.py", "B = 1\n")], "b");
    let state = TempDir::new().expect("state dir");
    let config = GitConfig {
        max_checkouts: 1,
        ..GitConfig::default()
    };
    let cache = cache(state.path(), config.clone());

    let first = cache
        .checkout(Some(repo.url()), None, Some(&a))
        .await
        .expect("a");
    let second = cache
        .checkout(Some(repo.url()), None, Some(&b))
        .await
        .expect("b");
    // Over the limit, but both are in use.
    assert!(first.dir().exists() && second.dir().exists());
    assert_eq!(cache.stats().checkouts, 2);

    // Releasing the newer one evicts it: the older one is still pinned.
    let second_dir = second.dir().to_owned();
    drop(second);
    assert!(!second_dir.exists());
    assert!(first.dir().exists());
    assert!(script_path(&first, "git://s.py").is_ok());

    // Unpinned and within the limit: kept, and adopted by a cache opened later.
    let first_dir = first.dir().to_owned();
    drop(first);
    assert!(first_dir.exists());
    let reopened = RepoCache::new(config, state.path()).expect("reopen");
    assert_eq!(reopened.stats().checkouts, 1);
    let again = reopened
        .checkout(Some(repo.url()), None, Some(&a))
        .await
        .expect("reuse");
    assert_eq!(again.dir(), first_dir);
    assert_eq!(reopened.stats().clones, 0);
    drop(again);

    // A new checkout pushes out the least recently used unpinned one.
    let newest = reopened
        .checkout(Some(repo.url()), None, Some(&b))
        .await
        .expect("b again");
    assert!(!first_dir.exists());
    assert!(newest.dir().exists());
    assert_eq!(reopened.stats().checkouts, 1);
}

#[tokio::test]
async fn network_repositories_are_fetched_shallow() {
    let repo = TestRepo::new();
    let v1 = repo.commit(&[("s.py", "V = 1\n")], "v1");
    repo.commit(&[("s.py", "V = 2\n")], "v2");
    let v3 = repo.commit(&[("s.py", "V = 3\n")], "v3");
    // Lets clients ask for any reachable commit by id, as hosting services do.
    repo.git(&["config", "uploadpack.allowReachableSHA1InWant", "true"]);
    let server = GitDaemon::serve(repo.path());

    let state = TempDir::new().expect("state dir");
    let cache = cache(state.path(), GitConfig::default());
    let tip = cache
        .checkout(Some(&server.url), Some("main"), None)
        .await
        .expect("branch over git://");
    assert_eq!(tip.commit(), v3);
    assert_eq!(read(&tip.dir().join("s.py")), "V = 3\n");
    assert!(tip.dir().join(".git/shallow").exists(), "one commit deep");

    let old = cache
        .checkout(Some(&server.url), None, Some(&v1))
        .await
        .expect("old commit over git://");
    assert_eq!(read_script(&old, "git://s.py"), "V = 1\n");
    assert!(old.dir().join(".git/shallow").exists(), "one commit deep");

    assert_err!(
        cache
            .checkout(Some(&format!("{}-missing", server.url)), None, None)
            .await,
        GitError::Unreachable { .. }
    );
}
