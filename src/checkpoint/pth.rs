//! PyTorch zip checkpoints. The pickle is interpreted by candle's reader (after newer
//! protocols are rewritten into the opcodes it takes, see `pickle`), which treats the
//! opcode stream as data and never imports or calls anything; the archive and the tensor
//! data are read here, so that files candle's own loader refuses still load: archives
//! whose zip64 end records mislead the zip crate's offset detection, and tensors saved as
//! strided views.

use anyhow::{bail, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

type Archive = zip::ZipArchive<BufReader<File>>;

/// Most elements a saved view may have per element of its storage.
const MAX_VIEW_REPEAT: usize = 64;

/// The tensors of one state dict in a PyTorch checkpoint, read on demand.
pub struct PthTensors {
    path: PathBuf,
    archive: Archive,
    dict: StateDict,
}

/// The tensors of one state dict found in the pickles, before any is read.
#[derive(Default)]
struct StateDict {
    infos: HashMap<String, TensorInfo>,
    unreadable: BTreeMap<String, String>,
    /// The tensors stored big-endian (saved on such a machine).
    big_endian: HashSet<String>,
}

impl StateDict {
    /// The tensors among the `entries` of each pickle, whose storages lie under `dir` in
    /// the byte order given.
    fn collect<'a>(
        found: impl IntoIterator<Item = (&'a PathBuf, bool, &'a [(Object, Object)])>,
    ) -> Self {
        let mut dict = Self::default();
        for (dir, big_endian, entries) in found {
            for (name, value) in entries.iter().cloned() {
                let label = match &name {
                    Object::Unicode(s) => s.clone(),
                    other => key_label(other),
                };
                if let Some(dtype) = unread_dtype(&value) {
                    dict.unreadable.insert(
                        label,
                        format!("stored as {dtype}, a dtype infdit does not read"),
                    );
                    continue;
                }
                match value.into_tensor_info(name, dir) {
                    Ok(Some(info)) => {
                        if big_endian {
                            dict.big_endian.insert(info.name.clone());
                        }
                        dict.infos.insert(info.name.clone(), info);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        dict.unreadable.insert(label, plain_pickle_error(e));
                    }
                }
            }
        }
        dict
    }

    fn is_empty(&self) -> bool {
        self.infos.is_empty() && self.unreadable.is_empty()
    }

    fn into_pth(self, path: &Path, archive: Archive) -> PthTensors {
        PthTensors {
            path: path.to_path_buf(),
            archive,
            dict: self,
        }
    }
}

