//! Directory trees that oetd keeps on disk (checkouts, environments, caches), walked
//! without ever following a symbolic link: how much space one takes, a private copy of
//! one, making one read-only, and removing one that was made read-only.
//!
//! A repository can hold symbolic links to anywhere; a walk that followed them could
//! count, copy or delete what is not ours. Links are measured, copied and removed as
//! links.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Space `path` takes on disk, in bytes (allocated blocks, as `du` counts them), the
/// tree below it included. A path that does not exist takes none.
pub fn tree_size(path: &Path) -> io::Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            // Entries may vanish while we walk (a build cleaning up): not an error.
            match tree_size(&entry.path()) {
                Ok(size) => total += size,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

/// Copies the tree at `from` to `to` (which must not exist): directories and regular
/// files with their permission bits (made writable by their owner, since the copy is
/// ours to change), symbolic links as links. Other kinds of file (FIFOs, sockets,
/// devices) have no place in a project and are left out.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else if file_type.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, writable(meta.permissions().mode()))
    } else if file_type.is_file() {
        fs::copy(from, to)?;
        fs::set_permissions(to, writable(meta.permissions().mode()))
    } else {
        Ok(())
    }
}

fn writable(mode: u32) -> fs::Permissions {
    fs::Permissions::from_mode((mode & 0o7777) | 0o200)
}

/// Takes write permission away from everyone on every file and directory of the tree,
/// so that nothing that respects permissions (pip, a script running as a user other
/// than root) can add, change or remove anything in it.
pub fn make_read_only(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            make_read_only(&entry?.path())?;
        }
    }
    let mode = meta.permissions().mode() & 0o7777;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & !0o222))
}

/// Gives the owner write permission on directory `path` again (not on its contents),
/// as renaming a directory to another parent needs.
pub fn make_dir_writable(path: &Path) -> io::Result<()> {
    let mode = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
}

/// Removes the tree at `path`, also when its directories were made read-only (their
/// owner may give itself write permission back, which is done on the way down). A
/// path that does not exist is not an error; a link is removed, never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
    }
    make_dir_writable(path)?;
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("pkg/sub")).expect("dirs");
        fs::write(root.join("pkg/a.py"), "A = 1\n").expect("file");
        fs::write(root.join("pkg/sub/b.bin"), vec![7u8; 10_000]).expect("file");
        fs::set_permissions(root.join("pkg/a.py"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::symlink("/etc/passwd", root.join("pkg/outside")).expect("link");
    }

    #[test]
    fn a_copy_has_the_files_modes_and_links_but_follows_no_link() {
        let dir = tempfile::tempdir().expect("temp");
        let from = dir.path().join("from");
        sample(&from);
        make_read_only(&from).expect("read-only");
        let to = dir.path().join("to");
        copy_tree(&from, &to).expect("copy");
        assert_eq!(
            fs::read(to.join("pkg/sub/b.bin")).expect("read").len(),
            10_000
        );
        let mode = fs::metadata(to.join("pkg/a.py"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "executable bits kept, writable again");
        let link = fs::symlink_metadata(to.join("pkg/outside")).expect("link");
        assert!(link.file_type().is_symlink());
        // The copy can be changed; the original is still read-only.
        fs::write(to.join("pkg/new.txt"), "x").expect("the copy is writable");
        let original = fs::metadata(from.join("pkg"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(original & 0o222, 0);
        remove_tree(&from).expect("a read-only tree can be removed");
        assert!(!from.exists());
        assert!(Path::new("/etc/passwd").exists(), "no link was followed");
    }

    #[test]
    fn sizes_count_blocks_and_not_what_links_point_to() {
        let dir = tempfile::tempdir().expect("temp");
        sample(dir.path());
        let size = tree_size(dir.path()).expect("size");
        assert!(size >= 10_000, "{size}");
        assert!(size < 1_000_000, "a link's target is not counted: {size}");
        assert_eq!(tree_size(&dir.path().join("absent")).expect("size"), 0);
    }
}
