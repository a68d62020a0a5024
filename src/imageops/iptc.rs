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
    /// joined). `None` without a well-formed IIM record.
    pub fn from_resources(resources: &[u8]) -> Option<Self> {
        Self::from_tiff(None, Some(resources))
    }

    /// From a TIFF's IPTC tag (a bare record) and Photoshop tag (image resources): the
    /// record of the first, else the one among the second, with the digest of the second.
    pub fn from_tiff(record: Option<&[u8]>, resources: Option<&[u8]>) -> Option<Self> {
        let resource = |id| {
            let mut found = Resources(resources?).filter(|&(i, _)| i == id);
            found.next().map(|(_, data)| data)
        };
        let record = record
            .filter(|r| is_record(r))
            .or_else(|| resource(IIM_RESOURCE).filter(|r| is_record(r)))?;
        Some(Self {
            record: record.to_vec(),
            digest: resource(DIGEST_RESOURCE)
                .filter(|d| d.len() == 16)
                .map(<[u8]>::to_vec),
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

/// Whether `record` holds IIM datasets, each whole, and maybe zeros after them, which
/// writers pad with (kept as they are: the digest is of the padded record).
fn is_record(record: &[u8]) -> bool {
    let end = record.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    end > 0 && (is_iim(record) || is_iim(&record[..end]))
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

/// The (id, data) of each of Photoshop's own image resources: a signature, id, a Pascal
/// name padded to an even length, a size and the data, padded to an even length. Those
/// of other signatures (`MeSa`, `PHUT`, …) are passed over; ends where the data stops
/// being resources.
struct Resources<'a>(&'a [u8]);

impl<'a> Iterator for Resources<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (signature, id, data) = self.next_any()?;
            if signature == b"8BIM" {
                return Some((id, data));
            }
        }
    }
}

impl<'a> Resources<'a> {
    /// The next resource, whatever its signature.
    fn next_any(&mut self) -> Option<(&'a [u8], u16, &'a [u8])> {
        let [s0, s1, s2, s3, i0, i1, name_len, rest @ ..] = self.0 else {
            return None;
        };
        if ![s0, s1, s2, s3].iter().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        // The name's length byte and the name make an even count.
        let name = usize::from(*name_len) | 1;
        let rest = rest.get(name..)?;
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let size = usize::try_from(size).ok()?;
        let data = rest.get(4..4usize.checked_add(size)?)?;
        let (whole, rest) = (self.0, rest.get(4 + size + size % 2..).unwrap_or_default());
        self.0 = rest;
        Some((&whole[..4], u16::from_be_bytes([*i0, *i1]), data))
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
        // Other resources around it (a named one, odd sizes, another signature's) are
        // passed over.
        let mut resources = b"8BIM\x03\xed\x03abc\0\0\0\x03xyz\0".to_vec();
        resources.extend(b"MeSa\x04\x04\0\0\0\0\0\x02\x1c\x02");
        resources.extend(iptc.to_resources());
        assert_eq!(Iptc::from_resources(&resources), Some(iptc));
    }

    #[test]
    fn records_are_checked_and_kept_as_read() {
        let from_tag = |record: &[u8]| Iptc::from_tiff(Some(record), None);
        // Zero padding is kept: a digest beside the record is of the padded bytes.
        let padded = [&record()[..], &[0, 0, 0]].concat();
        assert_eq!(from_tag(&padded).unwrap().record, padded);
        let extended = [&[0x1C, 2, 120, 0x80, 2, 0, 3][..], b"abc"].concat();
        assert!(from_tag(&extended).is_some());
        for broken in [
            &b"not iim"[..],
            &[0x1C, 2, 120, 0, 9, b'x'],
            &[0, 0, 0],
            &[],
        ] {
            assert_eq!(from_tag(broken), None, "{broken:?}");
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

    /// A TIFF's record comes from its IPTC tag, else from its Photoshop tag's resources,
    /// and its digest from those resources either way; a broken record in the IPTC tag
    /// gives way to the resources'.
    #[test]
    fn tiff_records_and_digests_come_from_either_tag() {
        let with_digest = Iptc {
            record: record(),
            digest: Some(vec![3; 16]),
        };
        let resources = with_digest.to_resources();
        let other = [&[0x1C, 2, 25, 0, 1][..], b"x"].concat();
        let from_both = Iptc::from_tiff(Some(&other), Some(&resources)).unwrap();
        assert_eq!(
            (from_both.record, from_both.digest),
            (other, with_digest.digest.clone())
        );
        assert_eq!(
            Iptc::from_tiff(Some(b"junk"), Some(&resources)),
            Some(with_digest.clone())
        );
        assert_eq!(Iptc::from_tiff(None, Some(&resources)), Some(with_digest));
        assert_eq!(Iptc::from_tiff(None, None), None);
    }
}