impl PthTensors {
    /// Opens the state dict of `path`: the dict under the first of `keys` that holds
    /// tensors in the pickle's top-level dict, else the top level itself, else the dict
    /// nested anywhere (under other keys, in lists) that holds the most tensors; `None`
    /// when none holds any. Each pickle in the archive is parsed once, whatever the keys.
    pub fn open(path: &Path, keys: &[&str]) -> Result<Option<Self>> {
        let mut archive = open_archive(path)?;
        let names = archive
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<Result<Vec<String>, _>>()?;
        let roots = names
            .iter()
            .filter(|n| n.ends_with("data.pkl"))
            .map(|name| {
                let dir = PathBuf::from(name.trim_end_matches(".pkl"));
                let big_endian = is_big_endian(&mut archive, &dir)?;
                Ok((dir, big_endian, read_pickle_object(&mut archive, name)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let known = keys.iter().copied().map(Some).chain([None]);
        for key in known {
            let found = roots
                .iter()
                .filter_map(|(dir, big, root)| Some((dir, *big, state_dict(root, key)?)));
            let tensors = StateDict::collect(found);
            if !tensors.is_empty() {
                return Ok(Some(tensors.into_pth(path, archive)));
            }
        }
        // The dict with the most tensors wherever it is nested, e.g. under
        // `model_state_dict` beside an optimizer's state.
        let mut nested: Vec<(String, StateDict)> = Vec::new();
        for (dir, big, root) in &roots {
            let mut found = Vec::new();
            nested_dicts(root, String::new(), 0, &mut found);
            for (at, entries) in found {
                let tensors = StateDict::collect([(dir, *big, entries)]);
                if !tensors.is_empty() {
                    nested.push((at, tensors));
                }
            }
        }
        nested.sort_by_key(|(_, t)| std::cmp::Reverse(t.infos.len() + t.unreadable.len()));
        if nested.is_empty() {
            return Ok(None);
        }
        let (at, tensors) = nested.remove(0);
        let others: Vec<&str> = nested.iter().map(|(at, _)| at.as_str()).collect();
        if others.is_empty() {
            tracing::info!("{}: reading the tensors under {at}", path.display());
        } else {
            tracing::warn!(
                "{}: reading the tensors under {at}, the most of any entry (also found under {})",
                path.display(),
                others.join(", ")
            );
        }
        Ok(Some(tensors.into_pth(path, archive)))
    }

    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.dict.infos
    }

    /// Tensors in the state dict that cannot be read (e.g. int32 or bool storage), with why.
    pub fn unreadable(&self) -> &BTreeMap<String, String> {
        &self.dict.unreadable
    }

    /// Reads tensor `name` onto the CPU in its stored dtype; `None` if there is none.
    pub fn get(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(info) = self.dict.infos.get(name) else {
            return Ok(None);
        };
        let path = &self.path;
        let big_endian = self.dict.big_endian.contains(name);
        read_tensor(&mut self.archive, info, big_endian)
            .map(Some)
            .with_context(|| {
                format!(
                    "{}: cannot read tensor {name} ({:?}, shape {:?}, strides {:?})",
                    path.display(),
                    info.dtype,
                    info.layout.dims(),
                    info.layout.stride()
                )
            })
    }
}

/// PyTorch writes its archives from the first byte. Left to detect the offset, the zip
/// crate trusts a central directory that ends right at the zip32 end record, which torch's
/// zip64 end records (76 bytes) sit in front of: when the first central entry is also 76
/// bytes long (an archive folder of 21 characters), it starts from the second entry and
/// refuses the file.
fn open_archive(path: &Path) -> Result<Archive> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let config = zip::read::Config {
        archive_offset: zip::read::ArchiveOffset::Known(0),
    };
    Ok(zip::ZipArchive::with_config(config, BufReader::new(file))?)
}

/// An error of candle's pickle reader without the objects it prints as Debug structures
/// (`expected a list, got Reduce { callable: Class { … } … }`): the kind is what a reader
/// can use.
fn plain_pickle_error(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    match text.find(['{', '(']) {
        Some(at) => text[..at].trim_end().to_string(),
        None => text,
    }
}

/// A state dict key as Python would write it.
fn key_label(key: &Object) -> String {
    match key {
        Object::Unicode(s) => format!("{s:?}"),
        Object::Int(i) => i.to_string(),
        Object::Long(i) => i.to_string(),
        other => format!("a {}", plain_pickle_error(format!("{other:?}"))),
    }
}

/// The object a `data.pkl` in the archive unpickles to.
fn read_pickle_object(archive: &mut Archive, name: &str) -> Result<Object> {
    let mut bytes = Vec::new();
    archive.by_name(name)?.read_to_end(&mut bytes)?;
    let bytes = super::pickle::to_protocol_2(&bytes)?;
    super::pickle::check_expansion(&bytes)?;
    let plain = |e: candle_core::Error| anyhow::anyhow!("{}", plain_pickle_error(e));
    let mut stack = Stack::empty();
    stack.read_loop(&mut &bytes[..]).map_err(plain)?;
    stack.finalize().map_err(plain)
}

/// The dict of name → value holding the tensors: the root object (a TorchScript module's
/// attributes, as candle does) or, with `key`, the entry under it.
fn state_dict<'a>(root: &'a Object, key: Option<&str>) -> Option<&'a [(Object, Object)]> {
    let root = match root {
        Object::Build { callable, args } => match &**callable {
            Object::Reduce { callable, .. }
                if matches!(&**callable, Object::Class { module_name, class_name }
                    if module_name == "__torch__" && class_name == "Module") =>
            {
                &**args
            }
            _ => return None,
        },
        other => other,
    };
    let Object::Dict(entries) = root else {
        return None;
    };
    let Some(key) = key else {
        return Some(entries);
    };
    match entries
        .iter()
        .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
    {
        Some((_, Object::Dict(inner))) => Some(inner),
        _ => None,
    }
}

