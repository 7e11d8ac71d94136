//! Envelope encryption and decryption between files, all or nothing.
//!
//! The output is written to a temporary file in the output's own directory (so the final
//! rename stays on one file system and is atomic), synced to disk, and renamed over the
//! output only once every chunk has been written or authenticated. On any error, and on
//! a panic, the temporary file is removed: the output path is left as it was, never
//! holding a partial or unauthenticated result. A signal that ends the process (the
//! envelope commands handle SIGINT, SIGTERM and SIGHUP) removes it too, through
//! [`discard_unfinished_outputs`]. Only a process killed outright (`kill -9`, power
//! loss) can leave a temporary file named `.OUT.XXXXXXXXXXXXXXXX.tmp` beside the
//! output; it never appears under the output's name.
//!
//! On Unix the output is created with mode 0600 ([`crate::private_fs`]): a decrypted
//! file is as sensitive as the key that protected it, and an encrypted one carries a
//! key reference.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::EnvelopeError;
use super::format::{Header, KEY_LEN, MAGIC, read_header};
use super::frames::{EncryptMaterials, decrypt_message, encrypt_message};
use super::message::{MessageHeader, read_message_header};
use super::stream::{Stats, decrypt, encrypt};
use crate::private_fs::{self, AtomicFile};

/// I/O buffer for messages: frames can be as small as one byte, and a frame is written
/// as several small fields, so small writes are gathered; large ones pass straight
/// through.
const IO_BUFFER: usize = 256 * 1024;

/// What an encrypted file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeFile {
    /// A file in snapferry's own envelope format (version 1), written before snapferry
    /// wrote AWS Encryption SDK messages.
    Legacy(Header),
    /// An AWS Encryption SDK message, version 2.
    Message(MessageHeader),
}

/// Reads the header of the file at `path`, whichever of the two formats it is in.
///
/// # Errors
/// As [`read_header`] and [`read_message_header`], with I/O failures reported as
/// [`EnvelopeError::File`].
pub fn read_envelope_file(path: impl AsRef<Path>, max_data_keys: u16) -> Result<EnvelopeFile, EnvelopeError> {
    let path = path.as_ref();
    let mut input = BufReader::new(open_input(path)?);
    let mut first = [0u8; 1];
    input.read_exact(&mut first).map_err(|error| match error.kind() {
        io::ErrorKind::UnexpectedEof => EnvelopeError::HeaderTruncated,
        _ => EnvelopeError::File { action: "read", path: path.to_path_buf(), error },
    })?;
    let mut rest = io::Read::chain(&first[..], input);
    if first[0] == MAGIC[0] {
        read_header(&mut rest).map(EnvelopeFile::Legacy)
    } else {
        read_message_header(&mut rest, max_data_keys).map(EnvelopeFile::Message)
    }
    .map_err(|e| with_paths(e, path, path))
}

/// Encrypts the file at `in_path` into a new AWS Encryption SDK message at `out_path`,
/// replacing any file there only once the whole message is on disk.
///
/// # Errors
/// As [`encrypt_message`], with I/O failures reported as [`EnvelopeError::File`]. On
/// error nothing is left at `out_path` that was not there before.
pub fn encrypt_message_file(
    in_path: impl AsRef<Path>,
    out_path: impl AsRef<Path>,
    materials: &EncryptMaterials<'_>,
) -> Result<(MessageHeader, Stats), EnvelopeError> {
    let in_path = in_path.as_ref();
    let input = open_input(in_path)?;
    let mut temp = TempOutput::create(out_path.as_ref())?;
    let temp_path = temp.path.clone();
    let done = {
        let output = BufWriter::with_capacity(IO_BUFFER, temp.file());
        encrypt_message(BufReader::with_capacity(IO_BUFFER, input), output, materials)
    }
    .map_err(|e| with_paths(e, in_path, &temp_path))?;
    temp.commit(out_path.as_ref())?;
    Ok(done)
}

