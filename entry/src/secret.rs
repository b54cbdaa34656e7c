//! The one secret-file reader both binaries use, for the link secret
//! (`--link-secret-file`, relay and server) and the token secret
//! (`--token-secret-file`, server and `sb-token`).
//!
//! One rule: the file's bytes are the secret, except one trailing newline
//! (`\n` or `\r\n`, as editors and `echo` write it). Everything else counts,
//! spaces and tabs at either end too, so a secret that ends in a space is
//! the same secret on both sides. An empty secret is refused: a file given
//! on purpose and holding nothing is a mistake, never "no secret".

use std::path::{Path, PathBuf};

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds nothing but (at most) one newline.
    #[error("secret file {0} is empty")]
    Empty(PathBuf),
}

/// Reads the secret in `path` by the one rule (see the module docs).
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = secret_from_bytes(bytes);
    if secret.is_empty() {
        return Err(SecretError::Empty(path.to_owned()));
    }
    Ok(secret)
}

/// The rule on a file's contents: one trailing newline is dropped.
pub fn secret_from_bytes(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(contents: &str) -> Result<Vec<u8>, SecretError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, contents).expect("write");
        read_secret(&path)
    }

    #[test]
    fn one_trailing_newline_is_not_part_of_the_secret() {
        assert_eq!(read("s3cret\n").expect("ok"), b"s3cret");
        assert_eq!(read("s3cret\r\n").expect("ok"), b"s3cret");
        assert_eq!(read("s3cret").expect("ok"), b"s3cret");
        // Only one: a second newline is the secret's own.
        assert_eq!(read("s3cret\n\n").expect("ok"), b"s3cret\n");
    }

    #[test]
    fn a_trailing_space_is_part_of_the_secret() {
        assert_eq!(read("s3cret \n").expect("ok"), b"s3cret ");
        assert_eq!(read(" s3cret\t").expect("ok"), b" s3cret\t");
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert!(matches!(read(""), Err(SecretError::Empty(_))));
        assert!(matches!(read("\n"), Err(SecretError::Empty(_))));
        assert!(matches!(read("\r\n"), Err(SecretError::Empty(_))));
        // A space is a (weak) secret, not nothing.
        assert_eq!(read(" \n").expect("ok"), b" ");
    }

    #[test]
    fn a_missing_file_says_which() {
        let err = read_secret(Path::new("/nonexistent/secret")).expect_err("missing");
        assert!(matches!(err, SecretError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/secret"), "{err}");
    }
}