/// Whether the storages of the pickle `dir` (`archive/data`) are big-endian, as its
/// archive's `byteorder` record says (PyTorch writes it since 1.13; older files are
/// little-endian).
fn is_big_endian(archive: &mut Archive, dir: &Path) -> Result<bool> {
    let record = dir.with_file_name("byteorder");
    let Ok(mut entry) = archive.by_name(&record.to_string_lossy()) else {
        return Ok(false);
    };
    let mut order = String::new();
    (&mut entry).take(16).read_to_string(&mut order)?;
    match order.trim() {
        "little" => Ok(false),
        "big" => Ok(true),
        other => bail!("its byte order record says {other:?}, neither little nor big"),
    }
}

/// The dtype of a tensor saved with `_rebuild_tensor_v3`, which PyTorch uses for the
/// dtypes that have no storage class of their own (float8, uint16, …) and candle's
/// reader passes over as if the entry were no tensor.
fn unread_dtype(value: &Object) -> Option<String> {
    let Object::Reduce { callable, args } = value else {
        return None;
    };
    let (Object::Class { class_name, .. }, Object::Tuple(args)) = (&**callable, &**args) else {
        return None;
    };
    match class_name.as_str() {
        "_rebuild_tensor_v3" => match args.get(6) {
            Some(Object::Class { class_name, .. }) => Some(class_name.clone()),
            _ => Some("an unknown dtype".into()),
        },
        "_rebuild_parameter" => unread_dtype(args.first()?),
        _ => None,
    }
}

/// The dicts nested in `obj` (in dicts, lists and tuples; at most four levels down), with
/// where each is (`['ema']`, `[0]`), for a state dict under a key no framework list names.
fn nested_dicts<'a>(
    obj: &'a Object,
    at: String,
    depth: usize,
    out: &mut Vec<(String, &'a [(Object, Object)])>,
) {
    const MAX_DEPTH: usize = 4;
    if depth > MAX_DEPTH {
        return;
    }
    match obj {
        Object::Dict(entries) => {
            if depth > 0 {
                out.push((at.clone(), entries));
            }
            for (key, value) in entries {
                nested_dicts(value, format!("{at}[{}]", key_label(key)), depth + 1, out);
            }
        }
        Object::List(items) | Object::Tuple(items) => {
            for (i, item) in items.iter().enumerate() {
                nested_dicts(item, format!("{at}[{i}]"), depth + 1, out);
            }
        }
        _ => {}
    }
}