/// Decrypts the message in the file at `in_path` into `out_path`, replacing any file
/// there only once every frame and, for a signed message, the signature verified.
///
/// `header` is the one read earlier with [`read_envelope_file`] to get the data key
/// from KMS; the file's header is read again and must be identical.
///
/// # Errors
/// As [`read_message_header`] and [`decrypt_message`], plus
/// [`EnvelopeError::HeaderMismatch`], with I/O failures reported as
/// [`EnvelopeError::File`]. On error nothing is left at `out_path` that was not there
/// before.
pub fn decrypt_message_file(
    in_path: impl AsRef<Path>,
    out_path: impl AsRef<Path>,
    header: &MessageHeader,
    data_key: &[u8; KEY_LEN],
) -> Result<Stats, EnvelopeError> {
    let in_path = in_path.as_ref();
    let mut input = BufReader::with_capacity(IO_BUFFER, open_input(in_path)?);
    let max = u16::try_from(header.data_keys().len()).unwrap_or(u16::MAX);
    let found = read_message_header(&mut input, max).map_err(|e| with_paths(e, in_path, in_path))?;
    if &found != header {
        return Err(EnvelopeError::HeaderMismatch { path: in_path.to_path_buf() });
    }
    let mut temp = TempOutput::create(out_path.as_ref())?;
    let temp_path = temp.path.clone();
    let stats = {
        let output = BufWriter::with_capacity(IO_BUFFER, temp.file());
        decrypt_message(input, output, header, data_key)
    }
    .map_err(|e| with_paths(e, in_path, &temp_path))?;
    temp.commit(out_path.as_ref())?;
    Ok(stats)
}

/// Reads and checks the envelope header at the start of the file at `path`.
///
/// # Errors
/// As [`read_header`], with I/O failures reported as [`EnvelopeError::File`].
pub fn read_header_file(path: impl AsRef<Path>) -> Result<Header, EnvelopeError> {
    let path = path.as_ref();
    let mut file = open_input(path)?;
    read_header(&mut file).map_err(|e| with_paths(e, path, path))
}

/// Encrypts the file at `in_path` into a new envelope file at `out_path`, replacing any
/// file there only once the whole envelope is on disk.
///
/// # Errors
/// As [`encrypt`], with I/O failures reported as [`EnvelopeError::File`] naming the file.
/// On error nothing is left at `out_path` that was not there before.
pub fn encrypt_file(
    in_path: impl AsRef<Path>,
    out_path: impl AsRef<Path>,
    key: &[u8; KEY_LEN],
    header: &Header,
) -> Result<Stats, EnvelopeError> {
    let in_path = in_path.as_ref();
    let input = open_input(in_path)?;
    let mut temp = TempOutput::create(out_path.as_ref())?;
    let stats = encrypt(input, temp.file(), key, header).map_err(|e| with_paths(e, in_path, &temp.path))?;
    temp.commit(out_path.as_ref())?;
    Ok(stats)
}

/// Decrypts the envelope file at `in_path` into `out_path`, replacing any file there
/// only once every chunk has been authenticated.
///
/// `header` is the one read earlier with [`read_header_file`] to get the data key from
/// KMS; the file's header is read again and must be identical, so the key was obtained
/// for exactly this file.
///
/// # Errors
/// As [`read_header`] and [`decrypt`], plus [`EnvelopeError::HeaderMismatch`], with I/O
/// failures reported as [`EnvelopeError::File`] naming the file. On error nothing is
/// left at `out_path` that was not there before.
pub fn decrypt_file(
    in_path: impl AsRef<Path>,
    out_path: impl AsRef<Path>,
    key: &[u8; KEY_LEN],
    header: &Header,
) -> Result<Stats, EnvelopeError> {
    let in_path = in_path.as_ref();
    let mut input = open_input(in_path)?;
    let found = read_header(&mut input).map_err(|e| with_paths(e, in_path, in_path))?;
    if &found != header {
        return Err(EnvelopeError::HeaderMismatch { path: in_path.to_path_buf() });
    }
    let mut temp = TempOutput::create(out_path.as_ref())?;
    let stats = decrypt(input, temp.file(), key, header).map_err(|e| with_paths(e, in_path, &temp.path))?;
    temp.commit(out_path.as_ref())?;
    Ok(stats)
}

