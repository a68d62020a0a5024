//! IPTC-IIM metadata: the caption, keywords, byline, credit and location fields that news
//! and stock-photo workflows write, kept on the upscale as read. JPEG files hold the IIM
//! record among Photoshop's image resources (APP13), with a digest Photoshop compares with
//! the XMP; TIFF files hold it in a tag of its own. Nothing in it describes the pixels'
//! size or storage, so it is carried unchanged.

/// The IIM record and, where the source had one, the digest stored beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iptc {
    /// Datasets, each `0x1C`, record, dataset, length and data.
    pub record: Vec<u8>,
    /// The MD5 digest of the record Photoshop wrote (resource 0x0425), kept with it since
    /// the record is kept unchanged: it tells readers that the record and the XMP agree.
    pub digest: Option<Vec<u8>>,
}

/// The signature that opens a JPEG APP13 segment of Photoshop image resources.
pub const JPEG_SIGNATURE: &[u8] = b"Photoshop 3.0\0";

const IIM_RESOURCE: u16 = 0x0404;
const DIGEST_RESOURCE: u16 = 0x0425;

impl Iptc {
    /// From Photoshop image resources (a JPEG's APP13 segments past their signature,
    /// joined; a TIFF's Photoshop tag). `None` without a well-formed IIM record.
    pub fn from_resources(resources: &[u8]) -> Option<Self> {
        let (mut record, mut digest) = (None, None);
        for (id, data) in Resources(resources) {
            match id {
                IIM_RESOURCE if record.is_none() => record = Some(data),
                DIGEST_RESOURCE if digest.is_none() && data.len() == 16 => digest = Some(data),
                _ => {}
            }
        }
        let mut iptc = Self::from_record(record?)?;
        iptc.digest = digest.map(<[u8]>::to_vec);
        Some(iptc)
    }

    /// From a bare IIM record (a TIFF's IPTC tag), which may be padded with zeros.
    /// `None` where it is empty or not a sequence of datasets.
    pub fn from_record(record: &[u8]) -> Option<Self> {
        let end = record.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let record = if is_iim(record) {
            record
        } else {
            &record[..end]
        };
        (!record.is_empty() && is_iim(record)).then(|| Self {
            record: record.to_vec(),
            digest: None,
        })
    }

    /// As Photoshop image resources, for a JPEG APP13 segment.
    pub fn to_resources(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut add = |id: u16, data: &[u8]| {
            out.extend(b"8BIM");
            out.extend(id.to_be_bytes());
            out.extend([0, 0]); // an empty name, padded to an even length
            out.extend((data.len() as u32).to_be_bytes());
            out.extend(data);
            if data.len() % 2 == 1 {
                out.push(0);
            }
        };
        add(IIM_RESOURCE, &self.record);
        if let Some(digest) = &self.digest {
            add(DIGEST_RESOURCE, digest);
        }
        out
    }
}

/// Whether `record` is a sequence of IIM datasets, each whole.
fn is_iim(mut record: &[u8]) -> bool {
    while !record.is_empty() {
        let [0x1C, _record, _dataset, l0, l1, rest @ ..] = record else {
            return false;
        };
        let length = u16::from_be_bytes([*l0, *l1]);
        // The extended form: the low bits count the bytes of the length that follows.
        let (length, rest) = if length & 0x8000 == 0 {
            (usize::from(length), rest)
        } else {
            let n = usize::from(length & 0x7FFF);
            if n == 0 || n > 4 || rest.len() < n {
                return false;
            }
            let length = rest[..n]
                .iter()
                .fold(0usize, |v, &b| (v << 8) | usize::from(b));
            (length, &rest[n..])
        };
        let Some(next) = rest.get(length..) else {
            return false;
        };
        record = next;
    }
    true
}

/// The (id, data) of each Photoshop image resource: `8BIM`, id, a Pascal name padded to
/// an even length, a size and the data, padded to an even length. Ends where the data
/// stops being resources.
struct Resources<'a>(&'a [u8]);

impl<'a> Iterator for Resources<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let [b'8', b'B', b'I', b'M', i0, i1, name_len, rest @ ..] = self.0 else {
            return None;
        };
        // The name's length byte and the name make an even count.
        let name = usize::from(*name_len) | 1;
        let rest = rest.get(name..)?;
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let size = usize::try_from(size).ok()?;
        let data = rest.get(4..4usize.checked_add(size)?)?;
        self.0 = rest.get(4 + size + size % 2..).unwrap_or_default();
        Some((u16::from_be_bytes([*i0, *i1]), data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caption (2:120) and two keywords (2:25).
    fn record() -> Vec<u8> {
        let mut r = Vec::new();
        for (dataset, text) in [
            (120u8, &b"Harbour at dawn"[..]),
            (25, b"harbour"),
            (25, b"boats"),
        ] {
            r.extend([0x1C, 2, dataset]);
            r.extend((text.len() as u16).to_be_bytes());
            r.extend(text);
        }
        r
    }

    #[test]
    fn resources_round_trip_with_their_digest() {
        let iptc = Iptc {
            record: record(),
            digest: Some(vec![7; 16]),
        };
        assert_eq!(
            Iptc::from_resources(&iptc.to_resources()),
            Some(iptc.clone())
        );
        // Other resources around it (a named one, odd sizes) are passed over.
        let mut resources = b"8BIM\x03\xed\x03abc\0\0\0\x03xyz\0".to_vec();
        resources.extend(iptc.to_resources());
        assert_eq!(Iptc::from_resources(&resources), Some(iptc));
    }

    #[test]
    fn records_are_checked_and_unpadded() {
        let mut padded = record();
        padded.extend([0, 0, 0]);
        assert_eq!(Iptc::from_record(&padded).unwrap().record, record());
        let mut extended = vec![0x1C, 2, 120, 0x80, 2, 0, 3];
        extended.extend(b"abc");
        assert!(Iptc::from_record(&extended).is_some());
        for broken in [
            &b"not iim"[..],
            &[0x1C, 2, 120, 0, 9, b'x'],
            &[0, 0, 0],
            &[],
        ] {
            assert_eq!(Iptc::from_record(broken), None, "{broken:?}");
        }
        let cut = Iptc {
            record: record(),
            digest: None,
        }
        .to_resources();
        for end in 0..cut.len() - 1 {
            assert_eq!(Iptc::from_resources(&cut[..end]), None, "cut at {end}");
        }
    }
}