/// Reads one tensor. A view saved as is (a slice, a transpose, an expand) keeps its whole
/// storage and strides in the file: the storage is read and the view's elements gathered.
/// A big-endian storage is swapped into the little-endian order candle reads.
fn read_tensor(archive: &mut Archive, info: &TensorInfo, big_endian: bool) -> Result<Tensor> {
    let layout = &info.layout;
    let elem = info.dtype.size_in_bytes();
    // candle's TensorInfo keeps the storage offset in bytes.
    let offset = layout.start_offset() / elem;
    let contiguous = layout.is_contiguous();
    let needed = if contiguous {
        offset.checked_add(layout.shape().elem_count())
    } else {
        Some(info.storage_size)
    };
    // The sizes come from the pickle: they are checked against the stored entry before
    // anything is allocated for them.
    let mut entry = archive
        .by_name(&info.path)
        .with_context(|| format!("its storage {} is not in the archive", info.path))?;
    let stored = entry.size();
    let needed_bytes = needed
        .and_then(|n| n.checked_mul(elem))
        .filter(|&b| b as u64 <= stored);
    let Some(needed_bytes) = needed_bytes else {
        bail!("its storage holds {stored} bytes, fewer than the tensor needs");
    };
    let mut bytes = Vec::with_capacity(needed_bytes);
    (&mut entry)
        .take(needed_bytes as u64)
        .read_to_end(&mut bytes)?;
    drop(entry);
    if bytes.len() < needed_bytes {
        bail!(
            "its storage ends after {} of {needed_bytes} bytes",
            bytes.len()
        );
    }
    if big_endian {
        for value in bytes.chunks_exact_mut(elem) {
            value.reverse();
        }
    }
    let cpu = &Device::Cpu;
    if contiguous {
        return Ok(Tensor::from_raw_buffer(
            &bytes[offset * elem..],
            info.dtype,
            layout.dims(),
            cpu,
        )?);
    }
    // A view repeats storage elements only through zero strides (an expand); far more
    // elements than its storage holds are no weight, and would only cost memory here.
    let count = layout.shape().elem_count();
    if count > info.storage_size.saturating_mul(MAX_VIEW_REPEAT) {
        bail!(
            "a view of {count} elements over a storage of {} is not a weight",
            info.storage_size
        );
    }
    // Checked before any index is computed: forged strides could overflow it.
    if count > 0 {
        match last_element(layout.dims(), layout.stride(), offset) {
            Some(last) if last < info.storage_size => {}
            Some(last) => bail!(
                "the view reaches element {last} of a storage of {}",
                info.storage_size
            ),
            None => bail!("the view's strides overflow"),
        }
    }
    let storage = Tensor::from_raw_buffer(&bytes, info.dtype, &[info.storage_size], cpu)?;
    let index = strided_indices(layout.dims(), layout.stride(), offset);
    let n = index.len();
    let index = Tensor::from_vec(index, n, cpu)?;
    Ok(storage.index_select(&index, 0)?.reshape(layout.dims())?)
}

/// The storage position of a non-empty view's last element, or `None` if it overflows.
fn last_element(dims: &[usize], strides: &[usize], offset: usize) -> Option<usize> {
    dims.iter()
        .zip(strides)
        .try_fold(offset, |acc, (&dim, &stride)| {
            dim.checked_sub(1)?.checked_mul(stride)?.checked_add(acc)
        })
}

/// Storage positions of a view's elements in row-major order.
fn strided_indices(dims: &[usize], strides: &[usize], offset: usize) -> Vec<i64> {
    let mut index = vec![offset as i64];
    for (&dim, &stride) in dims.iter().zip(strides) {
        index = index
            .iter()
            .flat_map(|&base| (0..dim).map(move |i| base + (i * stride) as i64))
            .collect();
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_indices_follow_the_view() {
        // base = arange(24).reshape(4, 6); base[:, 1:3] has strides (6, 1) from offset 1.
        assert_eq!(
            strided_indices(&[4, 2], &[6, 1], 1),
            vec![1, 2, 7, 8, 13, 14, 19, 20]
        );
        assert_eq!(strided_indices(&[2, 3], &[0, 1], 0), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(strided_indices(&[], &[], 5), vec![5]);
    }

    #[test]
    fn last_element_is_checked_arithmetic() {
        assert_eq!(last_element(&[4, 2], &[6, 1], 1), Some(20));
        assert_eq!(last_element(&[], &[], 5), Some(5));
        assert_eq!(
            last_element(&[2, 3], &[usize::MAX / 2, 1], 0),
            Some(usize::MAX / 2 + 2)
        );
        assert_eq!(last_element(&[3, 1], &[usize::MAX / 2 + 1, 1], 0), None);
        assert_eq!(last_element(&[2], &[1], usize::MAX), None);
    }
}