fn open_input(path: &Path) -> Result<File, EnvelopeError> {
    File::open(path).map_err(|error| EnvelopeError::File { action: "open", path: path.to_path_buf(), error })
}

/// Gives stream I/O errors the path they happened on.
fn with_paths(e: EnvelopeError, read_path: &Path, write_path: &Path) -> EnvelopeError {
    match e {
        EnvelopeError::Read(error) => EnvelopeError::File { action: "read", path: read_path.to_path_buf(), error },
        EnvelopeError::Write(error) => EnvelopeError::File { action: "write", path: write_path.to_path_buf(), error },
        other => other,
    }
}

/// The temporary files of this process's unfinished outputs, for
/// [`discard_unfinished_outputs`]. A temporary file is created and registered, renamed
/// into place and unregistered, or removed and unregistered, under this lock: an
/// interrupted process that holds it sees every one, and none is made or completed
/// after it looked.
static UNFINISHED: Mutex<Unfinished> = Mutex::new(Unfinished { paths: Vec::new(), closed: false });

struct Unfinished {
    paths: Vec<PathBuf>,
    /// Set by [`discard_unfinished_outputs`]: no output is created or completed after.
    closed: bool,
}

fn unfinished() -> MutexGuard<'static, Unfinished> {
    // A panic elsewhere while holding the lock leaves a list that is still right.
    UNFINISHED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the temporary file of every output this process has not finished writing
/// (the decrypted or encrypted file of a command that a signal interrupts), and stops
/// any from being created or completed from then on, so that no plaintext of an
/// unverified message is left whatever the threads still writing do before the process
/// exits. Returns how many were removed.
pub fn discard_unfinished_outputs() -> usize {
    let mut list = unfinished();
    list.closed = true;
    std::mem::take(&mut list.paths).iter().filter(|path| fs::remove_file(path).is_ok()).count()
}

fn interrupted(path: &Path) -> EnvelopeError {
    EnvelopeError::File {
        action: "write",
        path: path.to_path_buf(),
        error: io::Error::new(io::ErrorKind::Interrupted, "the command was interrupted"),
    }
}

/// A temporary owner-only file beside the output, registered in [`UNFINISHED`], that
/// is removed when dropped unless [`commit`](Self::commit) renamed it into place.
struct TempOutput {
    file: Option<AtomicFile>,
    path: PathBuf,
}

impl TempOutput {
    fn create(out_path: &Path) -> Result<Self, EnvelopeError> {
        let mut list = unfinished();
        if list.closed {
            return Err(interrupted(out_path));
        }
        let file = AtomicFile::create(out_path).map_err(|error| EnvelopeError::File {
            action: "create a temporary file in",
            path: private_fs::parent_dir(out_path).to_path_buf(),
            error,
        })?;
        let path = file.temp_path().to_path_buf();
        list.paths.push(path.clone());
        Ok(Self { file: Some(file), path })
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until commit").file()
    }

    /// Syncs the data, renames the file to `out_path`, and syncs the directory so the
    /// rename itself survives a crash.
    fn commit(mut self, out_path: &Path) -> Result<(), EnvelopeError> {
        let mut file = self.file.take().expect("open until commit");
        if let Err(error) = file.sync() {
            self.file = Some(file);
            return Err(EnvelopeError::File { action: "sync", path: self.path.clone(), error });
        }
        {
            let mut list = unfinished();
            list.paths.retain(|p| p != &self.path);
            if list.closed {
                drop(file);
                return Err(interrupted(out_path));
            }
            file.persist().map_err(|error| EnvelopeError::File {
                action: "rename the temporary file to",
                path: out_path.to_path_buf(),
                error,
            })?;
        }
        let dir = private_fs::parent_dir(out_path);
        private_fs::sync_dir(dir).map_err(|error| EnvelopeError::File {
            action: "sync the directory",
            path: dir.to_path_buf(),
            error,
        })
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let mut list = unfinished();
            list.paths.retain(|p| p != &self.path);
            // Removes the temporary file, best effort: the error being reported matters
            // more than a leftover file.
            drop(file);
        }
    }
}
