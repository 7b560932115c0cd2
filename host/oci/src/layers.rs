//! Directory-artifact layers: raw (the file itself) or a one-file tar compressed with zstd, as ModelPack names them
//! (`…v1.raw`, `…v1.tar`, `…v1.tar+zstd`). Packing is reproducible (zero times and owners), so the same directory
//! pushes the same digests; unpacking accepts exactly one regular file at the layer's title and nothing else.

use crate::{Error, Result, io};
use std::io::Read;
use std::path::{Path, PathBuf};

/// How `push_dir` writes each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// One zstd-compressed tar per file (KAITO's model-as-OCI-artifact layers); smaller downloads, unpacked on pull.
    #[default]
    Zstd,
    /// The file as the layer: `oras pull` writes it back as is.
    None,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "none" | "raw" => Ok(Compression::None),
            other => Err(format!("{other:?}: the layer compression is zstd or none")),
        }
    }
}

/// zstd level for packed layers: level 3 (zstd's default) compresses at hundreds of MB/s per core.
const ZSTD_LEVEL: i32 = 3;

/// The media type of a ModelPack raw media type (`….raw`) packed as `compression`.
pub(crate) fn packed_media_type(raw: &str, compression: Compression) -> String {
    match compression {
        Compression::None => raw.to_string(),
        Compression::Zstd => format!("{}.tar+zstd", raw.trim_end_matches(".raw")),
    }
}

/// How a pulled layer becomes its file, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unpack {
    /// The blob is the file.
    Raw,
    /// A tar holding the file.
    Tar,
    /// A zstd-compressed tar holding the file.
    TarZstd,
}

impl Unpack {
    /// What `media_type` asks for. Only ModelPack media types say tar: `oras push FILE` labels a plain file
    /// `application/vnd.oci.image.layer.v1.tar`, so other types are the file itself. Gzip layers are refused with
    /// the reason (we neither write nor read them).
    pub(crate) fn of(media_type: &str) -> std::result::Result<Unpack, String> {
        let modelpack = media_type.starts_with(MODELPACK_PREFIX);
        if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Err(format!("{media_type}: gzip layers are not read; push the artifact with zstd or raw layers"))
        } else if modelpack && media_type.ends_with(".tar+zstd") {
            Ok(Unpack::TarZstd)
        } else if modelpack && media_type.ends_with(".tar") {
            Ok(Unpack::Tar)
        } else {
            Ok(Unpack::Raw)
        }
    }
}

/// What every ModelPack layer media type starts with.
const MODELPACK_PREFIX: &str = "application/vnd.cncf.model.";

/// `data` (the file at relative path `title`) as one zstd-compressed tar, byte-for-byte the same for the same input.
pub(crate) fn pack(title: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let encoder = zstd::Encoder::new(Vec::with_capacity(data.len() / 2), ZSTD_LEVEL)?;
    let mut builder = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, title, data)?;
    builder.into_inner()?.finish()
}

/// `path` with `.partial` appended: a temporary name beside it that no other file of the tree has.
pub(crate) fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Writes the one file the tar in `blob` holds to `dest` (through a temporary name), refusing an archive whose
/// entry is not exactly the regular file `rel`: a layer cannot write outside its title.
pub(crate) fn unpack(blob: &Path, how: Unpack, rel: &Path, dest: &Path, reference: &str) -> Result<u64> {
    let file = std::fs::File::open(blob).map_err(io(blob))?;
    let reader: Box<dyn Read> = match how {
        Unpack::TarZstd => Box::new(zstd::Decoder::new(file).map_err(io(blob))?),
        Unpack::Tar => Box::new(std::io::BufReader::new(file)),
        Unpack::Raw => unreachable!("raw layers are linked, not unpacked"),
    };
    let refuse = |why: String| Error::NotDirectory { reference: reference.to_string(), why };
    let mut archive = tar::Archive::new(reader);
    let mut written = None;
    for entry in archive.entries().map_err(io(blob))? {
        let mut entry = entry.map_err(io(blob))?;
        let path = entry.path().map_err(io(blob))?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() && rel.starts_with(&path) {
            continue;
        }
        if !kind.is_file() || path != rel || written.is_some() {
            return Err(refuse(format!(
                "the layer for {} holds {} ({kind:?}); it must hold exactly that one regular file",
                rel.display(),
                path.display()
            )));
        }
        let tmp = partial(dest);
        let mut out = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let n = std::io::copy(&mut entry, &mut out).map_err(io(&tmp))?;
        out.sync_data().map_err(io(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io(dest))?;
        written = Some(n);
    }
    written.ok_or_else(|| refuse(format!("the layer for {} holds no file", rel.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_reproducible_and_round_trips() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let a = pack("sub/model.safetensors", &data).unwrap();
        assert_eq!(a, pack("sub/model.safetensors", &data).unwrap(), "same input, same bytes (and digest)");
        assert!(a.len() < data.len() / 4, "repetitive data compresses");
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, &a).unwrap();
        let dest = dir.path().join("model.safetensors");
        let n = unpack(&blob, Unpack::TarZstd, Path::new("sub/model.safetensors"), &dest, "r").unwrap();
        assert_eq!((n, std::fs::read(&dest).unwrap()), (data.len() as u64, data));
    }

    #[test]
    fn an_archive_with_another_path_or_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        assert!(pack("../../etc/cron.d/x", b"evil").is_err(), "the tar crate refuses to write `..` itself");
        std::fs::write(&blob, pack("other.json", b"{}").unwrap()).unwrap();
        let dest = dir.path().join("config.json");
        let e = unpack(&blob, Unpack::TarZstd, Path::new("config.json"), &dest, "r").unwrap_err();
        assert!(matches!(e, Error::NotDirectory { .. }) && e.to_string().contains("other.json"), "{e}");
        assert!(!dest.exists() && !partial(&dest).exists());

        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "config.json", "/etc/passwd").unwrap();
        std::fs::write(&blob, builder.into_inner().unwrap()).unwrap();
        let e = unpack(&blob, Unpack::Tar, Path::new("config.json"), &dest, "r").unwrap_err();
        assert!(e.to_string().contains("Symlink"), "{e}");
        assert!(!dest.exists());
    }

    #[test]
    fn media_types() {
        let raw = crate::MODEL_WEIGHT_MEDIA_TYPE;
        assert_eq!(packed_media_type(raw, Compression::Zstd), "application/vnd.cncf.model.weight.v1.tar+zstd");
        assert_eq!(packed_media_type(raw, Compression::None), raw);
        assert_eq!(Unpack::of("application/vnd.cncf.model.weight.v1.tar+zstd"), Ok(Unpack::TarZstd));
        assert_eq!(Unpack::of("application/vnd.cncf.model.weight.v1.tar"), Ok(Unpack::Tar));
        assert_eq!(Unpack::of(raw), Ok(Unpack::Raw));
        assert_eq!(Unpack::of("text/plain"), Ok(Unpack::Raw));
        // What `oras push FILE` labels a plain file.
        assert_eq!(Unpack::of("application/vnd.oci.image.layer.v1.tar"), Ok(Unpack::Raw));
        assert!(Unpack::of("application/vnd.cncf.model.weight.v1.tar+gzip").unwrap_err().contains("gzip"));
    }
}
